"""`CheckpointDetector`: a PyTorch checkpoint behind the runtime `Detector` interface.

It feeds the model exactly what an export at `imgsz` would be fed (the runtime's letterbox
`Preprocessor` with the manifest `converters.export` writes for that size, and for families trained
with a padding mask the same mask the exported graph builds from the valid region) and decodes the raw
heads with the runtime's top-K postprocessing, so a checkpoint and its engines are scored on
identical inputs. Registered for the runtime as the `checkpoint_detector` plug-in.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from edgedet.data.export_size import FALLBACK_IMGSZ, default_imgsz
from edgedet.nn.padding_mask import forward_letterboxed, uses_padding_mask
from runtime.defaults import defaults_note, resolve_conf, resolve_dedup_iou
from runtime.manifest import Manifest, OutputSpec, PreprocessSpec
from runtime.postprocess import Postprocessor
from runtime.preprocess import Preprocessor, valid_region
from runtime.types import Detections

log = logging.getLogger(__name__)

DEFAULT_IMGSZ = FALLBACK_IMGSZ  # `edgedet export`'s input when the checkpoint carries no training config


def load_checkpoint_model(path: Union[str, Path]) -> Tuple[torch.nn.Module, dict]:
    """Our checkpoint or an official one -> (deployable model in eval mode, experiment config dict or {})."""
    from edgedet.engine.checkpoint import CheckpointError, IncompleteCheckpointError, load_checkpoint, load_model

    try:
        ckpt = load_checkpoint(path)
    except IncompleteCheckpointError:  # ours, lacking an entry: its own message, not the official loader's
        raise
    except CheckpointError:
        from edgedet.checkpoints import load_official

        model, config = load_official(str(path)), {}
    else:
        model, config = load_model(str(path)), dict(ckpt.get("config") or {})
    to_base = getattr(model, "to_base_model", None)  # Co-DETR: drop the training-only heads, as export does
    return (to_base() if callable(to_base) else model).eval(), config


def checkpoint_manifest(model: torch.nn.Module, experiment: dict, imgsz: Sequence[int], top_k: int = 100) -> Manifest:
    """The manifest an export at `imgsz` declares, with the raw-head output layout."""
    config = getattr(model, "config", None)
    data = experiment.get("data") or {}
    pre = PreprocessSpec(size=(int(imgsz[0]), int(imgsz[1])))
    if data.get("mean") and data.get("std"):
        pre = PreprocessSpec(size=pre.size, mean=tuple(data["mean"]), std=tuple(data["std"]))
    elif getattr(model, "input_mean", None) is not None:  # the family's own preprocessing (RT-DETR: /255 only)
        pre = PreprocessSpec(size=pre.size, mean=tuple(model.input_mean), std=tuple(model.input_std))
    outputs = OutputSpec(postprocess=False, names=["pred_logits", "pred_boxes"],
                         score_activation=getattr(model, "score_activation", "softmax"), top_k=top_k)
    masked = uses_padding_mask(model)
    return Manifest(family=getattr(config, "name", "") or type(model).__name__,
                    class_names=list(getattr(config, "class_names", None) or []), preprocess=pre, outputs=outputs,
                    backend="pytorch", batch=0, valid_input="valid_hw" if masked else "")


class TorchDetector:
    """A PyTorch detector fed exactly as its export at `manifest.preprocess.size` would be (letterbox, and the
    padding mask rebuilt from the valid region for mask-trained families), decoded by the runtime."""

    def __init__(self, model: torch.nn.Module, manifest: Manifest, conf: Optional[float] = None,
                 classes: Optional[Iterable[int]] = None, device: str = "cpu", artifact: Union[str, Path, None] = None,
                 dedup_iou: Optional[float] = None):
        self.artifact = Path(artifact or type(model).__name__)
        self.model, self.manifest = model, manifest
        self.device = torch.device(device)
        self.model.to(self.device)
        self.conf = resolve_conf(conf, manifest)  # None: the manifest's (a checkpoint's: the documented fallback)
        self.defaults_note = defaults_note(conf, dedup_iou, manifest)
        self.preprocessor = Preprocessor(self.manifest.preprocess)
        self.postprocessor = Postprocessor(self.manifest.outputs, self.manifest.preprocess.size,
                                           self.manifest.class_names, self.conf, classes,
                                           resolve_dedup_iou(dedup_iou, manifest),
                                           boxes_in_valid_region=bool(self.manifest.valid_input))
        self.max_batch = 0
        self.backend_name = "pytorch"

    @property
    def class_names(self) -> Tuple[str, ...]:
        return tuple(self.manifest.class_names)

    @property
    def input_size(self) -> Tuple[int, int]:
        return tuple(self.manifest.preprocess.size)

    def __call__(self, frame_bgr: np.ndarray) -> Detections:
        return self.batch([frame_bgr])[0]

    @torch.inference_mode()
    def batch(self, frames: Sequence[np.ndarray]) -> List[Detections]:
        t0 = time.perf_counter()
        x, infos = self.preprocessor(list(frames))
        t1 = time.perf_counter()
        images = torch.from_numpy(x).to(self.device)
        if self.manifest.valid_input:  # the padding mask, as the exported graph rebuilds it from valid_hw
            valid = torch.from_numpy(valid_region(infos, self.manifest.preprocess.size)).to(self.device)
            out = forward_letterboxed(self.model, images, valid)
        else:
            out = self.model(images)
        outputs = {k: out[k].float().cpu().numpy() for k in ("pred_logits", "pred_boxes")}
        t2 = time.perf_counter()
        dets = self.postprocessor(outputs, infos)
        t3 = time.perf_counter()
        for d in dets:
            d.timings_ms.update({"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3})
        return dets

    def close(self) -> None:
        pass

    def __enter__(self) -> "CheckpointDetector":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.artifact.name}, backend=pytorch, family={self.manifest.family or '?'}, "
                f"input={self.input_size}, classes={len(self.class_names)})")


class CheckpointDetector(TorchDetector):
    """path: checkpoint; imgsz (H, W): the export input to reproduce (default: the size `edgedet export` picks
    for this checkpoint, from its training data)."""

    def __init__(self, path: Union[str, Path], imgsz: Optional[Sequence[int]] = None, conf: Optional[float] = None,
                 classes: Optional[Iterable[int]] = None, device: str = "cpu", top_k: int = 100,
                 dedup_iou: Optional[float] = None):
        model, experiment = load_checkpoint_model(path)
        if imgsz is None:
            imgsz, why = default_imgsz(experiment)
            log.info("checkpoint scored at imgsz %dx%d (H x W), the size `edgedet export` picks: %s; "
                     "pass --imgsz H W to match another export", imgsz[0], imgsz[1], why)
        from edgedet.data.padding import check_input_size

        check_input_size(model, imgsz)  # RT-DETR / D-FINE: sides divisible by 32, as an export would need
        super().__init__(model, checkpoint_manifest(model, experiment, imgsz, top_k), conf, classes, device, path, dedup_iou)


__all__ = ["CheckpointDetector", "TorchDetector", "checkpoint_manifest", "load_checkpoint_model", "DEFAULT_IMGSZ"]
