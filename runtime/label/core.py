"""`label()`: a prompted detector over images and videos -> a training-ready data set (see `dataset.py`).

    from runtime.label import label, LabelConfig
    summary = label(LabelConfig(model="export/", sources=["clip.mp4"], output="shapes_ds",
                                boxes=["10,20,60,80"], names=["bolt"]))

Prompts come from a saved prompts file (the live page's, `--prompts`), exemplar boxes on a prompt
image (`--boxes`, default the first image of the source) and/or texts (`--text`). Every box down to
the scoring floor goes to the scores sidecar; the labels use one threshold: `conf` when given, else
the best-F1 threshold on the labelled images that `gt` has ground truth for (as exports choose the
manifest's), else the detector manifest's.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from runtime.label.dataset import LabelDataset, detections_of
from runtime.label.engine import DEDUP_IOU, SCORING_FLOOR, EngineSpec, box_names, find_artifacts, parse_boxes, prompts_bytes
from runtime.label.sources import WorkUnit, first_image, pending, plan_units, read_unit
from runtime.threshold import best_f1_threshold


@dataclass
class LabelConfig:
    model: str
    sources: List[str]
    output: str
    prompts: Optional[str] = None  # a prompts .npz (PromptedDetector.save_prompts, the live page's save)
    boxes: List[str] = field(default_factory=list)  # "x1,y1,x2,y2" on prompt_image
    names: List[str] = field(default_factory=list)  # a name per box, or one for all
    texts: List[str] = field(default_factory=list)
    prompt_image: Optional[str] = None  # default: the first image or frame of the sources
    prompt_encoder: Optional[str] = None
    conf: Optional[float] = None  # label threshold; None = chosen on gt, else the manifest's
    gt: Optional[str] = None  # a labelled data set (COCO JSON, YOLO/VOC folder, data YAML) of some source images
    gt_split: str = "val"
    every: int = 1  # every Nth video frame
    backend: str = "auto"
    device: str = "CPU"
    floor: float = SCORING_FLOOR
    dedup_iou: Optional[float] = DEDUP_IOU
    ray: Optional[str] = None  # None: this process; "local" or an address: Ray Data
    actors: int = 2
    quiet: bool = False


def _prompted_spec(cfg: LabelConfig, units: Sequence[WorkUnit], cache: Path) -> Tuple[EngineSpec, Any]:
    """Encode the prompts once (here) -> (the spec every worker builds from, this process's engine)."""
    import cv2

    from runtime.prompted import PromptedDetector

    if not (cfg.prompts or cfg.boxes or cfg.texts):
        raise ValueError("no prompts: pass --prompts FILE.npz (saved on the live page), --boxes X1,Y1,X2,Y2 ... "
                         "(on --prompt-image, default the first source image) and/or --text NAME ...")
    if cfg.prompts and (cfg.boxes or cfg.texts):
        raise ValueError("--prompts replaces all prompts; pass either a prompts file or --boxes/--text")
    if cfg.names and not cfg.boxes:
        raise ValueError("--names names --boxes; text prompts are named by their text")
    encoder, detector_path = find_artifacts(cfg.model, cfg.prompt_encoder, cache)
    det = PromptedDetector(encoder, detector_path, backend=cfg.backend, device=cfg.device, conf=cfg.floor,
                           dedup_iou=cfg.dedup_iou)
    try:
        if cfg.prompts:
            det.load_prompts(cfg.prompts)
        else:
            boxes = parse_boxes(cfg.boxes)
            image = None
            if len(boxes):
                if cfg.prompt_image:
                    image = cv2.imread(str(cfg.prompt_image), cv2.IMREAD_COLOR)
                    if image is None:
                        raise FileNotFoundError(f"--prompt-image {cfg.prompt_image} does not decode: pass an image file")
                else:
                    image = first_image(units)
            det.set_prompts(image, boxes=boxes if len(boxes) else None, texts=cfg.texts,
                            names=box_names(cfg.names, len(boxes)))
    except Exception:
        det.close()
        raise
    spec = EngineSpec(str(encoder), str(detector_path), prompts_bytes(det), cfg.backend, cfg.device, cfg.floor, cfg.dedup_iou)
    return spec, det


def read_ground_truth(path: str, split: str) -> Dict[str, Tuple[np.ndarray, List[str]]]:
    """image stem -> (boxes_xyxy [n, 4] pixels, class name per box). A COCO JSON is read as is (its images need
    not be on disk: video frames seldom are); other data sets through `runtime.datasets.load_dataset`."""
    if Path(path).suffix.lower() == ".json":
        try:
            coco = json.loads(Path(path).read_text())
            cats = {c["id"]: c["name"] for c in coco["categories"]}
            out = {Path(im["file_name"]).stem: (np.zeros((0, 4), np.float32), []) for im in coco["images"]}
            stems = {im["id"]: Path(im["file_name"]).stem for im in coco["images"]}
            for a in coco["annotations"]:
                if a.get("iscrowd"):
                    continue
                x, y, w, h = a["bbox"]
                boxes, labels = out[stems[a["image_id"]]]
                out[stems[a["image_id"]]] = (np.concatenate([boxes, [[x, y, x + w, y + h]]]).astype(np.float32),
                                             labels + [cats[a["category_id"]]])
        except FileNotFoundError:
            raise FileNotFoundError(f"--gt {path} not found: pass a COCO JSON, a YOLO/VOC folder or a data YAML") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--gt {path} is not a COCO instances JSON ({type(e).__name__}: {e}); pass one with "
                             "images, annotations and categories") from None
        return out
    from runtime.datasets import load_dataset

    ds = load_dataset(path, split)
    return {r.path.stem: (r.boxes_xyxy, [ds.class_names[int(c)] for c in r.labels]) for r in ds.records}


def choose_threshold(cfg: LabelConfig, records: Dict[str, Dict[str, Any]], names: Sequence[str],
                     manifest_threshold: float, truth: Optional[Dict[str, Tuple[np.ndarray, List[str]]]]) -> Tuple[float, str]:
    """(threshold, how it was chosen): --conf, else best F1 on the images `truth` (read from --gt) labels,
    else the manifest's."""
    if cfg.conf is not None:
        return float(cfg.conf), "given (--conf)"
    if truth is None:
        return manifest_threshold, "the detector manifest's (no --gt to choose one on)"
    known = sorted({n for _, ns in truth.values() for n in ns})
    if known and not set(known) & set(names):
        raise ValueError(f"--gt classes {known} share no name with the prompts {list(names)}: name the prompts "
                         "as the ground truth's classes (--names)")
    dets, truths = [], []
    for name, rec in records.items():
        g = truth.get(name) or (truth.get(Path(rec["source"]).stem) if "#" not in rec["source"] else None)
        if g is None:
            continue
        keep = [i for i, n in enumerate(g[1]) if n in names]  # objects no prompt stands for are no targets
        d = detections_of(rec, names)
        dets.append((d.boxes_xyxy, d.labels, d.scores))
        truths.append((g[0][keep], np.asarray([list(names).index(g[1][i]) for i in keep], np.int64)))
    if not dets:
        raise ValueError(f"--gt {cfg.gt} ({len(truth)} images) names none of the labelled images: its file names "
                         "must match the sources' (frames: <video stem>_<frame:06d>)")
    best = best_f1_threshold(dets, truths)
    if best["f1"] <= 0:
        return manifest_threshold, f"the detector manifest's (no box matched the ground truth of {len(dets)} images)"
    return round(best["threshold"], 4), (f"best F1 {best['f1']:.3f} (P {best['precision']:.2f}, R {best['recall']:.2f}) "
                                         f"on {len(dets)} images with ground truth")


def _run_here(spec: EngineSpec, engine: Any, todo: Sequence[WorkUnit], dataset: LabelDataset, quiet: bool) -> Dict[str, int]:
    from tqdm import tqdm

    total = sum(len(u.names) for u in todo)
    counts = {"images": 0, "skipped": 0}
    with tqdm(total=total, desc="label", unit="img", disable=quiet or None) as bar:
        for unit in todo:
            for item in read_unit(unit, warn=bar.write):
                dataset.add(item.name, item.data, item.suffix, item.source, engine(item.image))
                counts["images"] += 1
                bar.update(1)
    counts["skipped"] = total - counts["images"]
    return counts


def label(cfg: LabelConfig) -> Dict[str, Any]:
    """Label `cfg.sources` into `cfg.output`; returns the summary (also written to summary.json)."""
    if cfg.floor < 0 or cfg.floor > 1:
        raise ValueError(f"the scoring floor must be in [0, 1], got {cfg.floor}")
    if cfg.conf is not None and not cfg.floor <= cfg.conf <= 1:
        raise ValueError(f"--conf must be in [{cfg.floor}, 1] (boxes below the floor {cfg.floor} are not kept), got {cfg.conf}")
    if cfg.actors < 1:
        raise ValueError(f"--actors takes a positive number, got {cfg.actors}")
    units, others = plan_units(cfg.sources, cfg.every)  # a bad source or --gt fails before any model loads
    truth = read_ground_truth(cfg.gt, cfg.gt_split) if cfg.gt and cfg.conf is None else None
    out = Path(cfg.output)
    LabelDataset(out, {}).claim()  # someone else's folder is refused before the (slow) model export
    spec, engine = _prompted_spec(cfg, units, out / ".cache")
    names = list(engine.prompt_names)
    manifest_threshold = float(engine.manifest.outputs.score_threshold)
    identity = {"tool": "edgedet label", "prompt_names": names, "prompts_sha": spec.prompts_sha,
                "detector": Path(spec.detector).name, "floor": cfg.floor}
    dataset = LabelDataset(out, identity).open()
    (out / "prompts.npz").write_bytes(spec.prompts_npz)
    done = dataset.done()
    todo = pending(units, done)
    say = (lambda text: None) if cfg.quiet else print
    for p in others:
        say(f"skip {p}: neither an image nor a video file ({p.suffix or 'no suffix'})")
    say(f"{sum(len(u.names) for u in units)} images in the sources, {len(done)} already labelled, "
        f"{sum(len(u.names) for u in todo)} to label; prompts: {', '.join(names)}")
    t0 = time.perf_counter()
    try:
        if cfg.ray is None:
            counts = _run_here(spec, engine, todo, dataset, cfg.quiet)
        else:
            from runtime.label.ray_runner import run_on_ray

            counts = run_on_ray(spec, todo, dataset, cfg.ray, cfg.actors, cfg.quiet)
    finally:
        engine.close()
    seconds = time.perf_counter() - t0
    records = dataset.records()
    threshold, how = choose_threshold(cfg, records, names, manifest_threshold, truth)
    per_class = dataset.write_labels(records, names, threshold)
    sheet = dataset.write_contact_sheet(records, names, threshold)
    summary = {
        "output": str(out), "images": len(records), "labelled_now": counts["images"], "resumed": len(done),
        "unreadable": counts["skipped"], "not_images": [str(p) for p in others], "prompts": names,
        "threshold": threshold, "threshold_source": how, "boxes_per_class": per_class, "seconds": round(seconds, 3),
        "images_per_s": round(counts["images"] / seconds, 3) if counts["images"] and seconds > 0 else None,
        "runner": "ray" if cfg.ray is not None else "single-process", "actors": cfg.actors if cfg.ray is not None else 1,
        "data_yaml": str(out / "data.yaml"), "coco": str(out / "annotations.json"),
        "contact_sheet": str(sheet) if sheet else None, "config": {k: v for k, v in asdict(cfg).items() if k != "quiet"},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(s: Dict[str, Any]) -> str:
    boxes = ", ".join(f"{n} {c}" for n, c in s["boxes_per_class"].items())
    rate = f"{s['images_per_s']:.2f} images/s" if s["images_per_s"] else "nothing new to label"
    return (f"{s['images']} images ({s['labelled_now']} labelled now, {s['resumed']} resumed, {s['unreadable']} unreadable); "
            f"boxes: {boxes}\nthreshold {s['threshold']:.3f}: {s['threshold_source']}\n"
            f"{rate} ({s['runner']}, {s['actors']} engine(s)); data set: {s['data_yaml']}, COCO: {s['coco']}, "
            f"contact sheet: {s['contact_sheet']}")


__all__ = ["LabelConfig", "label", "choose_threshold", "format_summary"]
