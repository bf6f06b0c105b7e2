"""Atomic file writes: a write interrupted mid-way (power cut, Ctrl-C, a full disk) leaves the
previous file, or nothing, under the final name; never a truncated file that looks complete.

Every writer puts the data in a temporary name in the same folder, flushes it to disk (fsync),
renames it over the final name, and syncs the folder so the rename itself survives a power cut.
A running process that has the old file open or mapped (a loaded `.bin`, a custom-op `.so`) keeps
its own copy: the rename gives the path a new inode instead of rewriting the old one.

Torch-free, so the runtime and the converters share it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence, Union

PathLike = Union[str, Path]


def _fsync_file(path: PathLike) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: PathLike) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode(path: Path) -> int:
    """The mode the final file would get from a plain open(): its current one, else 0o666 less the umask
    (mkstemp's 0o600 would hide a model from the service account that runs it)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def temp_name(path: PathLike, suffix: str = "") -> Path:
    """A new empty file beside `path` (`.model.onnx.ab12cd.tmp<suffix>`), reserved for the caller to fill."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _default_mode(path))
    return Path(tmp)


@contextlib.contextmanager
def atomic_paths(paths: Sequence[PathLike], suffixes: Sequence[str] = ()) -> Iterator[list]:
    """Yield temporary paths, one per final path (same folder), for a library that writes files by name
    (onnx.save, openvino.save_model). On success each is fsynced and renamed over its final path in the
    given order (put the file that marks completion last); on failure the temporaries are removed and the
    final paths are untouched. `suffixes`: the suffix each temporary must end with (default: the final one's)."""
    finals = [Path(p) for p in paths]
    temps: list = []
    try:
        for i, p in enumerate(finals):
            temps.append(temp_name(p, suffixes[i] if i < len(suffixes) else p.suffix))
        yield temps
        for tmp in temps:
            _fsync_file(tmp)
        for tmp, final in zip(temps, finals):
            os.replace(tmp, final)
        for folder in {f.parent for f in finals}:
            fsync_folder(folder)
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """`atomic_paths` for one file."""
    with atomic_paths([path]) as temps:
        yield temps[0]


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(file)` on a temporary binary file beside `path`, then rename it over `path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_copy(src: PathLike, dst: PathLike) -> Path:
    """Copy `src` to `dst` (with its mode and times) without ever truncating `dst` in place: a process
    that has `dst` mapped (a loaded shared library) keeps running on the old file."""
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        shutil.copy2(src, tmp)
    return dst


__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_copy", "atomic_path", "atomic_paths",
           "fsync_folder", "temp_name"]
