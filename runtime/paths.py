"""Output paths: fresh numbered run folders, and a refusal to write over an input.

Torch-free and dependency-free, so every command (runtime, edgedet, converters) can share it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Union

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


def refuse_input_overwrite(output: PathLike, inputs: Iterable[PathLike]) -> None:
    """Raise ValueError when `output` resolves to one of `inputs` (or into an input folder's files)."""
    out = Path(output).expanduser().resolve()
    for item in inputs:
        if item is None:
            continue
        src = Path(item).expanduser()
        if not src.exists():
            continue
        src = src.resolve()
        if out == src:
            raise ValueError(f"output {output} is the input {item}: choose another output path; inputs are never overwritten")
        if src.is_dir() and out.parent == src and out.exists():
            raise ValueError(f"output {output} would replace a file of the input folder {item}: write elsewhere")


__all__ = ["next_run_dir", "refuse_input_overwrite"]
