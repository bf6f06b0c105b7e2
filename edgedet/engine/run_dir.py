"""Training run folders and their metrics file: an earlier run's results are never deleted.

`prepare_run_dir` picks the folder a run writes: the requested one when it holds no earlier run,
else the next free numbered sibling (`runs/train/exp` -> `exp2`, `exp3`, ... as Ultralytics
does), the same folder with `exist_ok`, or the folder being resumed. `write_metrics_row` keeps
`metrics.jsonl` at one row per epoch, rewritten atomically, so a resumed run never duplicates rows.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Union

log = logging.getLogger(__name__)
PathLike = Union[str, Path]
RUN_FILES = ("last.pth", "best.pth", "metrics.jsonl")  # their presence marks a folder as holding a run


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES)


def next_free_dir(folder: Path) -> Path:
    """`exp` -> `exp2`, `exp2` -> `exp3` ...: the first sibling that holds no run."""
    match = re.fullmatch(r"(.*?)(\d*)", folder.name)
    stem, n = match.group(1) or folder.name, int(match.group(2) or 1)
    while True:
        n += 1
        candidate = folder.with_name(f"{stem}{n}")
        if not holds_run(candidate):
            return candidate


def prepare_run_dir(folder: PathLike, resume: bool = False, exist_ok: bool = False) -> Path:
    """The folder this run writes into (created). Never deletes anything."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"train output {folder} is a file; pass a folder (--output runs/train/exp)")
    if holds_run(folder) and not (resume or exist_ok):
        new = next_free_dir(folder)
        log.info("%s holds an earlier run (kept): writing this one to %s (--exist-ok writes into %s, "
                 "--resume %s continues it)", folder, new, folder, folder / "last.pth")
        folder = new
    from runtime.safety import check_writable_folder

    return check_writable_folder(folder, what="train output folder")


def read_metrics_rows(path: PathLike) -> List[Dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill -9 of an older version
            log.warning("ignoring a torn line in %s", path)
    return rows


def _write_rows(path: Path, rows: List[Dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_metrics_row(path: PathLike, row: Dict[str, Any]) -> None:
    """Set the row of `row["epoch"]` (replacing an earlier one for that epoch, keeping epochs in order)."""
    path = Path(path)
    rows = [r for r in read_metrics_rows(path) if r.get("epoch") != row["epoch"]]
    rows.append(row)
    rows.sort(key=lambda r: r.get("epoch", -1))
    _write_rows(path, rows)


def truncate_metrics(path: PathLike, first_epoch: int) -> None:
    """Drop rows from `first_epoch` on: a resumed run redoes those epochs (a killed run may have logged them)."""
    path = Path(path)
    rows = read_metrics_rows(path)
    kept = [r for r in rows if r.get("epoch", -1) < first_epoch]
    if len(kept) != len(rows):
        log.info("%s: replacing %d row(s) from epoch %d on, which this resumed run redoes", path, len(rows) - len(kept),
                 first_epoch)
        _write_rows(path, kept)


__all__ = ["prepare_run_dir", "next_free_dir", "holds_run", "write_metrics_row", "truncate_metrics", "read_metrics_rows"]
