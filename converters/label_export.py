"""The `prompted_export` plug-in of `edgedet label --model CHECKPOINT.pth`: export a trex checkpoint once.

The runtime labels with exported artifacts only (torch-free); a checkpoint is exported to ONNX into
`cache/<sha>-...` on first use and reused while its files exist. The embedded prompted model keeps
the demo's input (256x448, stretched: it was trained on whole frames of that aspect); any other
checkpoint gets the size `edgedet export` picks for it, letterboxed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union


def export_for_labelling(checkpoint: Union[str, Path], cache: Union[str, Path]) -> Tuple[Path, Path]:
    """-> (prompt encoder .onnx, detector .onnx), exported once per checkpoint content."""
    from converters.demo_video import cached_artifacts, file_digest
    from converters.demo_prompted import PROMPTED_CHECKPOINT, export_prompted_demo_model

    checkpoint, cache = Path(checkpoint), Path(cache)
    if checkpoint.resolve() == PROMPTED_CHECKPOINT.resolve() or file_digest(checkpoint) == file_digest(PROMPTED_CHECKPOINT):
        return tuple(export_prompted_demo_model(checkpoint, cache, "onnx"))

    def build():
        from converters.api import resolve_model
        from converters.prompted import export_prompted
        from edgedet.data.export_size import default_imgsz

        model, experiment = resolve_model(checkpoint)
        imgsz, _ = default_imgsz(experiment)
        return export_prompted(model, cache / "model" / tag, format="onnx", imgsz=imgsz, experiment=experiment,
                               overwrite=True)  # our own cache folder

    tag = f"{file_digest(checkpoint)}-prompted-onnx"
    encoder, detector = cached_artifacts(cache / "model" / f"{tag}.json", build)
    return encoder, detector


__all__ = ["export_for_labelling"]
