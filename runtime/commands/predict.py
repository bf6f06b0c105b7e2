"""`edgedet predict` / `runtime.commands.predict.predict()`: a model on images or a video, files you can use.

    edgedet predict --model model.onnx --source photos/            # or an image, a glob, a video, 0, a URL
    edgedet predict --model best.pth --source "data/*.jpg" --data data.yaml --save-txt

Writes under a fresh runs/predict/N: annotated images (same names) or an annotated video, one
JSON per image (<stem>.json: file name, size, boxes in pixels, scores, class ids and names;
<stem>.jsonl per frame for a video), `predictions.json` in COCO results format (the dataset's
image and category ids with --data), and YOLO txt labels under labels/ with --save-txt.
Files that are not images are skipped with a line saying so.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from runtime.image_io import read_image
from runtime.capture import IMAGE_SUFFIXES, open_source
from runtime.commands.common import add_model_arguments, expand_images, say_defaults, source_arg, source_kind, summarize_names
from runtime.draw import draw
from runtime.models import is_checkpoint, load_model
from runtime.paths import next_run_dir
from runtime.types import Detections


def yolo_lines(dets: Detections, with_conf: bool = False) -> List[str]:
    """'class cx cy w h' normalised to the image (the YOLO label format), one line per detection."""
    h, w = dets.image_size
    lines = []
    for (x0, y0, x1, y1), label, score in zip(dets.boxes_xyxy.tolist(), dets.labels.tolist(), dets.scores.tolist()):
        vals = [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]
        lines.append(f"{label} " + " ".join(f"{v:.6f}" for v in vals) + (f" {score:.4f}" if with_conf else ""))
    return lines


def image_record(name: str, dets: Detections) -> Dict[str, Any]:
    record = {"file_name": name, "height": int(dets.image_size[0]), "width": int(dets.image_size[1])}
    record.update(dets.to_dict())
    return record


class _Ids:
    """COCO image/category ids: the dataset's (matched by file name) with --data, else 1-based order / class id + 1."""

    def __init__(self, data: Optional[str], split: str, class_names: Sequence[str]):
        self.by_name, self.category_ids = {}, [i + 1 for i in range(len(class_names))]
        if data:
            from runtime.datasets import load_dataset

            ds = load_dataset(data, split).aligned_to(class_names)
            self.by_name = {name: s.image_id for name, s in ds.by_file_name().items()}
            self.category_ids = ds.category_ids
        self.from_data = bool(self.by_name)
        self.next_id = max(self.by_name.values(), default=0) + 1

    def image_id(self, name: str) -> int:
        if name in self.by_name:
            return self.by_name[name]
        if self.from_data:
            print(f"note: {name} is not in the --data split; COCO image id {self.next_id} given", file=sys.stderr)
        self.by_name[name] = self.next_id
        self.next_id += 1
        return self.by_name[name]


def predict(model: Any, source: Any, conf: Optional[float] = None, imgsz: Optional[Sequence[int]] = None, data: Optional[str] = None,
            split: str = "val", save_txt: bool = False, save_conf: bool = False, save: bool = True, project: str = "runs",
            classes: Optional[Iterable[int]] = None, backend: str = "auto", device: str = "CPU", max_frames: int = 0,
            quiet: bool = False, dedup_iou: Optional[float] = None, ray: Optional[str] = None, actors: int = 2,
            **options: Any) -> Dict[str, Any]:
    """Run `model` on `source`; returns {"dir", "images", "skipped", "objects", "ms_per_image", "files"}.

    conf / dedup_iou: None = the manifest's recommendation (as `run` and `track`), printed once.
    model: artifact or checkpoint path (or a loaded Detector). source: image, folder, glob, video,
    camera index, URL. data/split: a labelled dataset whose image and category ids the COCO file uses.
    ray: None (this process), "local" (a small local Ray cluster) or a Ray address: images only, the model
    runs in a Ray Data pool of `actors` engines (`runtime.label.ray_runner`); the files written are the same.
    """
    kind = source_kind(source)
    if ray is not None and not isinstance(model, (str, Path)):
        raise ValueError("predict with ray takes a model path: each actor loads its own engine from it")
    if ray is not None and kind != "images":
        raise ValueError("predict --ray takes images (files, folders, globs); for videos at scale use "
                         "`edgedet label --ray` (frame ranges), or predict without --ray")
    if actors < 1:
        raise ValueError(f"--actors takes a positive number, got {actors}")
    images: List[Path] = []
    if kind == "images":
        images, others = expand_images(source)  # before loading the model: a bad source fails fast
        if not images:
            raise FileNotFoundError(f"no images in {source}: {len(others)} files, none of them "
                                    f"{'/'.join(IMAGE_SUFFIXES)}; pass images, a video or a camera")
    detector = load_model(model, imgsz=imgsz, conf=conf, classes=classes, backend=backend, device=device,
                          dedup_iou=dedup_iou, **options)
    try:
        ids = _Ids(data, split, detector.class_names)
        say_defaults(detector, quiet)  # once the data is known to fit: an error stays one line
        out = next_run_dir(project, "predict")
        if save_txt:
            (out / "labels").mkdir()
        say = (lambda text: None) if quiet else print
        if kind == "images":
            results = None
            if ray is not None:
                load = functools.partial(load_model, model, imgsz=imgsz, conf=conf, classes=classes, backend=backend,
                                         dedup_iou=dedup_iou,
                                         device=device, **{"threads": 1, **options} if not is_checkpoint(model) else options)
                results = _ray_results(detector, load, images, ray, actors)
            summary = _predict_images(detector, images, others, ids, out, save, save_txt, save_conf, say, results)
        else:
            summary = _predict_stream(detector, source, ids, out, save, save_txt, save_conf, max_frames, quiet)
    finally:
        detector.close()
    (out / "predictions.json").write_text(json.dumps(summary.pop("coco")))
    summary["dir"] = str(out)
    say(f"{summary['images']} {'images' if kind == 'images' else 'frames'}, {summary['objects']} objects, "
        f"{summary['skipped']} skipped, {summary['ms_per_image']:.1f} ms/image; results in {out}"
        + (f"; {len(summary['truncated'])} truncated (processed as far as they decode): "
           f"{', '.join(Path(p).name for p in summary['truncated'][:5])}" if summary.get("truncated") else ""))
    return summary


def _stems(images: Sequence[Path]) -> Dict[Path, str]:
    """Output stem per image: its own, or `<stem>_<n>` for a repeated file name (a glob over folders)."""
    seen, out = set(), {}
    for n, path in enumerate(images, 1):
        out[path] = path.stem if path.name not in seen else f"{path.stem}_{n}"
        seen.add(path.name)
    return out


def _detect_here(detector, images: Sequence[Path], truncated: List[str]):
    """(path, image or None, Detections, ms) per image, in order, in this process."""
    for path in images:
        image, cut = read_image(path)  # grayscale and 16-bit files come back as 8-bit BGR
        if cut and image is not None:
            truncated.append(str(path))  # named in a warning by read_image, processed as far as it decodes
        if image is None:
            yield path, None, None, 0.0
            continue
        t0 = time.perf_counter()
        dets = detector(image)
        yield path, image, dets, (time.perf_counter() - t0) * 1e3


def _ray_results(detector, load, images: Sequence[Path], address: str, actors: int):
    """(path, None, Detections, ms) per image from a Ray Data actor pool (one engine from `load()` per actor)."""
    from runtime.label.ray_runner import detections_from_record, detections_record, run_pool
    from runtime.label.sources import WorkUnit

    by_path = {str(p.resolve()): p for p in images}
    batch = int(getattr(getattr(detector, "manifest", None), "batch", 1) or 8)  # 0: a dynamic batch
    for row in run_pool(address, [WorkUnit(str(p), [p.stem]) for p in images], load, detections_record, actors, batch,
                        keep_bytes=False):
        r = row["result"]
        yield by_path[str(Path(row["source"]).resolve())], None, None if r is None else detections_from_record(r), \
            0.0 if r is None else r["ms"]


def _predict_images(detector, images, others, ids, out, save, save_txt, save_conf, say, results=None) -> Dict[str, Any]:
    """results: (path, image, Detections, ms) per image from elsewhere (the Ray pool, any order; image None
    when it did not decode there); default: run `detector` here, in order."""
    for p in others:
        say(f"skip {p}: not an image file ({p.suffix or 'no suffix'})")
    skipped, coco, objects, times, truncated = len(others), [], 0, [], []
    total = len(images)
    stems = _stems(images)
    for path in images:  # COCO ids in file order, whatever order the results come in
        ids.image_id(path.name)
    for n, (path, image, dets, ms) in enumerate(results if results is not None else _detect_here(detector, images, truncated), 1):
        if dets is None:
            say(f"skip {path}: OpenCV cannot decode it (corrupt or not an image)")
            skipped += 1
            continue
        stem = stems[path]
        times.append(ms)
        objects += len(dets)
        (out / f"{stem}.json").write_text(json.dumps(image_record(path.name, dets)))
        coco += dets.to_coco(ids.image_id(path.name), ids.category_ids)
        if save:
            cv2.imwrite(str(out / (stem + path.suffix)), draw(image if image is not None else read_image(path)[0], dets))
        if save_txt:
            (out / "labels" / f"{stem}.txt").write_text("".join(line + "\n" for line in yolo_lines(dets, save_conf)))
        say(f"image {n}/{total} {path.name} {dets.image_size[1]}x{dets.image_size[0]}: {summarize_names(dets.names)} ({ms:.1f} ms)")
    if not times:
        raise FileNotFoundError(f"no readable images among {total + len(others)} files: pass images ({', '.join(sorted({'.jpg', '.png'}))}, ...)")
    coco.sort(key=lambda d: d["image_id"])  # the same file whatever order the results came in
    return {"images": len(times), "skipped": skipped, "truncated": truncated, "objects": objects,
            "ms_per_image": float(np.mean(times)), "coco": coco}


def _predict_stream(detector, source, ids, out, save, save_txt, save_conf, max_frames, quiet) -> Dict[str, Any]:
    from runtime.sinks import VideoSink

    src = open_source(source)
    stem = Path(str(source)).stem if not str(source).isdigit() else f"camera{source}"
    writer = VideoSink(out / f"{stem}.mp4", fps=src.fps or 30.0) if save else None
    coco, objects, times = [], 0, []
    try:
        with open(out / f"{stem}.jsonl", "w", encoding="utf-8") as jl:
            for frame in tqdm(src, desc="predict", unit="frame", disable=quiet or None):
                t0 = time.perf_counter()
                dets = detector(frame.image)
                times.append((time.perf_counter() - t0) * 1e3)
                objects += len(dets)
                name = f"{stem}_{frame.index}"
                jl.write(json.dumps({"frame": frame.index, **image_record(name, dets)}) + "\n")
                coco += dets.to_coco(ids.image_id(name), ids.category_ids)
                if writer is not None:
                    from runtime.pipeline import Result

                    writer(Result(frame, dets, times[-1]))
                if save_txt:
                    (out / "labels" / f"{name}.txt").write_text("".join(line + "\n" for line in yolo_lines(dets, save_conf)))
                if max_frames and len(times) >= max_frames:
                    break
    finally:
        src.close()
        if writer is not None:
            writer.close()
    if not times:
        raise RuntimeError(f"{source} gave no frames: check the file or camera")
    return {"images": len(times), "skipped": 0, "objects": objects, "ms_per_image": float(np.mean(times)), "coco": coco}


class PredictCommand:
    name = "predict"
    help = "detect objects in images, folders, globs, videos or streams; write annotated files, JSON, COCO results, YOLO labels"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_arguments(parser)
        parser.add_argument("--source", required=True, type=source_arg, help="image, folder, glob (quoted), video, camera index or URL")
        parser.add_argument("--data", default=None, help="labelled dataset whose image/category ids predictions.json should use")
        parser.add_argument("--split", default="val", help="split of --data (default val)")
        parser.add_argument("--save-txt", action="store_true", help="also write YOLO-format labels (class cx cy w h) under labels/")
        parser.add_argument("--save-conf", action="store_true", help="append the score to each --save-txt line")
        parser.add_argument("--nosave", action="store_true", help="do not write annotated images/video")
        parser.add_argument("--max-frames", type=int, default=0, help="video/stream: stop after this many frames")
        parser.add_argument("--quiet", action="store_true", help="no per-image lines")
        from runtime.commands.label import add_ray_arguments

        add_ray_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        predict(args.model, args.source, args.conf, args.imgsz, args.data, args.split, args.save_txt, args.save_conf,
                not args.nosave, args.project, args.classes, args.backend, args.device, args.max_frames, args.quiet,
                dedup_iou=args.dedup_iou, ray=args.ray, actors=args.actors)
        return 0


PREDICT_COMMAND = PredictCommand()

__all__ = ["predict", "PREDICT_COMMAND", "yolo_lines"]
