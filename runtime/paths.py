"""Fresh numbered run folders (`runs/predict/1`, `runs/predict/2`, ...), as Ultralytics users expect.

Each folder is created with mkdir (never exist_ok), so a command writing only inside it can
neither overwrite an earlier run nor any input. Torch-free, so every package can share it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Union

PathLike = Union[str, Path]


def next_run_dir(root: PathLike = "runs", task: str = "predict") -> Path:
    """A new, empty `root/task/N` (N = 1 + the highest number there); created and returned."""
    base = Path(root) / task
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


__all__ = ["next_run_dir"]
