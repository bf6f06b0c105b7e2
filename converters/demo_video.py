"""The demo's rendered video and what both demos do with it: run a detector over it in the threaded
pipeline, score the detections against the renderer's ground truth, print the summary, serve it live.

Shared by `edgedet demo` (converters/demo.py) and `edgedet demo --prompt` (converters/demo_prompted.py),
so that neither imports the other for its helpers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import numpy as np

ASSETS = Path(__file__).resolve().parents[1] / "edgedet" / "assets"
DEMO_IMGSZ = (256, 448)  # the 360x640 frames at the shapes' training size
# The embedded detector saw only whole 256x448 images (aspect 1.75) in training: the 16:9 frames fill its input
# with a 1.6% stretch rather than a 4-row letterbox band (a partial feature row its masked grid rounds up to a
# whole one: boxes 1.6% off vertically, mAP 0.69 instead of 0.79 on the demo video).
DEMO_RESIZE = "stretch"
DEMO_SEED, DEMO_OBJECTS = 7, 5  # the demo video: camera-like world, 5 shapes in view at a time


SCORING_FLOOR = 0.05
# A small DETR still puts two queries on one object now and then: near-copies (IoU > 0.7, same class)
# are dropped for the picture and the score alike (the runtime's Detector(dedup_iou=...)).
DEMO_DEDUP_IOU = 0.7


class _Confident:
    """Passes a sink only the detections at or above `conf` (drawing), keeping its close()."""

    def __init__(self, sink, conf: float):
        self.sink, self.conf = sink, conf

    def __call__(self, result) -> None:
        from runtime import Result

        self.sink(Result(result.frame, result.detections.filter(min_score=self.conf), result.latency_ms))

    def close(self) -> None:
        self.sink.close()


def file_digest(path: Path) -> str:
    """A short content hash: cached exports are keyed by the checkpoint's bytes, not its name."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def cached_artifacts(stamp: Path, build: Callable[[], Sequence[Path]]) -> List[Path]:
    """The artifacts recorded in `stamp` while they all exist; else `build()`'s, then recorded."""
    if stamp.is_file():
        paths = [Path(p) for p in json.loads(stamp.read_text()).get("artifacts", [])]
        if paths and all(p.is_file() for p in paths):
            return paths
    stamp.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in build()]
    stamp.write_text(json.dumps({"artifacts": [str(p) for p in paths]}))
    return paths


def match_accuracy(gt_frames: Sequence[Sequence[Dict[str, Any]]], detections: Dict[int, Any], num_classes: int) -> Dict[str, float]:
    """COCO mAP (pycocotools) of the per-frame detections against the rendered ground truth.
    Objects marked `ignore` (mostly out of view or hidden) are crowd regions: detections on them
    count neither way."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    import contextlib
    import io

    images, annotations, results = [], [], []
    for index, objects in enumerate(gt_frames):
        if index not in detections:
            continue  # frames the pipeline did not process are not scored
        images.append({"id": index + 1})
        for obj in objects:
            x0, y0, x1, y1 = obj["box_xyxy"]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": int(obj["label"]) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": int(bool(obj.get("ignore")))})
        results += detections[index].to_coco(index + 1, [c + 1 for c in range(num_classes)])
    if not images:
        raise RuntimeError("the demo processed no frames")
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c + 1} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not results:
            return {"mAP": 0.0, "mAP50": 0.0, "frames_scored": len(images)}
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"mAP": float(evaluator.stats[0]), "mAP50": float(evaluator.stats[1]), "frames_scored": len(images)}


def drawn_scores(per_frame: Dict[int, Any], conf: float) -> Dict[str, float]:
    """How confident what the user sees is: the drawing threshold and the median score drawn."""
    drawn = [d.scores[d.scores >= conf] for d in per_frame.values()]
    scores = np.concatenate(drawn) if drawn else np.zeros(0)
    return {"draw_threshold": float(conf), "drawn_score_median": float(np.median(scores)) if len(scores) else 0.0,
            "drawn_per_frame": float(len(scores) / max(len(per_frame), 1))}


def render_demo_video(output_dir: Path, frames: int):
    """The demo's video (fixed seed) of the camera-like rendered world -> (path, per-frame ground truth)."""
    video = Path(output_dir) / "shapes.mp4"
    return video, render_world_clip(video, frames, DEMO_SEED)


def render_world_clip(path: Path, frames: int, seed: int):
    """A 360x640, 15 FPS clip of the camera-like world as the demo shows it -> per-frame ground truth."""
    from edgedet.data import render_synthetic_video

    return render_synthetic_video(path, num_frames=frames, size=(360, 640), fps=15, seed=seed,
                                  num_objects=DEMO_OBJECTS, style="camera")


class _FirstFrameOverlay:
    """Passes a sink frame 0 with `overlay(image)` drawn on a copy (the prompted demo's exemplar boxes)."""

    def __init__(self, sink, overlay):
        self.sink, self.overlay = sink, overlay

    def __call__(self, result) -> None:
        self.sink(with_first_frame_overlay(result, self.overlay))

    def close(self) -> None:
        close = getattr(self.sink, "close", None)
        if callable(close):
            close()


def with_first_frame_overlay(result, overlay):
    import dataclasses

    if overlay is None or result.frame.index != 0:
        return result
    return dataclasses.replace(result, frame=dataclasses.replace(result.frame, image=overlay(result.frame.image.copy())))


def run_video(video: Path, detector, output_dir: Path, frames: int, conf: float, show: bool = False, first_frame_overlay=None):
    """Run `detector` over `video` in the threaded pipeline; write annotated.mp4 and contact_sheet.png.

    first_frame_overlay: image -> image drawn on frame 0 in the video, the window and the contact sheet.

    Detections are kept down to the detector's own (low) threshold for scoring; only those at or
    above `conf` are drawn. -> (pipeline stats, {frame index: Detections}, contact sheet path).
    """
    import cv2

    from runtime import CallbackSink, Pipeline, ShowSink, VideoSink, contact_sheet, draw

    per_frame: Dict[int, Any] = {}
    keep = set(np.linspace(0, frames - 1, 8).round().astype(int).tolist())
    sheet_frames: List[np.ndarray] = []

    def collect(result) -> None:
        per_frame[result.frame.index] = result.detections
        if result.frame.index in keep:
            result = with_first_frame_overlay(result, first_frame_overlay)
            sheet_frames.append(draw(result.frame.image, result.detections.filter(min_score=conf)))

    video_sink = _Confident(VideoSink(output_dir / "annotated.mp4", fps=15, overlay_fps=True), conf)
    sinks = [CallbackSink(collect), _FirstFrameOverlay(video_sink, first_frame_overlay)]
    if show:
        sinks.append(_FirstFrameOverlay(_Confident(ShowSink(), conf), first_frame_overlay))
    stats = Pipeline(str(video), detector, sinks=sinks).run()
    sheet_path = output_dir / "contact_sheet.png"
    if sheet_frames:
        cv2.imwrite(str(sheet_path), contact_sheet(sheet_frames, cols=4))
    return stats, per_frame, sheet_path


def artifact_msda(artifact: Path) -> str:
    """The MSDA form recorded in an artifact's sidecar manifest."""
    from runtime.manifest import read_sidecar

    return read_sidecar(artifact).msda


def format_summary(summary: Dict[str, Any]) -> str:
    lines = [
        f"model      {summary['artifact']} ({summary['backend']}, msda={summary['msda'] or 'none'})",
        f"frames     {summary['frames']} at {summary['fps']:.1f} FPS",
        "latency    " + ", ".join(
            f"{stage} p50 {v['p50']:.1f} ms / p95 {v['p95']:.1f} ms" for stage, v in summary["latency_ms"].items()
            if stage in ("preprocess", "infer", "postprocess", "end_to_end")),
        f"accuracy   mAP@0.5 {summary['accuracy']['mAP50']:.3f}, mAP@[.5:.95] {summary['accuracy']['mAP']:.3f} "
        f"over {summary['accuracy']['frames_scored']} frames",
        *([f"drawn      scores >= {summary['accuracy']['draw_threshold']:.2f}: median "
           f"{summary['accuracy']['drawn_score_median']:.2f}, {summary['accuracy']['drawn_per_frame']:.1f} boxes a frame"]
          if "drawn_score_median" in summary["accuracy"] else []),
        f"wrote      {summary['annotated_video']}, {summary['contact_sheet']}",
    ]
    return "\n".join(lines)


def serve_demo(detector, video: Path, args: argparse.Namespace, prompts=None) -> None:
    """Play the demo video in a loop through the pipeline with the live web view, until Ctrl-C."""
    from runtime import Pipeline
    from runtime.capture import PacedVideoSource
    from runtime.serve import LiveServer, parse_serve_address
    from runtime.serve.cli_options import server_options

    bind, port, remote = parse_serve_address(args.serve, args.host)
    server = LiveServer(bind, port, allow_remote=remote, prompts=prompts, **server_options(args)).start()
    pipe = Pipeline(PacedVideoSource(video, loop=True), prompts or detector, sinks=[server])
    server.stats_fn = pipe.stats
    server.announce(suffix="  (the demo video loops; Ctrl-C stops)")
    try:
        pipe.run()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        pipe.close()
        detector.close()
