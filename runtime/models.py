"""`load_model(path)`: any model a user hands a command -> one callable detector.

Exported artifacts (.onnx, .xml, .engine) load as a `Detector`. Checkpoints (.pth, .pt) need
PyTorch: the training stack contributes their loader through the `edgedet.plugins` entry-point
group (name `checkpoint_detector`), so the runtime never imports it; without it the error says
which extra to install.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from runtime.detector import Detector
from runtime.environment import entry_points_in

ARTIFACT_SUFFIXES = (".onnx", ".xml", ".engine", ".plan")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
PLUGIN_GROUP = "edgedet.plugins"


def plugin(name: str, needs: str, extra: str) -> Any:
    """The object registered as `name` in the `edgedet.plugins` group; ImportError naming the extra to install."""
    found = [ep for ep in entry_points_in(PLUGIN_GROUP) if ep.name == name]
    if not found:
        raise ImportError(f"{needs}: pip install 'edgedet[{extra}]'")
    try:
        return found[0].load()
    except ImportError as e:
        raise ImportError(f"{needs} ({e}): pip install 'edgedet[{extra}]'") from None


def is_checkpoint(path: Union[str, Path]) -> bool:
    return Path(path).suffix.lower() in CHECKPOINT_SUFFIXES


def load_model(model: Union[str, Path, Any], imgsz: Optional[Sequence[int]] = None, conf: Optional[float] = None,
               classes: Optional[Iterable[int]] = None, backend: str = "auto", device: str = "CPU",
               dedup_iou: Optional[float] = None, **options: Any) -> Any:
    """A Detector (artifact) or checkpoint detector -> callable BGR frame -> Detections, with
    `class_names`, `input_size`, `manifest`, `batch(frames)` and `close()`.

    imgsz (H, W): checkpoints only; the letterbox input an export at that size would declare.
    conf / dedup_iou: None = the manifest's recommendation (`runtime.defaults`); the loaded detector's
    `defaults_note` says which values are in use and where they came from.
    An object that is already callable (a Detector) is returned as is.
    """
    if callable(model) and not isinstance(model, (str, Path)):
        return model
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {model} (pass an exported .onnx/.xml/.engine or a .pth checkpoint)")
    suffix = path.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        loader = plugin("checkpoint_detector", "loading a PyTorch checkpoint needs the training extra "
                        "(or export it with `edgedet export` and pass the artifact)", "train")
        return loader(path, imgsz=imgsz, conf=conf, classes=classes, device="cpu" if device == "CPU" else device,
                      dedup_iou=dedup_iou)
    if suffix not in ARTIFACT_SUFFIXES:
        raise ValueError(f"unknown model file kind '{path.name}': pass an exported artifact "
                         f"({', '.join(ARTIFACT_SUFFIXES)}) or a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
    if imgsz is not None:
        raise ValueError(f"--imgsz applies to checkpoints; {path.name} has the fixed input its manifest declares "
                         "(re-export at another size with `edgedet export --imgsz H W`)")
    return Detector(path, backend=backend, device=device, conf=conf, classes=classes, dedup_iou=dedup_iou, **options)


__all__ = ["load_model", "is_checkpoint", "plugin", "ARTIFACT_SUFFIXES", "CHECKPOINT_SUFFIXES"]
