"""What `edgedet label` reads: image files, folders, globs and videos, as named work units.

Every image the data set will hold gets its name here, once, from the source alone (image files keep
their stem, a repeated stem gets `_2`, `_3`, ...; video frames are `<video stem>_<frame:06d>`), so a
re-run finds the same names and skips those already written. Videos are split into frame ranges
(`VIDEO_CHUNK` frames) that workers decode independently.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from runtime.capture import IMAGE_SUFFIXES
from runtime.commands.common import VIDEO_SUFFIXES
from runtime.image_io import read_image

VIDEO_CHUNK = 64  # frames per video work unit: long enough to amortise a seek, short enough to spread
FRAME_SUFFIX = ".jpg"  # extracted frames
FRAME_QUALITY = 95


@dataclass
class WorkUnit:
    """One image file, or a range of frames of one video (`frames`: the indices still to label)."""

    path: str
    names: List[str]  # the data-set name (stem) of each image in this unit
    frames: List[int] = field(default_factory=list)  # video only

    @property
    def is_video(self) -> bool:
        return bool(self.frames)


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _files(source: str) -> List[Path]:
    if _is_glob(source):
        files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"no files match {source}: check the pattern (quote it so the shell does not expand it)")
        return files
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"source not found: {source} (pass images, a folder, a quoted glob or a video file)")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts))
        if not files:
            raise FileNotFoundError(f"folder {source} is empty: put images or videos in it or pass another --source")
        return files
    return [path]


def video_frame_count(path: Path) -> int:
    """Frames in a video file: the container's count, checked by decoding when it gives none."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"OpenCV cannot open the video {path}: check the file (or convert it to .mp4)")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if count <= 0:
        while cap.grab():
            count += 1
    cap.release()
    return count


def plan_units(sources: Sequence[Union[str, Path]], every: int = 1) -> Tuple[List[WorkUnit], List[Path]]:
    """Sources -> (work units in a fixed order, files that are neither images nor videos).

    every: keep every Nth video frame (1 = all)."""
    if every < 1:
        raise ValueError(f"--every takes a positive number of frames, got {every}")
    units: List[WorkUnit] = []
    others: List[Path] = []
    used = set()

    def unique(stem: str) -> str:
        name, n = stem, 1
        while name in used:
            n += 1
            name = f"{stem}_{n}"
        used.add(name)
        return name

    for source in sources:
        for path in _files(str(source)):
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                units.append(WorkUnit(str(path), [unique(path.stem)]))
            elif suffix in VIDEO_SUFFIXES:
                indices = list(range(0, video_frame_count(path), every))
                stem = unique(path.stem)
                for start in range(0, len(indices), VIDEO_CHUNK):
                    chunk = indices[start:start + VIDEO_CHUNK]
                    units.append(WorkUnit(str(path), [f"{stem}_{i:06d}" for i in chunk], chunk))
            else:
                others.append(path)
    if not units:
        raise FileNotFoundError(f"no images ({'/'.join(IMAGE_SUFFIXES)}) or videos ({'/'.join(VIDEO_SUFFIXES)}) in "
                                f"{', '.join(map(str, sources))}: pass images, folders, globs or video files")
    return units, others


def pending(units: Sequence[WorkUnit], done: set) -> List[WorkUnit]:
    """The units with the images not in `done` (names) only; units left with nothing are dropped."""
    out = []
    for u in units:
        keep = [i for i, n in enumerate(u.names) if n not in done]
        if keep:
            out.append(WorkUnit(u.path, [u.names[i] for i in keep], [u.frames[i] for i in keep] if u.frames else []))
    return out


@dataclass
class SourceImage:
    """An image to label: its data-set name, decoded BGR pixels, and the bytes the data set stores."""

    name: str
    image: np.ndarray
    data: bytes
    suffix: str
    source: str


def read_unit(unit: WorkUnit, warn=print) -> Iterator[SourceImage]:
    """Decode a unit's images. Image files are stored byte for byte; frames are encoded as JPEG.
    A file OpenCV cannot decode is reported through `warn` and skipped."""
    if not unit.is_video:
        path = Path(unit.path)
        image, _ = read_image(path)
        if image is None:
            warn(f"skip {path}: OpenCV cannot decode it (corrupt or not an image)")
            return
        yield SourceImage(unit.names[0], image, path.read_bytes(), path.suffix.lower(), str(path))
        return
    cap = cv2.VideoCapture(unit.path)
    try:
        position: Optional[int] = None
        for name, index in zip(unit.names, unit.frames):
            if position != index:
                cap.set(cv2.CAP_PROP_POS_FRAMES, index)
                position = index
            ok, frame = cap.read()
            position += 1
            if not ok:
                warn(f"skip {unit.path} frame {index}: it does not decode (the video ends early or is damaged)")
                position = None
                continue
            ok, buf = cv2.imencode(FRAME_SUFFIX, frame, [cv2.IMWRITE_JPEG_QUALITY, FRAME_QUALITY])
            yield SourceImage(name, frame, buf.tobytes(), FRAME_SUFFIX, f"{unit.path}#{index}")
    finally:
        cap.release()


def first_image(units: Sequence[WorkUnit]) -> np.ndarray:
    """The first image of the first unit (what --boxes are drawn on unless --prompt-image is given)."""
    for unit in units:
        first = WorkUnit(unit.path, unit.names[:1], unit.frames[:1])
        for item in read_unit(first, warn=lambda text: None):
            return item.image
    raise FileNotFoundError("none of the sources decodes: pass readable images or videos")


__all__ = ["WorkUnit", "SourceImage", "plan_units", "pending", "read_unit", "first_image", "video_frame_count", "VIDEO_CHUNK"]
