"""`--save PATH`: the kind of output follows the path, as users expect from Ultralytics-style tools.

    pred.jpg / pred.png ...  -> one annotated image (a source of one image)
    out/  (or an existing folder, or a name without suffix) -> one annotated image per input frame, named after
                             its input file; an existing file there is never overwritten
    (folders in the path that do not exist yet are created)
    out.mp4 / out.avi ...    -> a video; every frame letterboxed to the first frame's size
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2

from runtime.capture import IMAGE_SUFFIXES
from runtime.draw import draw
from runtime.pipeline import Result
from runtime.sinks import VideoSink

VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


class ImageSink:
    """Writes the one annotated frame of a single-image source to `path`; a second frame is an error
    (never silently dropped): save many frames to a folder or a video."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        self.frames = 0

    def __call__(self, result: Result) -> None:
        if self.frames:
            raise ValueError(f"--save {self.path} is one image but the source gives more than one frame; "
                             f"save to a folder (e.g. {self.path.with_suffix('')}/) or a video (.mp4)")
        if not cv2.imwrite(str(self.path), draw(result.frame.image, result.detections)):
            raise RuntimeError(f"OpenCV could not write {self.path}")
        self.frames += 1


class ImageFolderSink:
    """One annotated image per frame in `folder` (created if missing), named after the input file when known,
    else frame_000123.jpg. Never writes over a file already there: refused before the first frame when the
    names are known, else at the frame that would."""

    def __init__(self, folder: Union[str, Path], names: Optional[Sequence[str]] = None, suffix: str = ".jpg"):
        self.folder = Path(folder)
        self.names, self.suffix, self.frames = list(names or []), suffix, 0
        for name in self.names:
            _refuse_existing(self.folder / name)
        self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, result: Result) -> None:
        i = result.frame.index
        file = getattr(result.frame, "file", None)
        name = file or (self.names[i] if i < len(self.names) else f"frame_{i:06d}{self.suffix}")
        path = self.folder / name
        if file is None or name not in self.names:  # names known up front were checked already
            _refuse_existing(path)
        if not cv2.imwrite(str(path), draw(result.frame.image, result.detections)):
            raise RuntimeError(f"OpenCV could not write {path}")
        self.frames += 1


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise FileExistsError(f"--save would overwrite {path}; choose an empty or new --save folder, or remove that file")


def save_kind(path: Union[str, Path]) -> str:
    """"image", "folder" or "video" for a `--save` path."""
    text, p = str(path), Path(path)
    suffix = p.suffix.lower()
    if text.endswith(("/", "\\")) or p.is_dir() or not suffix:
        return "folder"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_FOURCC:
        return "video"
    raise ValueError(f"--save {path}: unknown output kind '{suffix}'; use an image ({', '.join(IMAGE_SUFFIXES)}), "
                     f"a video ({', '.join(VIDEO_FOURCC)}) or a folder (ending in /)")


def open_save_sink(path: Union[str, Path], source_spec: Any = None, fps: float = 30.0) -> Any:
    """The sink `--save path` asks for. source_spec (what --source named) gives output file names for a
    folder of images and guards the inputs: a folder sink never writes into the folder it reads."""
    kind = save_kind(path)
    if kind != "folder":  # a folder that does not exist yet is created, as for folder output
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    src = Path(source_spec) if isinstance(source_spec, (str, Path)) and Path(str(source_spec)).exists() else None
    if kind == "image":
        if src is not None and src.is_dir():
            raise ValueError(f"--save {path} is one image but --source {source_spec} is a folder; save to a folder "
                             f"(e.g. {Path(path).with_suffix('')}/) or a video (.mp4)")
        if src is not None and src.resolve() == Path(path).resolve():
            raise ValueError(f"--save {path} would overwrite the input image; choose another name")
        return ImageSink(path)
    if kind == "folder":
        names = None
        if src is not None and src.is_dir():
            if src.resolve() == Path(path).resolve():
                raise ValueError(f"--save {path} is the input folder: the annotated images would overwrite the inputs; "
                                 "choose another folder")
            from runtime.capture import image_files

            names = [p.name for p in image_files(src)]
        elif src is not None and src.suffix.lower() in IMAGE_SUFFIXES:
            names = [src.name]
        return ImageFolderSink(path, names)
    suffix = Path(path).suffix.lower()
    return VideoSink(path, fps=fps, fourcc=VIDEO_FOURCC[suffix])


__all__ = ["ImageSink", "ImageFolderSink", "open_save_sink", "save_kind"]
