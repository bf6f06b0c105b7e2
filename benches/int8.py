"""INT8 against FP32 on this CPU: where the time goes, and the DETR-aware recipe against the earlier one.

For each model, one fused-MSDA ONNX export, converted to OpenVINO FP32 and to INT8 by two NNCF recipes
(`converters.openvino.quantize`): `int8-legacy` (NNCF's transformer type with the attention products
quantized: the recipe before this bench) and `int8` (the default now: the same with the attention
products, fused by OpenVINO into ScaledDotProductAttention, kept float). Engines run round-robin (one input each per round, FP32 inference precision pinned) so load
changes hit all alike. Reported per engine: p50/p95 ms, speed-up over FP32, the share of profiled time in
float kernels and the Reorder/Convert count (OpenVINO PERF_COUNT), and the top-K agreement with FP32
(`converters.verify.topk_agreement`: same label, IoU >= 0.9) over all K detections and over FP32's
detections scoring >= --conf. Models:
  - dfine-n, rtdetrv2-r18: the released architectures at 640x640, randomly initialised (latency does not
    depend on the weights; their agreement is only indicative);
  - bccd: a checkpoint trained on BCCD (--checkpoint; `benches/train_deploy_gap.py` trains one in a few
    minutes), at its export size: the agreement that counts.
Calibration on BCCD train images, agreement on other BCCD images.

    python benches/int8.py --quick                                   # 5 rounds, dfine-n only
    python benches/int8.py --checkpoint runs/bench_gap/best.pth      # dfine-n, rtdetrv2-r18, bccd

Prints the CPU (lscpu model and ISA flags) and the load before and after, a table, and one JSON object as
the LAST line.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benches"))

from _machine import load_average as load, lscpu  # noqa: E402
sys.path.insert(0, str(REPO / "benches"))

from converters.api import deployable, make_manifest  # noqa: E402
from converters.calibration import calibration_batches, image_paths  # noqa: E402
from converters.onnx.export import export_onnx  # noqa: E402
from converters.openvino.convert import convert_openvino, fused_extension_available, fused_extension_path  # noqa: E402
from converters.openvino.quantize import DEFAULT_RECIPE, LEGACY_RECIPE, float_share  # noqa: E402
from converters.verify import MATCH_IOU, iou_matrix, topk_agreement  # noqa: E402

BCCD = REPO.parent / "shared" / "data" / "bccd" / "JPEGImages"
MODELS = ("dfine-n", "rtdetrv2-r18", "bccd")
RECIPES = {"int8-legacy": LEGACY_RECIPE, "int8": DEFAULT_RECIPE}
ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
log = logging.getLogger("int8")


def machine() -> Dict[str, Any]:
    """lscpu's model name and the ISA flags that decide INT8 / bf16 speed, the core count and the load now."""
    facts = lscpu()
    return {"cpu": facts["model"], "cpus": facts["cpus"], "isa": [f for f in ISA if f in facts["isa"]], "load": load()}


class Engine:
    def __init__(self, model: str, name: str, xml: Path, threads: int):
        import openvino as ov

        core = ov.Core()
        core.add_extension(str(fused_extension_path()))
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        self.model, self.name, self.xml = model, name, xml
        self.request = core.compile_model(str(xml), "CPU", config).create_infer_request()
        self.profiled = core.compile_model(str(xml), "CPU", dict(config, PERF_COUNT=True)).create_infer_request()
        self.times: List[float] = []

    def run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        return [np.array(v) for v in self.request.infer(feeds).values()]

    def profile(self, feeds: Dict[str, np.ndarray]) -> Dict[str, Any]:
        self.profiled.infer(feeds)
        info = [i for i in self.profiled.get_profiling_info() if i.status == i.Status.EXECUTED]
        return {"float_share": round(float_share(self.profiled), 3),
                "reorders": sum(i.node_type == "Reorder" for i in info), "converts": sum(i.node_type == "Convert" for i in info)}


def build_model(name: str, checkpoint: str) -> torch.nn.Module:
    import realtime

    if name == "dfine-n":
        return deployable(realtime.dfine("n"))
    if name == "rtdetrv2-r18":
        return deployable(realtime.rtdetr_r18())
    from converters.api import resolve_model

    return deployable(resolve_model(checkpoint)[0])


def engines_for(args, tmp: Path, name: str, model: torch.nn.Module, size: int) -> List[Engine]:
    hw = (size, size)
    manifest = make_manifest(model, "openvino", "fp32", "fused", hw, 1, True, args.top_k, None, {})
    onnx_path = export_onnx(model, tmp / f"{name}.onnx", hw, manifest, "fused", top_k=args.top_k, simplify=False)
    paths = image_paths(BCCD)
    calib = calibration_batches(paths[: args.calib_images], manifest, args.calib_images)
    engines = []
    for label in ("fp32",) + tuple(RECIPES):
        t0 = time.perf_counter()
        xml = convert_openvino(onnx_path, tmp / f"{name}-{label}.xml", "fp32" if label == "fp32" else "int8", manifest,
                               None if label == "fp32" else calib, **({} if label == "fp32" else {"recipe": RECIPES[label]}))
        log.info("%s %s: %.0f s", name, label, time.perf_counter() - t0)
        engines.append(Engine(name, label, xml, args.threads))
    engines[0].feeds = calibration_batches(paths[-args.eval_images:], manifest, args.eval_images)  # type: ignore[attr-defined]
    return engines


def agreement(ref: List[List[np.ndarray]], cand: List[List[np.ndarray]], conf: float) -> Dict[str, Optional[float]]:
    """Top-K agreement with FP32 over all K, and over FP32's detections scoring >= conf (None when it has none)."""
    as_dicts = lambda outs: [dict(zip(("labels", "boxes", "scores"), (o[0] for o in out))) for out in outs]  # noqa: E731
    r, c = as_dicts(ref), as_dicts(cand)
    confident = []
    for a, b in zip(r, c):
        keep = a["scores"] >= conf
        if keep.any():  # share of FP32's confident detections the engine reproduces (same label, IoU >= 0.9)
            iou = np.where(a["labels"][keep][:, None] == b["labels"][None, :], iou_matrix(a["boxes"][keep], b["boxes"]), 0.0)
            confident.append(float((iou.max(1) >= MATCH_IOU).mean()))
    return {"topk": round(topk_agreement(r, c), 3), "confident": round(float(np.mean(confident)), 3) if confident else None,
            "confident_images": len(confident)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 rounds, dfine-n only, 8 calibration images")
    ap.add_argument("--models", default="", help=f"comma-separated subset of {', '.join(MODELS)} (default: all; bccd needs --checkpoint)")
    ap.add_argument("--checkpoint", default="", help="an edgedet checkpoint trained on BCCD (e.g. runs/bench_gap/best.pth)")
    ap.add_argument("--imgsz", type=int, default=640, help="input size of dfine-n / rtdetrv2-r18")
    ap.add_argument("--bccd-imgsz", type=int, default=384, help="input size of the BCCD checkpoint (its training scale)")
    ap.add_argument("--rounds", type=int, default=0, help="timed rounds (default 20, --quick 5)")
    ap.add_argument("--threads", type=int, default=2, help="OpenVINO threads of every engine")
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--calib-images", type=int, default=0, help="INT8 calibration images (default 32, --quick 8)")
    ap.add_argument("--eval-images", type=int, default=8, help="BCCD images for timing and agreement")
    ap.add_argument("--conf", type=float, default=0.3, help="score of the FP32 detections in the 'confident' agreement")
    args = ap.parse_args()
    wanted = [m for m in (args.models or ("dfine-n" if args.quick else ",".join(MODELS))).split(",") if m]
    unknown = set(wanted) - set(MODELS)
    if unknown:
        ap.error(f"unknown --models {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    if "bccd" in wanted and not args.checkpoint:
        if args.models:
            ap.error("--models bccd needs --checkpoint (train one with benches/train_deploy_gap.py)")
        wanted.remove("bccd")
    if not fused_extension_available():
        sys.exit("the OpenVINO MSDA extension is not built: scripts/build_ov_extension.sh")
    args.rounds = args.rounds or (5 if args.quick else 20)
    args.calib_images = args.calib_images or (8 if args.quick else 32)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    before = machine()
    print(f"CPU: {before['cpu']} ({before['cpus']} CPUs) | ISA: {' '.join(before['isa'])} | load {before['load']}")
    with tempfile.TemporaryDirectory() as tmp:
        groups = [engines_for(args, Path(tmp), m, build_model(m, args.checkpoint), args.bccd_imgsz if m == "bccd" else args.imgsz)
                  for m in wanted]
        engines = [e for g in groups for e in g]
        feeds = {g[0].model: g[0].feeds for g in groups}
        outputs = {(e.model, e.name): [e.run(f) for f in feeds[e.model]] for e in engines}  # also the warm-up
        load_start = load()
        for r in range(args.rounds):  # round-robin
            for e in engines:
                f = feeds[e.model][r % len(feeds[e.model])]
                t0 = time.perf_counter()
                e.run(f)
                e.times.append((time.perf_counter() - t0) * 1e3)
        load_end = load()
        profiles = {(e.model, e.name): e.profile(feeds[e.model][0]) for e in engines}
    rows = []
    for e in engines:
        t = np.asarray(e.times)
        fp32 = next(x for x in engines if x.model == e.model and x.name == "fp32")
        row = {"model": e.model, "engine": e.name, "p50_ms": round(float(np.percentile(t, 50)), 1),
               "p95_ms": round(float(np.percentile(t, 95)), 1),
               "speedup_vs_fp32": round(float(np.percentile(fp32.times, 50) / np.percentile(t, 50)), 2),
               **profiles[(e.model, e.name)]}
        if e.name != "fp32":
            row.update({f"agree_{k}": v for k, v in agreement(outputs[(e.model, "fp32")], outputs[(e.model, e.name)], args.conf).items()})
        rows.append(row)
    print(f"\nround-robin, {args.rounds} rounds, {args.threads} threads, FP32 inference precision pinned; "
          f"load {load_start} at the start of timing, {load_end} at its end")
    print(f"{'model':<14}{'engine':<13}{'p50 ms':>8}{'p95 ms':>8}{'x fp32':>8}{'float %':>8}{'reord':>6}{'conv':>5}"
          f"{'agree K':>9}{'agree conf':>11}")
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{r['model']:<14}{r['engine']:<13}{r['p50_ms']:>8.1f}{r['p95_ms']:>8.1f}{r['speedup_vs_fp32']:>8.2f}"
              f"{100 * r['float_share']:>8.1f}{r['reorders']:>6}{r['converts']:>5}{fmt(r.get('agree_topk')):>9}"
              f"{fmt(r.get('agree_confident')):>11}")
    print(json.dumps({"bench": "int8", "machine": dict(before, load_timing=[load_start, load_end]), "threads": args.threads,
                      "rounds": args.rounds, "calib_images": args.calib_images, "top_k": args.top_k,
                      "trained_checkpoint": args.checkpoint or None, "rows": rows}))


if __name__ == "__main__":
    main()
