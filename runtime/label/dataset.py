"""The data set `edgedet label` writes, resumably: YOLO layout, scores sidecar, COCO JSON, data.yaml.

    DATASET/
      .edgedet-label.json         what made it (model, prompt names): marks the folder as ours, for resuming
      prompts.npz                 the prompts used (load with PromptedDetector.load_prompts / --prompts)
      images/{train,val}/<name>   the source image (byte for byte) or the extracted frame (.jpg)
      scores/<name>.json          every box kept down to the scoring floor, with its score (re-threshold without re-running)
      labels/{train,val}/<name>.txt   YOLO 'class cx cy w h' of the boxes at the chosen threshold
      annotations.json            the same boxes as COCO instances (each with its score)
      data.yaml                   Ultralytics-style: path, train, val, names (= the prompt names)
      contact_sheet.png           a sample of labelled images, to look at before training
      summary.json                images, boxes per class, threshold and how it was chosen, throughput

An image counts as done when its scores file exists; the image is written before it, both atomically,
so a killed run leaves no half file and a re-run rewrites at most the image it was on. Labels, COCO
and the sheet are rebuilt from the scores at the end of every run (all of them our own files).
The split is a hash of the name (1 in VAL_EVERY to val), so it does not depend on order or on resuming.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from runtime.atomic import atomic_write_bytes, atomic_write_text
from runtime.types import Detections

MARKER = ".edgedet-label.json"
VAL_EVERY = 10
SHEET_IMAGES = 12


class LabelOutputError(ValueError):
    """The output folder cannot be used (someone else's files, or another labelling run's)."""


def split_of(name: str) -> str:
    return "val" if zlib.crc32(name.encode("utf-8")) % VAL_EVERY == 0 else "train"


class LabelDataset:
    """One label output folder: `open()` it (fresh or resumed), `add()` each image, `finish()` at the end."""

    def __init__(self, root: Path, identity: Dict[str, Any]):
        self.root = Path(root)
        self.identity = identity  # what must match to resume: model files and prompt names

    # ------------------------------------------------------------ opening

    def check_usable(self) -> Optional[Dict[str, Any]]:
        """None for a new or empty folder, the previous run's identity for one of ours; LabelOutputError otherwise."""
        marker = self.root / MARKER
        if self.root.exists() and not self.root.is_dir():
            raise LabelOutputError(f"--output {self.root} is a file; pass a folder to write the data set into")
        if not (self.root.is_dir() and any(self.root.iterdir())):
            return None
        if not marker.is_file():
            raise LabelOutputError(f"--output {self.root} already holds files that `edgedet label` did not write; "
                                   "pass a new or empty folder (nothing there was changed)")
        try:
            return json.loads(marker.read_text())
        except ValueError:
            raise LabelOutputError(f"{marker} is damaged; pass a new --output folder") from None

    def claim(self) -> None:
        """Mark a new or empty folder as ours before anything else goes in (the model cache of a checkpoint):
        a run that stops before labelling leaves a folder the next run still accepts."""
        if self.check_usable() is None:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.root / MARKER, json.dumps({"tool": "edgedet label"}))

    def open(self) -> "LabelDataset":
        """Create the folder, or resume one this command wrote with the same prompts; never touch a folder
        of anything else."""
        marker = self.root / MARKER
        previous = self.check_usable()
        if previous is not None:
            for key in ("prompt_names", "prompts_sha") if "prompts_sha" in previous else ():  # claimed: none yet
                if previous.get(key) != self.identity.get(key):
                    raise LabelOutputError(
                        f"--output {self.root} was labelled with other prompts ({key}: {previous.get(key)} != "
                        f"{self.identity.get(key)}); resume with the same prompts (its prompts.npz) or pass a new folder")
            strays = [p for p in self.root.rglob(".*.tmp*") if p.is_file()]
            for p in strays:  # temporaries of our own atomic writes, left by a killed run
                p.unlink()
        for sub in ("scores", "images/train", "images/val", "labels/train", "labels/val"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, json.dumps(self.identity, indent=2))
        return self

    def done(self) -> set:
        """Names already labelled (their scores file exists)."""
        return {p.stem for p in (self.root / "scores").glob("*.json")}

    # ------------------------------------------------------------ one image

    def add(self, name: str, data: bytes, suffix: str, source: str, dets: Detections) -> None:
        """Store one image and all its boxes (with scores): image first, then the scores file that marks it done."""
        split = split_of(name)
        rel = f"images/{split}/{name}{suffix}"
        atomic_write_bytes(self.root / rel, data)
        h, w = (int(v) for v in dets.image_size)
        record = {"file": rel, "source": source, "width": w, "height": h,
                  "boxes": np.round(dets.boxes_xyxy.astype(np.float64), 2).tolist(),
                  "scores": np.round(dets.scores.astype(np.float64), 5).tolist(),
                  "labels": dets.labels.astype(int).tolist()}
        atomic_write_text(self.root / "scores" / f"{name}.json", json.dumps(record))

    # ------------------------------------------------------------ reading back

    def records(self) -> Dict[str, Dict[str, Any]]:
        """name -> scores record, for every labelled image, sorted by name."""
        out = {}
        for p in sorted((self.root / "scores").glob("*.json")):
            out[p.stem] = json.loads(p.read_text())
        return out

    # ------------------------------------------------------------ the files built from the scores

    def write_labels(self, records: Dict[str, Dict[str, Any]], names: Sequence[str], threshold: float) -> Dict[str, int]:
        """YOLO labels, COCO JSON and data.yaml at `threshold` -> boxes per class name."""
        per_class = {n: 0 for n in names}
        images, annotations = [], []
        for image_id, (name, r) in enumerate(records.items(), 1):
            w, h = r["width"], r["height"]
            lines = []
            images.append({"id": image_id, "file_name": r["file"], "width": w, "height": h})
            for (x0, y0, x1, y1), score, label in zip(r["boxes"], r["scores"], r["labels"]):
                if score < threshold:
                    continue
                per_class[names[label]] += 1
                lines.append(f"{label} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                    "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                                    "area": round((x1 - x0) * (y1 - y0), 2), "iscrowd": 0, "score": score})
            split = r["file"].split("/")[1]
            atomic_write_text(self.root / "labels" / split / f"{name}.txt", "".join(line + "\n" for line in lines))
        coco = {"images": images, "annotations": annotations,
                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
                "info": {"description": "edgedet label", "score_threshold": threshold}}
        atomic_write_text(self.root / "annotations.json", json.dumps(coco))
        # Ultralytics' data.yaml, relative to this file: the folder can be moved or copied whole.
        yaml_names = "".join(f"  {i}: {json.dumps(n)}\n" for i, n in enumerate(names))
        atomic_write_text(self.root / "data.yaml", f"path: .\ntrain: images/train\nval: images/val\nnames:\n{yaml_names}")
        return per_class

    def write_contact_sheet(self, records: Dict[str, Dict[str, Any]], names: Sequence[str], threshold: float,
                            count: int = SHEET_IMAGES) -> Optional[Path]:
        """A sample of the labelled images (evenly over the sorted names) with their boxes drawn."""
        import cv2

        from runtime.draw import contact_sheet, draw

        keys = list(records)
        if not keys:
            return None
        picks = sorted(set(np.linspace(0, len(keys) - 1, min(count, len(keys))).round().astype(int).tolist()))
        tiles = []
        for i in picks:
            r = records[keys[i]]
            image = cv2.imread(str(self.root / r["file"]), cv2.IMREAD_COLOR)
            if image is None:
                continue
            dets = detections_of(r, names).filter(min_score=threshold)
            tiles.append(draw(image, dets))
        if not tiles:
            return None
        path = self.root / "contact_sheet.png"
        ok, buf = cv2.imencode(".png", contact_sheet(tiles, cols=4))
        atomic_write_bytes(path, buf.tobytes())
        return path


def detections_of(record: Dict[str, Any], names: Sequence[str]) -> Detections:
    """A scores record -> Detections in image pixels."""
    return Detections(np.asarray(record["boxes"], np.float32).reshape(-1, 4), np.asarray(record["scores"], np.float32),
                      np.asarray(record["labels"], np.int64), tuple(names), (record["height"], record["width"]))


__all__ = ["LabelDataset", "LabelOutputError", "detections_of", "split_of", "MARKER"]
