"""Fresh numbered run folders (`runs/predict/1`, `runs/predict/2`, ...), as Ultralytics users expect.

Each folder is created with mkdir (never exist_ok), so a command writing only inside it can
neither overwrite an earlier run nor any input. Torch-free, so every package can share it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, Path]


def file_in_the_way(folder: PathLike) -> Optional[Path]:
    """The first existing part of `folder` (itself or a parent) that is a file, so no folder can be made there."""
    for part in reversed([Path(folder), *Path(folder).parents]):
        if part.exists() and not part.is_dir():
            return part
    return None


def folder_error_line(error: OSError) -> str:
    """A one-line message for making a folder where a file stands (mkdir's "[Errno 20] Not a directory")."""
    blocker = file_in_the_way(error.filename) if isinstance(error, (FileExistsError, NotADirectoryError)) and error.filename else None
    if blocker is None:
        return str(error)
    return f"cannot make the folder {error.filename}: {blocker} is a file, not a folder; pass a folder path instead"


def next_run_dir(root: PathLike = "runs", task: str = "predict") -> Path:
    """A new, empty `root/task/N` (N = 1 + the highest number there); created and returned."""
    base = Path(root) / task
    blocker = file_in_the_way(base)
    if blocker is not None:  # e.g. --project pointed at a model file: say so instead of "Not a directory"
        raise NotADirectoryError(f"cannot make the run folder {base}: {blocker} is a file, not a folder; "
                                 "pass a folder as --project (default runs)")
    base.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name) for p in base.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name)]
    n = max(taken, default=0) + 1
    while True:  # another process may take the same number: mkdir without exist_ok decides
        path = base / str(n)
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


__all__ = ["next_run_dir", "file_in_the_way", "folder_error_line"]
