"""`edgedet demo --prompt`: prompted open-set detection on the demo video, offline, on a CPU.

The embedded prompted detector (`edgedet/assets/prompted_detector.pth`, trained by
`scripts/train_prompted_model.py`) is exported as two artifacts (prompt encoder + detector;
OpenVINO with the fused MSDA op when the extension is built). Prompts come from the first frame
of the rendered video: by default one ground-truth box per class present in it; or `--boxes`
(first-frame pixels, optional `--names`) and/or `--text NAME`. They are encoded once; every
following frame runs only the detector through the runtime pipeline. Accuracy is COCO mAP against
the renderer's ground truth of the classes the prompts stand for, over the frames after the first.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from converters.demo_video import ASSETS, DEMO_DEDUP_IOU, DEMO_IMGSZ, DEMO_RESIZE, SCORING_FLOOR, artifact_msda, \
    cached_artifacts, drawn_scores, file_digest, format_summary, match_accuracy, render_demo_video, run_video, serve_demo

from runtime.prompted import PROMPTED_CONF

log = logging.getLogger(__name__)

PROMPTED_CHECKPOINT = ASSETS / "prompted_detector.pth"
MATCH_IOU = 0.5  # a prompt box stands for the ground-truth object it overlaps this much
PROMPTED_DRAW_CONF = PROMPTED_CONF  # drawing threshold of the prompted demo: most duplicates of the embedded model score below it


def export_prompted_demo_model(checkpoint: Path, out_dir: Path, format: str = "openvino", msda: Optional[str] = None,
                               text_encoder: bool = False) -> Tuple[Path, Path]:
    """Export both artifacts once per (checkpoint, format, msda, text encoder); later runs reuse them."""
    from converters.api import resolve_model
    from converters.prompted import export_prompted

    tag = f"{file_digest(checkpoint)}-prompted-{format}-{msda or 'auto'}{'-text' if text_encoder else ''}-{DEMO_RESIZE}"

    def build() -> Tuple[Path, Path]:
        model, experiment = resolve_model(checkpoint)
        return export_prompted(model, out_dir / "model" / tag, format=format, imgsz=DEMO_IMGSZ, msda=msda,
                               experiment=experiment, text_encoder=text_encoder, resize=DEMO_RESIZE,
                               overwrite=True)  # the demo's own cache folder

    encoder, detector = cached_artifacts(out_dir / "model" / f"{tag}.json", build)
    return encoder, detector


def parse_boxes(values: Sequence[str]) -> np.ndarray:
    """["x1,y1,x2,y2", ...] (pixels) -> [n, 4] float32."""
    boxes = []
    for v in values:
        parts = v.replace(" ", "").split(",")
        try:
            box = [float(p) for p in parts]
        except ValueError:
            box = []
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"--boxes takes x1,y1,x2,y2 in first-frame pixels with x2 > x1 and y2 > y1, got {v!r}")
        boxes.append(box)
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def default_prompt_boxes(first_gt: Sequence[Dict[str, Any]]) -> Tuple[np.ndarray, List[str]]:
    """One box per class on the first frame (its largest object in full view) -> (boxes [n, 4], names)."""
    best: Dict[int, Dict[str, Any]] = {}
    whole = [o for o in first_gt if o.get("visible", 1.0) >= 0.95]
    for obj in whole or first_gt:
        x0, y0, x1, y1 = obj["box_xyxy"]
        old = best.get(obj["label"])
        if old is None or (x1 - x0) * (y1 - y0) > (old["box_xyxy"][2] - old["box_xyxy"][0]) * (old["box_xyxy"][3] - old["box_xyxy"][1]):
            best[obj["label"]] = obj
    objs = [best[c] for c in sorted(best)]
    return np.asarray([o["box_xyxy"] for o in objs], np.float32).reshape(-1, 4), [o["name"] for o in objs]


def prompt_classes(names: Sequence[str], box_names: Sequence[str], boxes: np.ndarray, first_gt: Sequence[Dict[str, Any]],
                   class_names: Sequence[str]) -> Dict[str, Optional[int]]:
    """Prompt name -> the ground-truth class it stands for (None: unknown, not scored).

    A box stands for the first-frame object it overlaps (IoU >= 0.5); a name's class is the most
    common class of its boxes, else the class of that name when it is one (a text prompt)."""
    votes: Dict[str, Counter] = {n: Counter() for n in names}
    gt_boxes = np.asarray([o["box_xyxy"] for o in first_gt], np.float32).reshape(-1, 4)
    from converters.verify import iou_matrix  # lazy: verify imports torch

    ious = iou_matrix(np.asarray(boxes, np.float32).reshape(-1, 4), gt_boxes)
    for name, row in zip(box_names, ious):
        if row.size and row.max() >= MATCH_IOU:
            votes[name][first_gt[int(row.argmax())]["label"]] += 1
    out: Dict[str, Optional[int]] = {}
    for n in names:
        if votes[n]:
            out[n] = votes[n].most_common(1)[0][0]
        else:
            out[n] = list(class_names).index(n) if n in class_names else None
    return out


def slot_ground_truth(gt_frames: Sequence[Sequence[Dict[str, Any]]], slot_classes: Sequence[Optional[int]]):
    """Ground truth relabelled to prompt slots: an object of class c is a target of every slot standing for c."""
    return [[{**obj, "label": s} for s, c in enumerate(slot_classes) if c is not None for obj in objs if obj["label"] == c]
            for objs in gt_frames]


def run_prompted_demo(output_dir: Path = Path("runs/demo_prompt"), frames: int = 150, format: str = "openvino",
                      msda: Optional[str] = None, checkpoint: Path = PROMPTED_CHECKPOINT, boxes: Sequence[str] = (),
                      names: Sequence[str] = (), texts: Sequence[str] = (), conf: Optional[float] = None,
                      show: bool = False) -> Dict[str, Any]:
    """Run the prompted demo; returns the summary that is also written to `output_dir/summary.json`."""
    import cv2

    from runtime.prompted import PromptedDetector

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"prompted checkpoint not found: {checkpoint}; recreate it with "
                                "`python scripts/train_prompted_model.py`")
    if frames < 2:
        raise ValueError("the prompted demo needs at least 2 frames: the first gives the prompts, the rest are scored")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log.info("1/5 rendering a %d-frame moving-shapes video", frames)
    video, gt_frames = render_demo_video(output_dir, frames)
    class_names = json.loads(video.with_suffix(".json").read_text())["class_names"]
    user_boxes = parse_boxes(boxes)
    if names and len(names) not in (1, len(user_boxes)):
        raise ValueError(f"--names takes one name per box or one for all; got {len(names)} names for {len(user_boxes)} boxes")
    if len(user_boxes) or texts:
        box_names = [names[0]] * len(user_boxes) if len(names) == 1 else (
            list(names) or [f"prompt{i + 1}" for i in range(len(user_boxes))])
    else:  # no user prompts: one ground-truth box per class on the first frame
        user_boxes, box_names = default_prompt_boxes(gt_frames[0])
    texts = list(texts)

    log.info("2/5 exporting the embedded prompted detector (%s)", format)
    encoder, det_path = export_prompted_demo_model(checkpoint, output_dir, format, msda,
                                                   text_encoder=any(t not in class_names for t in texts))
    detector = PromptedDetector(encoder, det_path, conf=SCORING_FLOOR, dedup_iou=DEMO_DEDUP_IOU)
    capture = cv2.VideoCapture(str(video))
    ok, first = capture.read()
    capture.release()
    if not ok:
        raise RuntimeError(f"OpenCV cannot read the first frame of {video}")
    log.info("3/5 encoding %d box and %d text prompts on the first frame", len(user_boxes), len(texts))
    t0 = time.perf_counter()
    detector.set_prompts(first if len(user_boxes) else None, boxes=user_boxes if len(user_boxes) else None,
                         texts=texts, names=box_names or None)
    encode_ms = (time.perf_counter() - t0) * 1e3
    prompts_file = detector.save_prompts(output_dir / "prompts.npz")
    classes = prompt_classes(detector.prompt_names, box_names, user_boxes, gt_frames[0], class_names)

    log.info("4/5 running the pipeline: %s on %s", detector, video.name)
    from runtime.draw import draw_prompts

    # Prompted exports store no tuned threshold (scores depend on the prompts): see PROMPTED_DRAW_CONF.
    shown = draw_prompts if len(user_boxes) else None  # the exemplar boxes, on the frame they were drawn on
    draw_conf = PROMPTED_DRAW_CONF if conf is None else conf
    stats, per_frame, sheet_path = run_video(video, detector, output_dir, frames, draw_conf, show,
                                             first_frame_overlay=(lambda im: shown(im, user_boxes, box_names)) if shown else None)
    detector.close()

    log.info("5/5 scoring the frames after the first against the video's ground truth")
    slots = [classes[n] for n in detector.prompt_names]
    scored = {i: d for i, d in per_frame.items() if i > 0}
    accuracy = match_accuracy(slot_ground_truth(gt_frames, slots), scored, len(slots)) if any(
        c is not None for c in slots) else {"mAP": None, "mAP50": None, "frames_scored": 0}
    accuracy.update(drawn_scores(scored, draw_conf))
    prompts = [{"name": n, "boxes": [b for b, m in zip(user_boxes.tolist(), box_names) if m == n],
                "text": n in texts, "ground_truth_class": None if classes[n] is None else class_names[classes[n]]}
               for n in detector.prompt_names]
    summary = {
        "artifact": str(det_path), "prompt_encoder": str(encoder), "backend": detector.detector.name,
        "msda": artifact_msda(det_path), "prompts": prompts, "prompts_file": str(prompts_file),
        "prompt_encode_ms": encode_ms, "frames": stats["frames"], "fps": stats["fps"], "latency_ms": stats["latency_ms"],
        "accuracy": accuracy, "annotated_video": str(output_dir / "annotated.mp4"), "contact_sheet": str(sheet_path),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_prompted_summary(summary: Dict[str, Any]) -> str:
    lines = []
    for p in summary["prompts"]:
        source = ", ".join(([f"{len(p['boxes'])} box(es) on frame 0"] if p["boxes"] else []) + (["text"] if p["text"] else []))
        lines.append(f"prompt     {p['name']!r} from {source} (ground truth: {p['ground_truth_class'] or 'not scored'})")
    lines.append(f"encoding   {summary['prompt_encode_ms']:.0f} ms once, cached in {summary['prompts_file']}")
    if summary["accuracy"]["mAP50"] is None:
        summary = {**summary, "accuracy": {"mAP50": float("nan"), "mAP": float("nan"), "frames_scored": 0}}
    return "\n".join(lines) + "\n" + format_summary(summary)


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prompted detection (--prompt)")
    group.add_argument("--prompt", action="store_true",
                       help="prompted open-set detection: exemplars on the first frame (default: one ground-truth box "
                            "per class) find all objects like them in the following frames")
    group.add_argument("--boxes", nargs="+", default=[], metavar="X1,Y1,X2,Y2", help="prompt boxes in first-frame pixels")
    group.add_argument("--names", nargs="+", default=[], help="a name per --boxes box (or one for all)")
    group.add_argument("--text", nargs="+", default=[], metavar="NAME", help="text prompts, e.g. --text circle square")


def run_prompted_from_args(args: argparse.Namespace) -> int:
    serve = getattr(args, "serve", None)
    if serve:  # a bad address fails before the demo's slow work
        from runtime.serve import parse_serve_address

        parse_serve_address(serve, args.host)
    output = args.output or Path("runs/demo_prompt")
    summary = run_prompted_demo(output, args.frames, args.format, args.msda, args.checkpoint or PROMPTED_CHECKPOINT,
                                args.boxes, args.names, args.text, args.conf, args.show)
    print(format_prompted_summary(summary))
    if serve:  # the same artifacts and prompts, live; new prompts are drawn on the page
        live = live_prompted_detector(summary, args.conf, Path(output))
        serve_demo(live.detector, Path(output) / "shapes.mp4", args, prompts=live)
    return 0


def live_prompted_detector(summary: Dict[str, Any], conf: Optional[float], output: Path) -> Any:
    """The demo's detector and prompts for the live view, drawn as the demo drew them: its threshold (not the
    manifest's fallback), near-copies dropped, and boxes of two prompts on one object shown once."""
    from runtime.prompted import PromptedDetector
    from runtime.serve import LivePromptedDetector

    detector = PromptedDetector(summary["prompt_encoder"], summary["artifact"], dedup_iou=DEMO_DEDUP_IOU,
                                conf=PROMPTED_DRAW_CONF if conf is None else conf)
    detector.load_prompts(summary["prompts_file"])
    return LivePromptedDetector(detector, output / "prompts", merge_iou=DEMO_DEDUP_IOU)


__all__ = ["run_prompted_demo", "export_prompted_demo_model", "parse_boxes", "default_prompt_boxes", "prompt_classes",
           "slot_ground_truth", "PROMPTED_CHECKPOINT"]
