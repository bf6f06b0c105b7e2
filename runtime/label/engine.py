"""The prompted detector `edgedet label` runs: which artifacts, which prompts, built once per worker.

`--model` may be the export folder of `export_prompted` (or `edgedet export` of a trex model), its
detector artifact (the prompt encoder is found beside it, or given with --prompt-encoder), or a trex
checkpoint (.pth), exported once to ONNX into the data set's cache by the converters' plug-in.
`EngineSpec` is what a worker needs to build its own engine (paths and the encoded prompts as bytes):
small and picklable, so Ray actors build one engine each from it.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from runtime.models import ARTIFACT_SUFFIXES, is_checkpoint, plugin

ENCODER_STEM, DETECTOR_STEM = "trex-prompt-encoder", "trex-detector"
SCORING_FLOOR = 0.05  # boxes kept in the scores sidecar: any later threshold at or above it needs no re-run
DEDUP_IOU = 0.7  # near-copies of a box of the same prompt (a small DETR's second query on one object)
DYNAMIC_BATCH = 8  # images per engine call for an artifact with a dynamic batch


def find_artifacts(model: str, prompt_encoder: Optional[str], cache: Path) -> Tuple[Path, Path]:
    """--model (and --prompt-encoder) -> (prompt encoder artifact, detector artifact)."""
    path = Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model not found: {model} (pass a prompted export folder, its {DETECTOR_STEM} artifact "
                                "or a trex .pth checkpoint)")
    if path.is_dir():
        for suffix in ARTIFACT_SUFFIXES:
            det, enc = path / f"{DETECTOR_STEM}{suffix}", path / f"{ENCODER_STEM}{suffix}"
            if det.is_file():
                encoder = Path(prompt_encoder) if prompt_encoder else enc
                if not encoder.is_file():
                    raise FileNotFoundError(f"{path} has {det.name} but no {enc.name}; pass --prompt-encoder")
                return encoder, det
        raise FileNotFoundError(f"{path} holds no prompted export ({DETECTOR_STEM}.onnx/.xml/.engine): export a trex "
                                "model with converters.prompted.export_prompted, or pass its .pth checkpoint")
    if is_checkpoint(path):
        if prompt_encoder:
            raise ValueError("--prompt-encoder goes with an exported detector artifact, not with a checkpoint")
        export = plugin("prompted_export", "labelling with a PyTorch checkpoint exports it first, which needs the convert "
                        "extra (or export it with converters.prompted.export_prompted and pass the folder)", "convert")
        encoder, detector = export(path, cache)
        return Path(encoder), Path(detector)
    if path.suffix.lower() not in ARTIFACT_SUFFIXES:
        raise ValueError(f"unknown model file kind '{path.name}': pass a prompted export folder, its {DETECTOR_STEM} "
                         "artifact or a trex .pth checkpoint")
    if prompt_encoder:
        return Path(prompt_encoder), path
    beside = path.with_name(path.name.replace(DETECTOR_STEM, ENCODER_STEM))
    if beside == path or not beside.is_file():
        raise FileNotFoundError(f"no prompt encoder beside {path.name} (expected {ENCODER_STEM}{path.suffix}); pass --prompt-encoder")
    return beside, path


def parse_boxes(values: Sequence[str]) -> np.ndarray:
    """["x1,y1,x2,y2", ...] (pixels) -> [n, 4] float32."""
    boxes = []
    for v in values:
        try:
            box = [float(p) for p in v.replace(" ", "").split(",")]
        except ValueError:
            box = []
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"--boxes takes x1,y1,x2,y2 in pixels of the prompt image with x2 > x1 and y2 > y1, got {v!r}")
        boxes.append(box)
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def box_names(names: Sequence[str], count: int) -> Optional[list]:
    if not names:
        return None
    if len(names) not in (1, count):
        raise ValueError(f"--names takes one name per box or one for all; got {len(names)} names for {count} boxes")
    return list(names) * count if len(names) == 1 else list(names)


@dataclass
class EngineSpec:
    """Everything a worker needs to build the same engine: artifact paths, runtime options, the prompts (.npz bytes)."""

    encoder: str
    detector: str
    prompts_npz: bytes
    backend: str = "auto"
    device: str = "CPU"
    floor: float = SCORING_FLOOR
    dedup_iou: Optional[float] = DEDUP_IOU

    def build(self, threads: int = 0) -> Any:
        """A PromptedDetector with these prompts, keeping every box down to the floor (threads: 0 = the backend's default)."""
        from runtime.prompted import PromptedDetector

        options = {"threads": threads} if threads else {}
        det = PromptedDetector(self.encoder, self.detector, backend=self.backend, device=self.device, conf=self.floor,
                               dedup_iou=self.dedup_iou, **options)
        fd, tmp = tempfile.mkstemp(suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.prompts_npz)
            det.load_prompts(tmp)
        finally:
            os.unlink(tmp)
        return det

    def batch_size(self) -> int:
        """Images per engine call as the detector artifact declares it (dynamic: DYNAMIC_BATCH)."""
        from runtime.manifest import read_sidecar

        manifest = read_sidecar(Path(self.detector))
        batch = int(manifest.batch) if manifest is not None else 1
        return batch if batch > 0 else DYNAMIC_BATCH

    @property
    def prompts_sha(self) -> str:
        """A digest of the prompt embeddings (resuming checks that the prompts are the same)."""
        with np.load(io.BytesIO(self.prompts_npz)) as data:
            return hashlib.sha256(np.ascontiguousarray(data["embeddings"], np.float32).round(5).tobytes()).hexdigest()[:16]


def prompts_bytes(detector: Any) -> bytes:
    """The detector's current prompts as the bytes of a prompts .npz."""
    with tempfile.TemporaryDirectory() as tmp:
        return Path(detector.save_prompts(Path(tmp) / "prompts.npz")).read_bytes()


__all__ = ["find_artifacts", "parse_boxes", "box_names", "EngineSpec", "prompts_bytes", "SCORING_FLOOR", "DEDUP_IOU"]
