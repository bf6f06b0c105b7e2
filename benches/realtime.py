"""Real-time DETRs on this CPU, side by side in one run: RT-DETRv2-R18, D-FINE-N/S, RF-DETR-N, DINO-R50, an edge DINO-R18.

RT-DETRv2-R18 (the released rtdetrv2_r18vd config, 640x640, batch 1, postprocess in graph):
  - `torch`        PyTorch eager (RepVGG fused, as the official `deploy()`)
  - `official-ort` the official export's graph (grid_sample decomposition: split per level,
                   GridSample, Concat, weighted ReduceSum, i.e. our `grid_sample` MSDA form) on ONNX Runtime
  - `official-ov`  the same graph on OpenVINO FP32
                   (and, as the official code, the encoder box head over every token before the top-k)
  - `fused-fp32`, `fused-fp16`, `fused-int8`: ours, OpenVINO with the fused C++ MSDA op and the box
                   head on the selected tokens only
                   (FP16 = compressed weights; INT8 = NNCF with the DETR-aware keep-float recipe,
                   calibrated on BCCD images)
D-FINE-N and D-FINE-S (the released dfine_hgnetv2_{n,s}_coco architectures; their official export is
the same grid_sample decomposition after `deploy()`) get the same seven engines.
RF-DETR-N (the released RFDETRNano architecture) at its native 384x384 with ImageNet normalisation gets
the same seven engines; its `official-*` rows are the grid_sample decomposition rfdetr's own ONNX export
traces (MSDA core per level with GridSample, the resized position table a constant at a fixed size).
DINO-R50 4-scale (900 queries) and an edge DINO (ResNet-18, 300 queries, 3+3 layers), fused OpenVINO FP32.

Engines run round-robin (one frame each per round) so load changes hit all alike; p50/p95 in
ms, parameters, and the ratios the issue targets: fused FP32 vs the official export on the
same backend, INT8 vs FP32 with the INT8 top-K agreement (`converters.verify.topk_agreement`:
detections matched by label and IoU >= 0.9 against fused FP32 on BCCD images). Models are randomly
initialised unless `--rtdetr-checkpoint` is given (agreement on a random model is only indicative).

With `--profile MODELS` (default rfdetr-n) every OpenVINO engine of those models is also profiled per node
(OpenVINO PERF_COUNT) and the node times are grouped by region (ViT q/k/v/out projections, attention core,
MLP, windowing reshapes, projector, two-stage selection, decoder, ...): a table per model and
`profile_ms_by_region` in the JSON.

    python benches/realtime.py --quick     # 5 rounds, 8 calibration images, no DINO-R50 eager
    python benches/realtime.py             # 20 rounds, 32 calibration images

Prints a table, then one JSON object with every figure as the LAST line.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import replace
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from converters.api import deployable, make_manifest  # noqa: E402
from converters.calibration import calibration_batches, image_paths  # noqa: E402
from converters.onnx.export import VALID_INPUT_NAME, DeployModel, export_onnx  # noqa: E402
from converters.openvino.convert import convert_openvino, fused_extension_available  # noqa: E402
from converters.verify import topk_agreement  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ov_profile import format_profiles, profile, profile_json  # noqa: E402

BCCD = REPO.parent / "shared" / "data" / "bccd" / "JPEGImages"
# models with the full engine set (torch, official-style export on ORT / OpenVINO, ours fused FP32/FP16/INT8)
REALTIME_MODELS = ("rtdetrv2-r18", "dfine-n", "dfine-s", "rfdetr-n")
DETECTION_OUTPUTS = ("labels", "boxes", "scores")  # the exported graphs' outputs (postprocess in graph), DeployModel's order
RFDETR_SIZE = 384  # RF-DETR-N's native resolution
ALL_MODELS = REALTIME_MODELS + ("dino-r50-4scale", "dino-r18-edge")
log = logging.getLogger("realtime")


def rtdetr_r18(checkpoint: str = "") -> torch.nn.Module:
    if checkpoint:
        from converters.api import resolve_model

        return resolve_model(checkpoint)[0]
    from edgedet.checkpoints.rtdetr_official import official_to_fields, resolve_config
    from edgedet.models import create_model

    torch.manual_seed(0)
    fields = official_to_fields(resolve_config("rtdetrv2_r18vd"))
    return create_model("rtdetr", **fields).eval()


def dino(backbone: str, edge: bool) -> torch.nn.Module:
    from edgedet.models import create_model

    torch.manual_seed(0)
    extra = dict(num_queries=300, enc_layers=3, dec_layers=3) if edge else {}
    return create_model("dino", backbone=backbone, **extra).eval()


def dfine(size: str) -> torch.nn.Module:
    """D-FINE-N / -S: the released dfine_hgnetv2_{n,s}_coco architecture, randomly initialised."""
    from edgedet.checkpoints.dfine_official import official_model_config
    from edgedet.models import create_model_from_config

    torch.manual_seed(0)
    return create_model_from_config(official_model_config(f"dfine_hgnetv2_{size}_coco")).eval()


def rfdetr_nano() -> torch.nn.Module:
    """RF-DETR-N: the released rfdetr_nano architecture (91 COCO columns), randomly initialised."""
    from edgedet.models import create_model_from_config
    from edgedet.models.rfdetr import rfdetr_config

    torch.manual_seed(0)
    return create_model_from_config(rfdetr_config("rfdetr_nano")).eval()


def params_m(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


class Engine:
    def __init__(self, name: str, model: str, run: Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]], params: float,
                 xml: Optional[Path] = None, extension: bool = False):
        self.name, self.model, self.run, self.params = name, model, run, params
        self.xml, self.extension = xml, extension  # an OpenVINO engine's IR, for the per-node profile
        self.times: List[float] = []
        self.frames: List[Dict[str, np.ndarray]] = []  # own feeds (input name -> array) when the model runs at another size


def ov_runner(xml: Path, threads: int, extension: bool) -> Callable:
    import openvino as ov

    core = ov.Core()
    if extension:
        from converters.openvino.convert import fused_extension_path

        core.add_extension(str(fused_extension_path()))
    compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                                    "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    names = {n for i in compiled.inputs for n in i.get_names()}
    # outputs by name: graph forms may order them differently
    return lambda feeds: {o.get_any_name(): np.asarray(v) for o, v in request.infer({k: v for k, v in feeds.items() if k in names}).items()}


def ort_runner(path: Path, threads: int) -> Callable:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names, outputs = {i.name for i in sess.get_inputs()}, [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(outputs, sess.run(None, {k: v for k, v in feeds.items() if k in names})))


def torch_runner(model: torch.nn.Module, top_k: int) -> Callable:
    deploy = DeployModel(model, postprocess=True, top_k=top_k).eval()

    def run(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        valid = feeds.get("valid_hw") if deploy.takes_valid_region else None
        with torch.no_grad():
            outputs = deploy(torch.from_numpy(feeds["images"]), None if valid is None else torch.from_numpy(valid))
        return dict(zip(DETECTION_OUTPUTS, (o.numpy() for o in outputs)))

    return run


def timed(what: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    log.info("%s: %.1f s", what, time.perf_counter() - t0)
    return out


def official_graph(model: torch.nn.Module) -> torch.nn.Module:
    """The model as the official code runs it: RT-DETRv2 computes the encoder box head for every
    token before selecting the top-k (ours runs it on the selected tokens; same numbers); RF-DETR's
    DINOv2 runs its query, key and value products apart (ours as one [3C, C] product)."""
    decoder = getattr(model, "decoder", None)
    separate_qkv = [m for m in model.modules() if hasattr(m, "fuse_qkv")]
    if not hasattr(decoder, "boxes_for_selected_only") and not separate_qkv:
        return model  # D-FINE's official code already selects first
    official = copy.deepcopy(model)
    if hasattr(decoder, "boxes_for_selected_only"):
        official.decoder.boxes_for_selected_only = False
    for module in official.modules():
        if hasattr(module, "fuse_qkv"):
            module.fuse_qkv = False
    return official


def realtime_engines(args, tmp: Path, name: str, model: torch.nn.Module, size: int = 0) -> List[Engine]:
    """torch, the official-style export (grid_sample form) on ORT and OpenVINO, ours fused FP32/FP16/INT8."""
    hw = (size or args.imgsz, size or args.imgsz)
    official = official_graph(model)
    manifest = make_manifest(official, "onnxruntime", "fp32", "grid_sample", hw, 1, True, args.top_k, None, {})
    p = params_m(model)
    engines = [Engine("torch", name, torch_runner(official, args.top_k), p)]
    grid = timed(f"{name} export grid_sample", lambda: export_onnx(official, tmp / f"{name}_grid.onnx", hw, manifest,
                                                                    "grid_sample", top_k=args.top_k, simplify=False))
    engines.append(Engine("official-ort", name, ort_runner(grid, args.threads), p))
    ov_grid = timed(f"{name} openvino grid_sample", lambda: convert_openvino(grid, tmp / f"{name}_grid.xml", "fp32", manifest))
    engines.append(Engine("official-ov", name, ov_runner(ov_grid, args.threads, False), p, ov_grid))
    if not fused_extension_available():
        log.warning("OpenVINO MSDA extension not built (scripts/build_ov_extension.sh): fused rows skipped")
        return engines
    fused_manifest = make_manifest(model, "openvino", "fp32", "fused", hw, 1, True, args.top_k, None, {})
    if DeployModel(model).takes_valid_region:  # what export_onnx adds: calibrate on the deployed feeds
        fused_manifest = replace(fused_manifest, valid_input=VALID_INPUT_NAME)
    fused = timed(f"{name} export fused", lambda: export_onnx(model, tmp / f"{name}_fused.onnx", hw, fused_manifest,
                                                               "fused", top_k=args.top_k, simplify=False))
    calib = calibration_batches(image_paths(BCCD)[: args.calib_images], fused_manifest, args.calib_images)
    for precision in ("fp32", "fp16", "int8"):
        xml = timed(f"{name} openvino fused {precision}", lambda: convert_openvino(
            fused, tmp / f"{name}_fused_{precision}.xml", precision, fused_manifest, calib if precision == "int8" else None))
        engines.append(Engine(f"fused-{precision}", name, ov_runner(xml, args.threads, True), p, xml, True))
    return engines


def build_engines(args, tmp: Path, frames: List[np.ndarray]) -> List[Engine]:
    hw = (args.imgsz, args.imgsz)
    engines: List[Engine] = []
    wanted = set(args.models.split(","))
    if "rtdetrv2-r18" in wanted:
        engines += realtime_engines(args, tmp, "rtdetrv2-r18", deployable(rtdetr_r18(args.rtdetr_checkpoint)))
    for size in ("n", "s"):
        if f"dfine-{size}" in wanted:
            engines += realtime_engines(args, tmp, f"dfine-{size}", deployable(dfine(size)))
    if "rfdetr-n" in wanted:
        rf = realtime_engines(args, tmp, "rfdetr-n", deployable(rfdetr_nano()), RFDETR_SIZE)
        from runtime.manifest import Manifest, PreprocessSpec

        spec = PreprocessSpec(size=(RFDETR_SIZE, RFDETR_SIZE))  # ImageNet mean / std, the family's preprocessing
        own = calibration_batches(image_paths(BCCD)[-4:], Manifest(preprocess=spec, valid_input=VALID_INPUT_NAME), 4)
        for e in rf:
            e.frames = own
        engines += rf
    if not fused_extension_available():
        return engines
    for name, model in (("dino-r50-4scale", dino("resnet50", False)), ("dino-r18-edge", dino("resnet18", True))):
        if name not in wanted:
            continue
        man = make_manifest(model, "openvino", "fp32", "fused", hw, 1, True, args.top_k, None, {})
        onnx_path = timed(f"export {name}", lambda: export_onnx(model, tmp / f"{name}.onnx", hw, man, "fused",
                                                                top_k=args.top_k, simplify=False))
        xml = timed(f"openvino {name}", lambda: convert_openvino(onnx_path, tmp / f"{name}.xml", "fp32", man))
        engines.append(Engine("fused-fp32", name, ov_runner(xml, args.threads, True), params_m(model)))
        if not args.quick:
            engines.append(Engine("torch", name, torch_runner(model, args.top_k), params_m(model)))
    return engines


def agreement(engines: List[Engine], frames: List[np.ndarray], model: str = "rtdetrv2-r18") -> Dict[str, float]:
    """INT8 / FP16 vs fused FP32 on `frames`: mean share of top-K detections matched (label + IoU >= 0.9)."""
    by = {e.name: e for e in engines if e.model == model}
    out = {}
    if "fused-fp32" not in by:
        return out

    def topk(run: Callable) -> List[Dict[str, np.ndarray]]:
        return [{k: v[0] for k, v in run(f).items() if k in DETECTION_OUTPUTS} for f in frames]

    frames = by["fused-fp32"].frames or frames
    ref = topk(by["fused-fp32"].run)
    for name in ("fused-fp16", "fused-int8", "official-ort", "official-ov", "torch"):
        if name in by:
            out[name] = topk_agreement(ref, topk(by[name].run))
    return out


def node_profiles(engines: List[Engine], frames: List[np.ndarray], args) -> Dict[str, Dict[str, Dict]]:
    """Per-node OpenVINO profiles of the `--profile` models' OpenVINO engines, on their own first frame."""
    from converters.openvino.convert import fused_extension_path

    wanted = {m for m in args.profile.split(",") if m}
    out: Dict[str, Dict[str, Dict]] = {}
    for e in engines:
        if e.model in wanted and e.xml is not None:
            ext = str(fused_extension_path()) if e.extension else ""
            out.setdefault(e.model, {})[e.name] = profile(e.xml, (e.frames or frames)[0], args.threads, ext)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 rounds, 8 calibration images, no eager DINO rows")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--rounds", type=int, default=0, help="timed rounds (default 20, --quick 5)")
    ap.add_argument("--threads", type=int, default=2, help="threads of every engine (torch too)")
    ap.add_argument("--top-k", type=int, default=300)
    ap.add_argument("--calib-images", type=int, default=0, help="INT8 calibration images (default 32, --quick 8)")
    ap.add_argument("--rtdetr-checkpoint", default="", help="an edgedet rtdetr checkpoint (default: random init)")
    ap.add_argument("--profile", default="rfdetr-n", help="comma-separated models whose OpenVINO engines get a per-node "
                    "profile (PERF_COUNT) grouped by region ('' = none)")
    ap.add_argument("--models", default=",".join(ALL_MODELS), help=f"comma-separated subset of {', '.join(ALL_MODELS)}")
    args = ap.parse_args()
    unknown = set(args.models.split(",")) - set(ALL_MODELS)
    if unknown:
        ap.error(f"unknown --models {', '.join(sorted(unknown))}; choose from {', '.join(ALL_MODELS)}")
    args.rounds = args.rounds or (5 if args.quick else 20)
    args.calib_images = args.calib_images or (8 if args.quick else 32)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    from converters.calibration import calibration_batches as batches

    paths = image_paths(BCCD)
    with tempfile.TemporaryDirectory() as tmp:
        from edgedet.models.rtdetr import INPUT_MEAN, INPUT_STD
        from runtime.manifest import PreprocessSpec

        spec = PreprocessSpec(size=(args.imgsz, args.imgsz), mean=INPUT_MEAN, std=INPUT_STD)
        frames = batches(paths[-4:], spec, 4)  # feed dicts {"images": x} (these graphs take no valid region)
        engines = build_engines(args, Path(tmp), frames)
        for e in engines:  # warm-up
            e.run((e.frames or frames)[0])
        for r in range(args.rounds):  # round-robin: every engine once per round
            for e in engines:
                own = e.frames or frames
                x = own[r % len(own)]
                t0 = time.perf_counter()
                e.run(x)
                e.times.append((time.perf_counter() - t0) * 1e3)
        agree = {m: agreement(engines, frames, m) for m in REALTIME_MODELS if any(e.model == m for e in engines)}
        profiles = node_profiles(engines, frames, args)
    rows = []
    for e in engines:
        t = np.asarray(e.times)
        rows.append({"model": e.model, "engine": e.name, "params_m": round(e.params, 2),
                     "p50_ms": round(float(np.percentile(t, 50)), 1), "p95_ms": round(float(np.percentile(t, 95)), 1)})
    p50 = {(r["model"], r["engine"]): r["p50_ms"] for r in rows}
    ratios: Dict[str, Dict[str, float]] = {}
    for m in REALTIME_MODELS:
        if (m, "fused-fp32") not in p50:
            continue
        ratios[m] = {
            "fused_fp32_vs_official_ov": round(p50[(m, "official-ov")] / p50[(m, "fused-fp32")], 2),
            "fused_fp32_vs_official_ort": round(p50[(m, "official-ort")] / p50[(m, "fused-fp32")], 2),
            "int8_vs_fused_fp32": round(p50[(m, "fused-fp32")] / p50[(m, "fused-int8")], 2),
            "fp16_vs_fused_fp32": round(p50[(m, "fused-fp32")] / p50[(m, "fused-fp16")], 2),
            "fused_fp32_vs_torch": round(p50[(m, "torch")] / p50[(m, "fused-fp32")], 2),
        }
    print(f"\n{'model':<18}{'engine':<14}{'params M':>9}{'p50 ms':>9}{'p95 ms':>9}")
    for r in rows:
        print(f"{r['model']:<18}{r['engine']:<14}{r['params_m']:>9.2f}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}")
    for m, r in ratios.items():
        print(f"{m} ratios (x faster):", ", ".join(f"{k} {v}" for k, v in r.items()))
    for m, a in agree.items():
        print(f"{m} top-K agreement with fused FP32:", ", ".join(f"{k} {v:.3f}" for k, v in a.items()))
    for m, prof in profiles.items():
        print(f"\n{m} per-node OpenVINO profile (PERF_COUNT, ms per run summed over nodes, {args.threads} threads):")
        print("\n".join(format_profiles(prof)))
    print(json.dumps({"bench": "realtime", "profile_ms_by_region": {m: profile_json(p) for m, p in profiles.items()}, "imgsz": args.imgsz, "rfdetr_imgsz": RFDETR_SIZE, "threads": args.threads, "rounds": args.rounds,
                      "top_k": args.top_k, "trained": bool(args.rtdetr_checkpoint), "rows": rows, "ratios": ratios,
                      "agreement_vs_fused_fp32": agree}))


if __name__ == "__main__":
    main()
