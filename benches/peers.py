"""edgedet's real-time DETRs against the YOLOs a CPU user would pick, in one process, on this CPU.

edgedet D-FINE-N / D-FINE-S / RT-DETRv2-R18 / RF-DETR-N (the released architectures, fused MSDA, OpenVINO,
postprocess in graph; RF-DETR-N at its native 384x384) against Ultralytics YOLO26n / YOLO26s (NMS-free) and
YOLO11n (its raw head: the NMS it still needs after the graph is NOT timed, in YOLO's favour), all built from
their configs with random weights (latency does not depend on the weights), batch 1, 640x640.

Each model runs as OpenVINO FP32 IR at f32, as its INT8 IR (edgedet: the DETR-aware NNCF recipe; Ultralytics: its
own `int8` export path; both calibrated on the same local BCCD images) and, where the CPU has bf16
(AVX512-BF16 / AMX), as the FP32 IR at bf16. "best" is each model's fastest of those on this machine. All engines
of one thread count are timed round-robin (one frame each per round), so load changes hit them alike: the
ratios are what compare, the absolute figures move with the machine's load, which is printed before and after.

Ultralytics (AGPL-3.0) is never a dependency of edgedet: it is installed once into its own venv outside the
repository (`_peers_venv.py`, ~/.cache/edgedet/peers-venv-KEY) and only exports IR files there.

    python benches/peers.py                 # 20 rounds at 1 and 2 threads, 32 calibration images
    python benches/peers.py --quick         # D-FINE-N (+ YOLO26n if the venv is already built), 3 rounds, 1 thread
    python benches/peers.py --peers off     # edgedet side only

Prints the CPU (lscpu model, ISA flags), the load, a table (p50/p95 ms, parameters, published COCO AP),
the edgedet/YOLO latency ratios (< 1: edgedet faster) and, as the LAST line, one JSON object.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCHES))

import _peers_venv as peers_venv  # noqa: E402
from _machine import load_average, lscpu  # noqa: E402

BCCD = REPO.parent / "shared" / "data" / "bccd" / "JPEGImages"
EDGEDET_MODELS = ("dfine-n", "dfine-s", "rtdetrv2-r18", "rfdetr-n")
YOLO_MODELS = ("yolo26n", "yolo26s", "yolo11n")
# COCO val2017 AP50:95 as published by each project (edgedet runs the same architectures and weights)
PUBLISHED_AP = {"dfine-n": 42.8, "dfine-s": 48.5, "rtdetrv2-r18": 48.1, "rfdetr-n": 48.4,
                "yolo26n": 40.9, "yolo26s": 48.6, "yolo11n": 39.5}
# (edgedet, YOLO) pairs compared: similar size or similar AP
PAIRS = (("dfine-n", "yolo26n"), ("dfine-n", "yolo11n"), ("dfine-s", "yolo26s"), ("rtdetrv2-r18", "yolo26s"),
         ("rfdetr-n", "yolo26s"))
# the targets, best precision vs best precision: edgedet p50 / YOLO p50 at most
TARGETS = {("dfine-n", "yolo26n"): 0.7, ("dfine-s", "yolo26s"): 0.8}
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
log = logging.getLogger("peers")


class Engine:
    """One compiled model at one precision and thread count; precision: f32 / bf16 (the inference precision
    of the FP32 IR) or int8 (the INT8 IR)."""

    def __init__(self, model: str, precision: str, threads: int, run: Callable[[dict], object], feeds: List[dict]):
        self.model, self.precision, self.threads, self.run, self.feeds = model, precision, threads, run, feeds
        self.times: List[float] = []


def cpu_info() -> Dict[str, object]:
    """lscpu's model name and the ISA flags that decide precision."""
    facts = lscpu()
    return {"model": facts["model"], "cores": os.cpu_count(), "isa": [f for f in ISA_FLAGS if f in facts["isa"]]}


def has_bf16(capabilities: Sequence[str]) -> bool:
    """Whether OpenVINO's CPU plug-in runs bf16 here (AVX512-BF16 or AMX)."""
    return "BF16" in capabilities


def ov_runner(core, xml: str, threads: int, precision: str, bf16: bool = False) -> Callable[[dict], object]:
    """An INT8 IR's float parts run in bf16 where the CPU has it (OpenVINO's own default there)."""
    hint = "bf16" if precision == "bf16" or (precision == "int8" and bf16) else "f32"
    compiled = core.compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                                               "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    return lambda feeds: request.infer(feeds)


def edgedet_irs(name: str, tmp: Path, calib: List[Path], imgsz: int, top_k: int) -> Tuple[Dict[str, str], float, List[dict]]:
    """edgedet's fused OpenVINO FP32 and INT8 IRs of `name` -> ({"fp32", "int8"}, params M, timing feeds)."""
    import realtime
    from converters.api import deployable, make_manifest
    from converters.calibration import calibration_batches
    from converters.onnx.export import export_onnx
    from converters.openvino.convert import convert_openvino

    build = {"dfine-n": lambda: realtime.dfine("n"), "dfine-s": lambda: realtime.dfine("s"),
             "rtdetrv2-r18": realtime.rtdetr_r18, "rfdetr-n": realtime.rfdetr_nano}[name]
    size = realtime.RFDETR_SIZE if name == "rfdetr-n" else imgsz
    model = deployable(build())
    manifest = make_manifest(model, "openvino", "fp32", "fused", (size, size), 1, True, top_k, None, {})
    t0 = time.perf_counter()
    onnx = export_onnx(model, tmp / f"{name}.onnx", (size, size), manifest, "fused", top_k=top_k, simplify=False)
    batches = calibration_batches(calib, manifest, len(calib))
    irs = {p: str(convert_openvino(onnx, tmp / f"{name}_{p}.xml", p, manifest, batches if p == "int8" else None))
           for p in ("fp32", "int8")}
    log.info("%s: exported FP32 + INT8 (%d calibration images) in %.0f s", name, len(calib), time.perf_counter() - t0)
    return irs, realtime.params_m(model), batches[-4:]


def yolo_feeds(core, xml: str, timing: List[Path], imgsz: int) -> List[dict]:
    """Ultralytics' input: RGB / 255, letterboxed with grey 114, float32 [1, 3, H, W]."""
    from converters.calibration import read_bgr
    from runtime.manifest import PreprocessSpec
    from runtime.preprocess import Preprocessor

    pre = Preprocessor(PreprocessSpec(size=(imgsz, imgsz), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), pad_value=114))
    name = core.read_model(xml).inputs[0].get_any_name()
    return [{name: pre(read_bgr(p))[0]} for p in timing]


def summarize(engines: List[Engine]) -> List[Dict[str, object]]:
    rows = []
    for e in engines:
        t = np.asarray(e.times)
        rows.append({"model": e.model, "precision": e.precision, "threads": e.threads,
                     "p50_ms": round(float(np.percentile(t, 50)), 1), "p95_ms": round(float(np.percentile(t, 95)), 1)})
    return rows


def best_rows(rows: List[Dict[str, object]]) -> Dict[int, Dict[str, Dict[str, object]]]:
    """threads -> model -> its fastest row (by p50) on this machine."""
    best: Dict[int, Dict[str, Dict[str, object]]] = {}
    for r in rows:
        mine = best.setdefault(int(r["threads"]), {})
        if r["model"] not in mine or r["p50_ms"] < mine[r["model"]]["p50_ms"]:
            mine[r["model"]] = r
    return best


def ratios(rows: List[Dict[str, object]]) -> Dict[int, Dict[str, Dict[str, float]]]:
    """threads -> "edgedet/yolo" -> {"best", "f32", "int8"}: edgedet p50 / YOLO p50 (< 1: edgedet faster)."""
    p50 = {(r["model"], r["precision"], r["threads"]): r["p50_ms"] for r in rows}
    best = best_rows(rows)
    out: Dict[int, Dict[str, Dict[str, float]]] = {}
    for threads, per_model in sorted(best.items()):
        for ours, theirs in PAIRS:
            if ours not in per_model or theirs not in per_model:
                continue
            r = {"best": round(per_model[ours]["p50_ms"] / per_model[theirs]["p50_ms"], 2)}
            for precision in ("f32", "int8", "bf16"):
                a, b = p50.get((ours, precision, threads)), p50.get((theirs, precision, threads))
                if a and b:
                    r[precision] = round(a / b, 2)
            out.setdefault(threads, {})[f"{ours}/{theirs}"] = r
    return out


def int8_speedups(rows: List[Dict[str, object]]) -> Dict[int, Dict[str, float]]:
    """threads -> model -> f32 p50 / int8 p50 (> 1: INT8 faster)."""
    p50 = {(r["model"], r["precision"], r["threads"]): r["p50_ms"] for r in rows}
    out: Dict[int, Dict[str, float]] = {}
    for (model, precision, threads), v in p50.items():
        if precision == "int8" and (model, "f32", threads) in p50:
            out.setdefault(threads, {})[model] = round(p50[(model, "f32", threads)] / v, 2)
    return out


def time_round_robin(engines: List[Engine], rounds: int, warmup: int = 2) -> None:
    for e in engines:
        for i in range(warmup):
            e.run(e.feeds[i % len(e.feeds)])
    start = time.perf_counter()
    for r in range(rounds):
        for e in engines:
            feeds = e.feeds[r % len(e.feeds)]
            t0 = time.perf_counter()
            e.run(feeds)
            e.times.append((time.perf_counter() - t0) * 1e3)
        if (r + 1) % 5 == 0 or r + 1 == rounds:
            log.info("  round %d/%d, %.0f s", r + 1, rounds, time.perf_counter() - start)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="D-FINE-N (+ YOLO26n when the venv exists), 3 rounds, 1 thread")
    ap.add_argument("--models", default="", help=f"comma-separated subset of {', '.join(EDGEDET_MODELS + YOLO_MODELS)}")
    ap.add_argument("--threads", default="", help="comma-separated thread counts (default 1,2; --quick 1)")
    ap.add_argument("--rounds", type=int, default=0, help="timed rounds per thread count (default 20, --quick 3)")
    ap.add_argument("--calib-images", type=int, default=0, help="INT8 calibration images (default 32, --quick 4)")
    ap.add_argument("--peers", choices=("build", "cached", "off"), default="",
                    help="Ultralytics side: build its venv if missing (default), use it only if built (--quick's default), or skip")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--top-k", type=int, default=300)
    args = ap.parse_args(argv)
    known = EDGEDET_MODELS + YOLO_MODELS
    args.models = [m for m in (args.models or ("dfine-n,yolo26n" if args.quick else ",".join(known))).split(",") if m]
    unknown = sorted(set(args.models) - set(known))
    if unknown:
        ap.error(f"unknown --models {', '.join(unknown)}; choose from {', '.join(known)}")
    try:
        args.threads = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]
    except ValueError:
        ap.error(f"--threads must be comma-separated integers, got '{args.threads}'")
    if any(t < 1 for t in args.threads):
        ap.error("--threads must be >= 1")
    args.rounds = args.rounds or (3 if args.quick else 20)
    args.calib_images = args.calib_images or (4 if args.quick else 32)
    args.peers = args.peers or ("cached" if args.quick else "build")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    import openvino as ov
    import torch

    from converters.calibration import evenly_spaced, image_paths
    from converters.openvino.convert import fused_extension_available, fused_extension_path

    if not fused_extension_available():
        sys.exit("the fused OpenVINO MSDA extension is not built: run scripts/build_ov_extension.sh")
    if not BCCD.is_dir():
        sys.exit(f"calibration images not found at {BCCD} (the shared BCCD data)")
    torch.set_num_threads(max(args.threads))
    cpu, load_before = cpu_info(), load_average()
    core = ov.Core()
    core.add_extension(str(fused_extension_path()))
    bf16 = has_bf16(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    paths = image_paths(BCCD)
    calib, timing = evenly_spaced(paths[:-4], args.calib_images), paths[-4:]
    precisions = ("f32", "int8") + (("bf16",) if bf16 else ())
    irs: Dict[str, Dict[str, str]] = {}
    params: Dict[str, float] = {}
    feeds: Dict[str, List[dict]] = {}
    skipped: Dict[str, str] = {}
    notes: Dict[str, str] = {}
    yolos = [m for m in args.models if m in YOLO_MODELS]
    if yolos:
        py = None if args.peers == "off" else peers_venv.venv_python(build=args.peers == "build")
        if py is None:
            for m in yolos:
                skipped[m] = "Ultralytics side off" if args.peers == "off" else "peers venv not built (run without --quick once)"
        else:
            t0 = time.perf_counter()
            exported = peers_venv.export_yolos(py, yolos, args.imgsz, calib)
            log.info("Ultralytics exports ready in %.0f s", time.perf_counter() - t0)
            for m, e in exported.items():
                irs[m], params[m] = {"fp32": e["fp32"], "int8": e["int8"]}, e["params_m"]
                if not e["nms_free"]:
                    notes[m] = "raw head exported: the NMS it needs after the graph is not timed"
                feeds[m] = yolo_feeds(core, e["fp32"], timing, args.imgsz)
    results: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in (m for m in args.models if m in EDGEDET_MODELS):
            irs[m], params[m], feeds[m] = edgedet_irs(m, Path(tmp), calib, args.imgsz, args.top_k)
        for threads in args.threads:
            engines = [Engine(m, p, threads, ov_runner(core, irs[m]["int8" if p == "int8" else "fp32"], threads, p, bf16), feeds[m])
                       for m in irs for p in precisions]
            log.info("%d threads: %d engines round-robin, %d rounds", threads, len(engines), args.rounds)
            time_round_robin(engines, args.rounds)
            results += summarize(engines)
            del engines
    load_after = load_average()
    for r in results:
        r["params_m"], r["coco_ap"] = round(params[r["model"]], 2), PUBLISHED_AP[r["model"]]
    report(args, cpu, bf16, load_before, load_after, results, skipped, notes)


def report(args, cpu, bf16, load_before, load_after, rows, skipped, notes) -> None:
    best, rat, int8 = best_rows(rows), ratios(rows), int8_speedups(rows)
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores), ISA: {' '.join(cpu['isa'])}; OpenVINO bf16: {'yes' if bf16 else 'no'}")
    print(f"load average (1/5/15 min): before {load_before}, after {load_after}")
    print(f"\n{'model':<14}{'prec':<6}{'thr':>4}{'params M':>9}{'COCO AP':>8}{'p50 ms':>9}{'p95 ms':>9}  best")
    for r in rows:
        star = "*" if best[r["threads"]][r["model"]] is r else ""
        print(f"{r['model']:<14}{r['precision']:<6}{r['threads']:>4}{r['params_m']:>9.2f}{r['coco_ap']:>8.1f}"
              f"{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}  {star}")
    for m, why in skipped.items():
        print(f"{m}: skipped ({why})")
    for m, note in notes.items():
        print(f"{m}: {note}")
    print("\nedgedet p50 / YOLO p50 (< 1: edgedet faster)")
    met = {}
    for threads, per_pair in rat.items():
        for pair, r in per_pair.items():
            target = TARGETS.get(tuple(pair.split("/")))
            note = ""
            if target:
                met[f"{pair}@{threads}"] = r["best"] <= target
                note = f"  target <= {target}: {'met' if r['best'] <= target else 'NOT met'}"
            print(f"  {threads} thr  {pair:<22}" + ", ".join(f"{k} {v:.2f}" for k, v in r.items()) + note)
    for threads, per_model in int8.items():
        print(f"INT8 speed-up over f32, {threads} thr: " + ", ".join(f"{m} {v:.2f}x" for m, v in per_model.items()))
    print(json.dumps({"bench": "peers", "quick": args.quick, "imgsz": args.imgsz, "rfdetr_imgsz": 384,
                      "rounds": args.rounds, "calib_images": args.calib_images, "cpu": cpu, "bf16": bf16,
                      "load_before": load_before, "load_after": load_after, "rows": rows,
                      "best": {t: {m: r["precision"] for m, r in per.items()} for t, per in best.items()},
                      "ratios": rat, "int8_speedup": int8, "targets_met": met, "skipped": skipped, "notes": notes}))


if __name__ == "__main__":
    main()
