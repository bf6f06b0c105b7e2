"""Compile the tests' small host programs once, cached by content under the temp directory.

A build is keyed by its command and the bytes of every file it depends on, so a run after an edit
recompiles and a second run (or a second test session) reuses the library. A failed compile raises
AssertionError with the compiler's message: where the compiler exists, a build error is a bug.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
KERNEL_DIR = REPO / "edgedet" / "ops" / "csrc"
PLUGIN_DIR = REPO / "converters" / "tensorrt" / "plugins" / "msda"
TEST_CSRC = Path(__file__).resolve().parent / "csrc"
CACHE = Path(tempfile.gettempdir()) / "edgedet-host-builds"


def cuda_home() -> Optional[Path]:
    """The CUDA toolkit holding include/cuda_fp16.h (CUDA_HOME, CUDA_PATH, /usr/local/cuda), or None."""
    for c in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if c and (Path(c) / "include" / "cuda_fp16.h").is_file():
            return Path(c)
    return None


def files_under(*dirs: Path) -> List[Path]:
    return sorted(p for d in dirs for p in d.rglob("*") if p.is_file() and p.suffix in (".h", ".cuh", ".cu", ".cpp"))


def cached_build(name: str, command: Sequence[str], inputs: Iterable[Path]) -> Path:
    """Run `command` (with "{out}" standing for the output path) unless its output is cached."""
    digest = hashlib.sha256("\0".join(command).encode())
    for p in sorted(set(inputs)):
        digest.update(str(p).encode() + b"\0" + p.read_bytes())
    stem, dot, suffix = name.partition(".")
    out = CACHE / f"{stem}-{digest.hexdigest()[:16]}{dot}{suffix}"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=CACHE, prefix=f".{name}-"))
    try:
        target = work / out.name
        proc = subprocess.run([a.replace("{out}", str(target)) for a in command], capture_output=True, text=True,
                              cwd=work)
        assert proc.returncode == 0, f"{name} failed to build:\n{' '.join(command)}\n{proc.stderr[-4000:]}"
        os.replace(target, out)  # atomic: a concurrent session sees the whole file or none
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
