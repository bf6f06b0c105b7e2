"""End-to-end export benchmark: Deformable DETR and DINO (ResNet-50), or a trained checkpoint of any family, on CPU, batch 1.

For each family and MSDA form (grid_sample, gather, and fused when the OpenVINO extension is
built) it exports one float ONNX, then derives ONNX Runtime FP32 / INT8 (QDQ) and OpenVINO
FP32 / FP16-compressed / INT8 (NNCF) artifacts from it, and runs `converters.verify` on each:
latency and sequential throughput through `runtime.Detector`, parity with PyTorch (top-K
match, max score difference), and with `--checkpoint` + `--data` the mAP of every engine
next to PyTorch's. Without a checkpoint the models are randomly initialised (the latency
figures hold, parity is still meaningful, mAP is not measured). A checkpoint is exported as
`converters.export` does (`deploy()` first: RT-DETR's RepVGG branches fused).

After every engine is built, they run again side by side: round-robin over the evaluated
images (one call each per round, so load changes hit all alike) for `interleaved_p50_ms`, and
each FP16 / INT8 engine's top-100 agreement with the FP32 engine of the same backend and form
(`converters.verify.topk_agreement`) on the same images; the summary gives FP32 / INT8 p50.

    python benches/export_e2e.py --quick                       # 320x320, 3 repeats, DINO 300 queries
    python benches/export_e2e.py                               # 640x640, 20 repeats
    python benches/export_e2e.py --checkpoint runs/bccd_dino/best.pth --data ../shared/data/bccd --data-format voc \
        --data-split test --imgsz 384 512           # mAP on the held-out split, calibration on train
    python benches/export_e2e.py --checkpoint runs/bccd_rtdetr/best.pth --data ../shared/data/bccd --data-format voc \
        --data-split test --imgsz 384 512 --forms grid_sample fused --threads 1

With --data, INT8 calibration images come from `--calib-split` (default train), never from the
evaluated split, so the INT8 mAP is measured on images the quantiser has not seen.

Prints a table, then one JSON object with every figure as the LAST line.
"""
from __future__ import annotations

import argparse
import dataclasses
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

from converters.api import check_imgsz, deployable, make_manifest, resolve_model  # noqa: E402
from converters.calibration import calibration_batches, image_paths  # noqa: E402
from converters.onnx.export import DeployModel, export_onnx  # noqa: E402
from converters.onnx.msda_forms import form_available  # noqa: E402
from converters.onnxruntime.quantize import quantize_onnx_int8  # noqa: E402
from converters.openvino.convert import convert_openvino, fused_extension_available  # noqa: E402
from converters.verify import measure_latency, topk_agreement, verify  # noqa: E402
from runtime.manifest import write_sidecar  # noqa: E402

BCCD = REPO.parent / "shared" / "data" / "bccd"
log = logging.getLogger("export_e2e")


def build_model(family: str, checkpoint: Optional[str], quick: bool):
    if checkpoint:
        model, exp = resolve_model(checkpoint)
        return deployable(model), exp
    from edgedet import create_model

    torch.manual_seed(0)
    overrides: Dict[str, Any] = {"backbone": "resnet50"}
    if quick and family == "dino":
        overrides["num_queries"] = 300
    return create_model(family, **overrides).eval(), {}


def load_split(args, split: str, ann: str = "") -> Any:
    """The `split` of the --data dataset with the deterministic (evaluation) transforms."""
    from edgedet.config import DataConfig
    from edgedet.data import build_dataset

    cfg = DataConfig(format=args.data_format, root=args.data, val_ann=ann, val_split=split)
    dataset = build_dataset(cfg, "val")
    dataset.name = f"{args.data_format}:{split}"  # build_dataset names it after its "val" role
    return dataset


def load_eval_dataset(args) -> Any:
    if not (args.checkpoint and args.data):
        return None
    return load_split(args, args.data_split, args.data_ann)


def calibration_source(args) -> Any:
    """--calib folder; else the --calib-split of --data; else the BCCD images (random-weight runs)."""
    if args.calib:
        return args.calib
    if args.data:
        if args.calib_split == args.data_split and not args.data_ann:
            # calibrating on the evaluated images would flatter the INT8 mAP
            raise SystemExit(f"--calib-split {args.calib_split} is the evaluated split; pick another (e.g. train)")
        return load_split(args, args.calib_split)
    return str(BCCD / "JPEGImages") if BCCD.is_dir() else None


def parse_imgsz(values: Optional[List[int]], quick: bool) -> tuple:
    """--imgsz S or H W -> (H, W); default 640 (quick 320) square."""
    if not values:
        side = 320 if quick else 640
        return (side, side)
    if len(values) > 2 or min(values) <= 0:
        raise SystemExit(f"--imgsz takes one size or H W (positive), got {values}")
    return (values[0], values[-1])


def engines(forms: List[str], quick: bool) -> List[Dict[str, str]]:
    """(backend, precision, msda) combinations measured; ORT cannot run the fused node.

    Full: every precision of both backends with every form. Quick: ONNX Runtime on the first
    form, OpenVINO fp32/fp16/int8 on the last non-fused form, and OpenVINO fp32 fused.
    """
    plain = [f for f in forms if f != "fused"]
    ort = lambda f, ps: [{"backend": "onnxruntime", "precision": p, "msda": f} for p in ps]  # noqa: E731
    ov = lambda f, ps: [{"backend": "openvino", "precision": p, "msda": f} for p in ps]  # noqa: E731
    if quick:
        out = (ort(plain[0], ("fp32", "int8")) + ov(plain[-1], ("fp32", "fp16", "int8"))) if plain else []
        return out + (ov("fused", ("fp32",)) if "fused" in forms else [])
    out = []
    for form in forms:
        out += (ort(form, ("fp32", "int8")) if form != "fused" else []) + ov(form, ("fp32", "fp16", "int8"))
    return out


def build_artifact(model, exp, eng, imgsz, work: Path, calib, float_onnx: Dict[str, Path], quick: bool,
                   calib_images: int) -> Path:
    form, prec = eng["msda"], eng["precision"]
    manifest = make_manifest(model, eng["backend"], prec, form, imgsz, 1, True, 100, None, exp)
    if form not in float_onnx:
        float_manifest = dataclasses.replace(manifest, backend="onnxruntime", precision="fp32", custom_ops={})
        # onnxslim roughly doubles the export time; the quick mode skips it
        float_onnx[form] = export_onnx(model, work / f"{form}-fp32.onnx", imgsz, float_manifest, form, simplify=not quick)
    src = float_onnx[form]
    if eng["backend"] == "onnxruntime":
        if prec == "fp32":
            return src
        out = quantize_onnx_int8(src, work / f"{form}-int8.onnx", calibration_batches(calib, manifest.preprocess, calib_images))
        write_sidecar(manifest, out)
        return out
    batches = calibration_batches(calib, manifest.preprocess, calib_images) if prec == "int8" else None
    return convert_openvino(src, work / f"ov-{form}-{prec}.xml", prec, manifest, batches)


def run_family(family: str, args, forms: List[str], work: Path, calib, images, dataset) -> List[Dict[str, Any]]:
    model, exp = build_model(family, args.checkpoint, args.quick)
    imgsz = args.imgsz
    check_imgsz(model, imgsz)  # RT-DETR / D-FINE: sides divisible by 32, said before any export
    float_onnx: Dict[str, Path] = {}
    artifacts: Dict[int, Path] = {}  # row index -> artifact, for the interleaved pass
    x = torch.from_numpy(calibration_batches(images, make_manifest(model, "", "fp32", "", imgsz, 1, True, 100, None, exp)
                                             .preprocess, 1)[0])
    with torch.no_grad():
        eager = measure_latency(lambda: DeployModel(model, True, 100)(x), args.repeats)
    rows = [{"family": family, "backend": "pytorch", "precision": "fp32", "msda": "grid_sample",
             "latency_ms": round(eager["mean_ms"], 2), "p50_ms": round(eager["p50_ms"], 2), "fps": round(eager["fps"], 2)}]
    log.info("%s", json.dumps(rows[0]))
    for eng in engines(forms, args.quick):
        t0 = time.perf_counter()
        try:
            path = build_artifact(model, exp, eng, imgsz, work / family, calib, float_onnx, args.quick, args.calib_images)
        except Exception as e:  # one failing engine must not hide the others' figures
            rows.append({"family": family, **eng, "error": str(e).splitlines()[0][:200]})
            continue
        build_s = time.perf_counter() - t0
        rep = verify(path, model, images, eval_dataset=dataset, max_images=args.parity_images,
                     eval_images=args.eval_images, repeats=args.repeats, output_json=work / f"{path.stem}.verify.json",
                     time_pytorch=False, backend_options=args.backend_options)
        row = {"family": family, **eng, "build_s": round(build_s, 1),
               "latency_ms": round(rep["latency_artifact"]["mean_ms"], 2), "p50_ms": round(rep["latency_artifact"]["p50_ms"], 2),
               "fps": round(rep["latency_artifact"]["fps"], 2),
               "topk_match": round(rep["topk_match"], 3), "score_max_abs_diff": float(f"{rep['score_max_abs_diff']:.3g}")}
        if "map_artifact" in rep:
            row.update({"map": round(rep["map_artifact"], 4), "map_pytorch": round(rep["map_pytorch"], 4),
                        "map_delta": round(rep["map_delta"], 4), "map50": round(rep["map50_artifact"], 4),
                        "map50_delta": round(rep["map50_artifact"] - rep["map50_pytorch"], 4)})
        artifacts[len(rows)] = path
        rows.append(row)
        log.info("%s", json.dumps(row))
    interleaved(rows, artifacts, eval_frames(args, dataset, images), args)
    return rows


def eval_frames(args, dataset, images) -> List[Any]:
    """BGR frames of the interleaved pass: the evaluated images (at most --eval-images), else the parity images."""
    from converters.calibration import evenly_spaced, read_bgr

    paths = [r.path for r in evenly_spaced(dataset.records, args.eval_images)] if dataset is not None else images
    return [read_bgr(Path(p)) for p in paths]


def interleaved(rows: List[Dict[str, Any]], artifacts: Dict[int, Path], frames: List[Any], args) -> None:
    """Round-robin latency of every engine over `frames` (rows get interleaved_p50_ms) and, for FP16 / INT8,
    the top-100 agreement with the same backend and form's FP32 engine (rows get agree_fp32)."""
    from runtime.detector import Detector

    dets = {i: Detector(p, conf=0.0, **args.backend_options) for i, p in artifacts.items()}
    try:
        feeds = {i: [d.preprocess([f])[0] for f in frames] for i, d in dets.items()}
        outputs: Dict[int, List[Dict[str, Any]]] = {}
        for i, d in dets.items():  # warm-up, and the top-K lists compared below
            names = d.manifest.outputs.names
            runs = [d.infer({d.manifest.input_name: x}) for x in feeds[i]]
            outputs[i] = [dict(zip(("labels", "boxes", "scores"), (r[n][0] for n in names))) for r in runs]
        times: Dict[int, List[float]] = {i: [] for i in dets}
        for r in range(max(args.repeats, len(frames))):
            for i, d in dets.items():
                x = feeds[i][r % len(frames)]
                t0 = time.perf_counter()
                d.infer({d.manifest.input_name: x})
                times[i].append((time.perf_counter() - t0) * 1e3)
    finally:
        for d in dets.values():
            d.close()
    fp32 = {(rows[i]["backend"], rows[i]["msda"]): i for i in dets if rows[i]["precision"] == "fp32"}
    for i in dets:
        rows[i]["interleaved_p50_ms"] = round(float(np.median(times[i])), 2)
        ref = fp32.get((rows[i]["backend"], rows[i]["msda"]))
        if ref is not None and ref != i and rows[i]["precision"] in ("fp16", "int8"):
            rows[i]["agree_fp32"] = round(topk_agreement(outputs[ref], outputs[i]), 3)


def speedups(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """FP32 / INT8 (and FP16) interleaved p50 per family, backend and form: how much faster the low precision runs."""
    out = []
    for r in rows:
        ref = next((f for f in rows if f.get("precision") == "fp32" and "interleaved_p50_ms" in f
                    and (f["family"], f["backend"], f["msda"]) == (r["family"], r["backend"], r.get("msda"))), None)
        if ref is not None and r.get("precision") in ("fp16", "int8") and "interleaved_p50_ms" in r:
            out.append({"family": r["family"], "backend": r["backend"], "msda": r["msda"], "precision": r["precision"],
                        "speedup_vs_fp32": round(ref["interleaved_p50_ms"] / r["interleaved_p50_ms"], 2),
                        "agree_fp32": r.get("agree_fp32")})
    return out


def print_table(rows: List[Dict[str, Any]]) -> None:
    cols = ["family", "backend", "precision", "msda", "latency_ms", "p50_ms", "interleaved_p50_ms", "agree_fp32", "fps", "topk_match",
            "score_max_abs_diff", "map", "map_delta", "map50", "map50_delta", "build_s", "error"]
    cols = [c for c in cols if any(c in r for r in rows)]
    table = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="320x320, 3 repeats, 4 calibration images, fewer engines")
    p.add_argument("--families", nargs="+", default=["deformable_detr", "dino"])
    p.add_argument("--imgsz", type=int, nargs="+", default=None, metavar="S",
                   help="input size: S (square) or H W (default 640, quick 320); use the size the model was trained at")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per engine (default 20, quick 3)")
    p.add_argument("--forms", nargs="+", default=None, help="MSDA forms (default grid_sample gather [+fused])")
    p.add_argument("--checkpoint", default=None, help="trained checkpoint (then only its family is benchmarked)")
    p.add_argument("--data", default=None, help="evaluation dataset root (with --checkpoint: mAP per engine)")
    p.add_argument("--data-format", default="voc", help="voc | coco | yolo")
    p.add_argument("--data-ann", default="", help="annotation file / split file for --data")
    p.add_argument("--data-split", default="val")
    p.add_argument("--eval-images", type=int, default=200)
    p.add_argument("--calib", default=None, help="calibration image folder (default: --calib-split of --data, else BCCD images)")
    p.add_argument("--calib-split", default="train", help="split of --data whose images calibrate INT8 (not the evaluated one)")
    p.add_argument("--calib-images", type=int, default=None, help="calibration images, evenly spaced (default 32, quick 4)")
    p.add_argument("--out", default=None, help="keep artifacts here (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=0,
                   help="threads of PyTorch and of every engine run (default 0: each library's own default)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    args.backend_options = {"threads": args.threads} if args.threads > 0 else {}
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)  # this script's progress rows; libraries stay at WARNING
    args.imgsz = parse_imgsz(args.imgsz, args.quick)
    args.repeats = args.repeats or (3 if args.quick else 20)
    args.parity_images = 1 if args.quick else 8
    forms = args.forms or [f for f in ("grid_sample", "gather") if form_available(f)] + (["fused"] if fused_extension_available() else [])
    dataset = load_eval_dataset(args)
    calib = calibration_source(args)
    if calib is None:
        raise SystemExit("no calibration images: pass --calib FOLDER or --data")
    args.calib_images = args.calib_images or (4 if args.quick else 32)
    # parity images: the first few calibration images (also never the evaluated split)
    images = [str(x) for x in image_paths(calib)[: 4 if args.quick else 32]]
    calib_src = images[: args.calib_images] if args.quick else calib
    families = args.families
    if args.checkpoint:
        families = [getattr(resolve_model(args.checkpoint)[0].config, "name", "model")]
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        for fam in families:
            rows += run_family(fam, args, forms, work, calib_src, images, dataset)
    print_table(rows)
    ratios = speedups(rows)
    for r in ratios:
        print(f"{r['family']} {r['backend']} {r['msda']}: {r['precision'].upper()} {r['speedup_vs_fp32']}x faster than FP32 "
              f"(interleaved p50), top-100 agreement with FP32 {r['agree_fp32']}")
    print(json.dumps({"bench": "export_e2e", "imgsz": list(args.imgsz), "batch": 1, "repeats": args.repeats,
                      "calib_images": args.calib_images, "calib": getattr(calib, "name", str(calib)),
                      "eval_split": args.data_split if dataset is not None else None,
                      "random_init": not args.checkpoint, "torch_threads": torch.get_num_threads(),
                      "engine_threads": args.threads or None, "forms": forms, "rows": rows, "speedups": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
