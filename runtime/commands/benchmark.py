"""`edgedet benchmark` / `runtime.commands.benchmark.benchmark()`: compare formats, precisions and MSDA forms.

    edgedet benchmark --model best.pth --data ../shared/data/bccd --split test --imgsz 384 512
    edgedet benchmark --model best.pth --quick                  # ONNX + OpenVINO FP32 only
    edgedet benchmark --model a.onnx b.xml                      # existing artifacts, no torch needed
    edgedet benchmark --model a.xml --source video.mp4          # pipeline FPS on your own video (or camera 0)

A checkpoint is exported to every format x precision x MSDA form the machine can build (the
`export_matrix` plug-in from `converters`; skipped ones are listed with the reason). All engines
are loaded, then timed round-robin on the same frame so their ratios hold under shared load.
Table columns: format, precision, MSDA form, file size, load time, latency p50/p95 at batch 1,
throughput at the largest batch that runs, mAP / mAP50 (with --data) and the largest deviation
from PyTorch (top-20 scores; box corners in pixels of detections scoring >= 0.3). Then the pipeline an
app runs, per engine and round-robin: capture -> preprocess -> infer -> postprocess -> draw on a 1080p
source (`benchmark_pipeline`): median ms of each stage, pipeline FPS, and preprocess / infer. Writes
results.csv and results.json under a fresh runs/benchmark/N; the last printed line is the JSON.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from runtime.commands.benchmark_pipeline import PIPELINE_COLUMNS, SOURCE_HW, pipeline_source, time_pipelines
from runtime.models import is_checkpoint, load_model, plugin
from runtime.paths import next_run_dir

COLUMNS = ["format", "precision", "msda", "size_mb", "load_s", "p50_ms", "p95_ms", "batch", "throughput_ips",
           "mAP", "mAP50", "score_dev", "box_dev_px"] + PIPELINE_COLUMNS + ["skipped"]


def sample_frames(data: Optional[str], split: str, size_hw: Sequence[int], n: int = 4) -> List[np.ndarray]:
    """Frames to time and compare on: the first images of --data, else rendered shapes on a texture."""
    if data:
        from runtime.datasets import load_dataset

        frames = [cv2.imread(str(s.path), cv2.IMREAD_COLOR) for s in load_dataset(data, split).records[:n]]
        return [f for f in frames if f is not None]
    rng = np.random.default_rng(0)
    h, w = int(size_hw[0]), int(size_hw[1])
    frames = []
    for _ in range(n):
        img = cv2.GaussianBlur(rng.integers(40, 200, (h, w, 3), dtype=np.uint8), (0, 0), 6)
        for _ in range(4):
            c = tuple(int(v) for v in rng.integers(0, 256, 3))
            x, y, r = int(rng.integers(30, w - 30)), int(rng.integers(30, h - 30)), int(rng.integers(12, min(h, w) // 6))
            kind = rng.integers(3)
            if kind == 0:
                cv2.circle(img, (x, y), r, c, -1)
            elif kind == 1:
                cv2.rectangle(img, (x - r, y - r), (x + r, y + r), c, -1)
            else:
                cv2.fillPoly(img, [np.array([[x, y - r], [x - r, y + r], [x + r, y + r]], np.int32)], c)
        frames.append(img)
    return frames


def deviation(ref_dets: Sequence[Any], dets: Sequence[Any]) -> Dict[str, float]:
    """Largest top-20 score difference and box-corner distance (same class, score >= 0.3) from the reference."""
    score_dev, box_dev = 0.0, 0.0
    for r, d in zip(ref_dets, dets):
        a, b = np.sort(r.scores)[::-1][:20], np.sort(d.scores)[::-1][:20]
        k = min(len(a), len(b))
        score_dev = max(score_dev, float(np.abs(a[:k] - b[:k]).max()) if k else 0.0, float(a[k:].max()) if len(a) > k else 0.0)
        for box, label in zip(r.boxes_xyxy[r.scores >= 0.3], r.labels[r.scores >= 0.3]):
            same = d.boxes_xyxy[d.labels == label]
            box_dev = max(box_dev, float(np.abs(same - box).max(1).min()) if len(same) else float("inf"))
    return {"score_dev": float(f"{score_dev:.3g}"), "box_dev_px": round(box_dev, 3)}


def _size_mb(path: Path) -> float:
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])
    return round(sum(f.stat().st_size for f in files if f.is_file()) / 1e6, 3)


def _throughput(det: Any, frame: np.ndarray) -> tuple:
    """(batch, images/s) at the largest batch the engine runs (dynamic batch: tries 16, 8, 4, 2)."""
    sizes = [det.max_batch] if getattr(det, "max_batch", 0) else [16, 8, 4, 2, 1]
    for b in sizes:
        try:
            det.batch([frame] * b)
            t0 = time.perf_counter()
            for _ in range(3):
                det.batch([frame] * b)
            return b, round(3 * b / (time.perf_counter() - t0), 2)
        except Exception:  # noqa: BLE001 - out of memory or a fixed batch: try smaller
            continue
    return 1, 0.0


def benchmark(model: Any, data: Optional[str] = None, split: str = "val", imgsz: Optional[Sequence[int]] = None,
              quick: bool = False, iters: int = 0, project: str = "runs", calib_images: int = 32,
              quiet: bool = False, source: Optional[str] = None) -> Dict[str, Any]:
    """model: a checkpoint (exported to every buildable combination) or one or more artifact paths.
    source: what the pipeline timing reads (video, folder, camera); default a rendered 1080p clip.

    Returns {"dir", "rows": [one dict per COLUMNS]}; also written as results.csv / results.json.
    """
    models = [Path(m) for m in (model if isinstance(model, (list, tuple)) else [model])]
    for m in models:
        if not m.is_file():
            raise FileNotFoundError(f"model not found: {m} (a .pth checkpoint or exported artifacts)")
    out = next_run_dir(project, "benchmark")
    rows: List[Dict[str, Any]] = []
    ref = None
    if len(models) == 1 and is_checkpoint(models[0]):
        ckpt = models[0]
        imgsz = tuple(imgsz) if imgsz else (640, 640)
        export_matrix = plugin("export_matrix", "benchmarking a checkpoint exports it, which needs the conversion extra", "convert")
        calib = None
        if data:
            from runtime.datasets import load_dataset

            calib = [str(s.path) for s in load_dataset(data, "train" if split != "train" else split).records[:calib_images]]
        rows.append({"format": "pytorch", "precision": "fp32", "msda": "", "path": str(ckpt), "skipped": ""})
        rows += export_matrix(ckpt, out / "artifacts", imgsz, quick=quick, calib=calib, calib_images=calib_images)
    else:
        for m in models:
            if is_checkpoint(m):
                raise ValueError(f"{m.name}: pass one checkpoint alone (it is exported), or exported artifacts only")
            rows.append({"format": m.suffix.lstrip("."), "precision": "", "msda": "", "path": str(m), "skipped": ""})
    live = [r for r in rows if not r["skipped"]]
    dets = {}
    for r in list(live):  # load all first: timing below interleaves them
        t0 = time.perf_counter()
        try:
            det = load_model(r["path"], imgsz=imgsz if r["format"] == "pytorch" else None, conf=0.0)
        except (RuntimeError, ValueError, ImportError, OSError) as e:  # e.g. an engine library or custom op missing here
            r["skipped"] = f"cannot load here: {str(e).splitlines()[0][:160]}"
            live.remove(r)
            continue
        r["load_s"] = round(time.perf_counter() - t0, 3)
        r["size_mb"] = _size_mb(Path(r["path"]))
        r["input_format"] = getattr(getattr(getattr(det, "manifest", None), "preprocess", None), "input_format", "")
        if not r["precision"]:
            r["precision"], r["msda"] = det.manifest.precision, det.manifest.msda
            r["format"] = det.manifest.backend
        dets[id(r)] = det
        r["runs_as"] = getattr(getattr(det, "backend", None), "inference_precision", "")  # e.g. OpenVINO's auto choice
    if not dets:
        raise RuntimeError("no engine could be loaded: " + "; ".join(f"{r['format']} {r['precision']}: {r['skipped']}" for r in rows))
    first = next(iter(dets.values()))
    frames = sample_frames(data, split, first.input_size)
    if not frames:
        raise FileNotFoundError(f"no readable images in {data} split '{split}' to benchmark on")
    outputs = {id(r): [dets[id(r)](f) for f in frames] for r in live}
    ref = next((r for r in live if r["format"] == "pytorch"), None)
    iters = iters or (15 if quick else 50)
    times: Dict[int, list] = {id(r): [] for r in live}
    for _ in tqdm(range(iters), desc="timing (round-robin)", disable=quiet or None):
        for r in live:
            t0 = time.perf_counter()
            dets[id(r)](frames[0])
            times[id(r)].append((time.perf_counter() - t0) * 1e3)
    for r in live:
        r["p50_ms"] = round(float(np.percentile(times[id(r)], 50)), 2)
        r["p95_ms"] = round(float(np.percentile(times[id(r)], 95)), 2)
        r["batch"], r["throughput_ips"] = (1, round(1e3 / np.mean(times[id(r)]), 2)) if quick else _throughput(dets[id(r)], frames[0])
        if ref is not None:
            r.update(deviation(outputs[id(ref)], outputs[id(r)]))
    if not quiet:
        print("timing the pipeline (capture -> draw), round-robin", flush=True)
    src = pipeline_source(source, out, sample_frames(None, split, SOURCE_HW))
    pipelines = time_pipelines({id(r): dets[id(r)] for r in live}, src, iters)
    for r in live:
        r.update(pipelines[id(r)])
    for det in dets.values():
        det.close()
    if data:
        from runtime.val import val

        for r in tqdm(live, desc="mAP", disable=quiet or None):
            m = val(r["path"], data, split, imgsz=imgsz if r["format"] == "pytorch" else None, project=str(out / "val"),
                    plots=False, quiet=True)
            r["mAP"], r["mAP50"] = round(m["mAP"], 4), round(m["mAP50"], 4)
    table = [dict({c: r.get(c, "") for c in COLUMNS}, path=r.get("path") or "", runs_as=r.get("runs_as", "")) for r in rows]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + ["path", "runs_as"])
        writer.writeheader()
        writer.writerows(table)
    result = {"dir": str(out), "rows": table}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(result: Dict[str, Any]) -> str:
    head = f"{'format':<12}{'prec':<6}{'msda':<12}{'MB':>7}{'load s':>8}{'p50 ms':>9}{'p95 ms':>9}{'batch':>6}{'img/s':>8}{'mAP':>8}{'mAP50':>8}{'dev':>9}{'box px':>8}"
    lines = [head]
    for r in result["rows"]:
        if r["skipped"]:
            lines.append(f"{r['format']:<12}{r['precision']:<6}{r['msda'] or '-':<12}  skipped: {r['skipped']}")
            continue
        def f(key: str, spec: str) -> str:
            width = int(spec[1:spec.index(".")] if "." in spec else spec[1:-1])
            return format(r[key], spec) if r.get(key) not in ("", None) else format("-", f">{width}")

        lines.append(f"{r['format']:<12}{r['precision']:<6}{r['msda'] or '-':<12}{f('size_mb', '>7.2f')}{f('load_s', '>8.2f')}"
                     f"{f('p50_ms', '>9.2f')}{f('p95_ms', '>9.2f')}{f('batch', '>6d')}{f('throughput_ips', '>8.1f')}"
                     f"{f('mAP', '>8.3f')}{f('mAP50', '>8.3f')}{f('score_dev', '>9.1e')}{f('box_dev_px', '>8.2f')}")
    lines += [f"{r['format']} {r['precision']} {r['msda'] or '-'} runs as {r['runs_as']}" for r in result["rows"] if r.get("runs_as")]
    timed = [r for r in result["rows"] if not r["skipped"] and r.get("pipeline_fps") not in ("", None)]
    if timed:
        lines.append("pipeline per frame, capture -> draw (median ms):")
        lines.append(f"{'format':<12}{'prec':<6}{'msda':<12}{'input':<14}{'capture':>8}{'pre':>8}{'infer':>8}{'post':>8}{'draw':>8}"
                     f"{'FPS':>8}{'pre/inf':>8}")
        for r in timed:
            def g(key: str, spec: str = ">8.2f") -> str:
                return format(r[key], spec) if r.get(key) not in ("", None) else format("-", ">8")

            lines.append(f"{r['format']:<12}{r['precision']:<6}{r['msda'] or '-':<12}{r.get('input_format') or '-':<14}{g('capture_ms')}{g('preprocess_ms')}"
                         f"{g('infer_ms')}{g('postprocess_ms')}{g('draw_ms')}{g('pipeline_fps', '>8.1f')}{g('pre_vs_infer', '>8.1%')}")
    lines.append(f"results in {result['dir']} (results.csv, results.json)")
    return "\n".join(lines)


class BenchmarkCommand:
    name = "benchmark"
    help = "export a checkpoint to every available format/precision/MSDA form (or take artifacts) and compare speed and accuracy"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", required=True, nargs="+", help="a .pth checkpoint, or exported artifacts (no torch needed)")
        parser.add_argument("--data", default=None, help="labelled dataset for mAP (and INT8 calibration from its train split), or 'synthetic' "
                                 "(the generated shapes `edgedet train --data synthetic` uses; needs the training extra)")
        parser.add_argument("--split", default="val", help="split of --data to score (default val)")
        parser.add_argument("--imgsz", type=int, nargs=2, metavar=("H", "W"), default=None, help="export input size (default 640 640)")
        parser.add_argument("--quick", action="store_true", help="ONNX and OpenVINO FP32 only, fewer timing runs")
        parser.add_argument("--iters", type=int, default=0, help="timed runs per engine (default 50, quick 15)")
        parser.add_argument("--calib-images", type=int, default=32, help="INT8 calibration images from the train split")
        parser.add_argument("--project", default="runs", help="results go to PROJECT/benchmark/N")
        parser.add_argument("--source", default=None,
                            help="video, image folder or camera for the pipeline timing (default: a rendered 1080p clip)")
        parser.add_argument("--quiet", action="store_true", help="no progress bars")

    def run(self, args: argparse.Namespace) -> int:
        model = args.model[0] if len(args.model) == 1 else args.model
        result = benchmark(model, args.data, args.split, args.imgsz, args.quick, args.iters, args.project, args.calib_images,
                           args.quiet, args.source)
        print(format_table(result))
        print(json.dumps(result["rows"]))
        return 0


BENCHMARK_COMMAND = BenchmarkCommand()

__all__ = ["benchmark", "BENCHMARK_COMMAND", "deviation", "format_table"]
