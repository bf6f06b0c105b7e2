"""Reading third-party checkpoints without executing their pickles.

Owns `safe_torch_load`: `torch.load(weights_only=True)` with exactly one extra allow-listed
global, `argparse.Namespace` (the official DETR-family training scripts pickle their `args`
as one). A file that needs any other global is refused with an error naming the globals:
unpickling arbitrary classes can run arbitrary code.
"""
from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any, List, Union

import torch

ALLOWED_GLOBALS = (argparse.Namespace,)


class UnsafeCheckpointError(ValueError):
    """The checkpoint's pickle references a global we will not import or call."""


def _qualname(obj: type) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _unsafe_globals(path: Path, message: str) -> List[str]:
    """Names of the globals the file needs beyond torch's defaults and our allow-list."""
    allowed = {_qualname(g) for g in ALLOWED_GLOBALS}
    names: List[str] = []
    try:  # lists every offending global, but reads only the zip format
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) files: the unpickler's message names the first one
        pass
    if not names:
        names = re.findall(r"GLOBAL ([\w.]+) was not an allowed global", message)
    return [n for n in names if n not in allowed]


def safe_torch_load(path: Union[str, Path]) -> Any:
    """Load a `torch.save` file on the CPU with `weights_only=True` (+ argparse.Namespace).

    Raises FileNotFoundError for a missing file, UnsafeCheckpointError when the pickle needs a
    global that is not allow-listed, ValueError when the file is not a torch checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(p, str(e))
        if not names:  # a broken or foreign file rather than a forbidden class (never echo torch's weights_only=False advice)
            raise ValueError(not_a_checkpoint(p)) from None
        raise UnsafeCheckpointError(
            f"refusing to load {p}: its pickle needs the global(s) {', '.join(names)}, and edgedet does not "
            "execute arbitrary pickles (only tensors, containers and argparse.Namespace are allowed). "
            "If you trust the file, re-save it as {'model': state_dict, 'args': dict} and load that."
        ) from None
    except Exception as e:  # torch raises RuntimeError, KeyError, EOFError... for foreign bytes
        raise ValueError(not_a_checkpoint(p, str(e))) from None


def not_a_checkpoint(path: Path, reason: str = "") -> str:
    """The one-line answer to bytes torch cannot read (PyTorch's own text suggests weights_only=False: never that)."""
    size = path.stat().st_size if path.is_file() else 0
    if "central directory" in reason:
        # A torch.save zip ends with its directory: the file stops before the end its format needs.
        return (f"{path} is truncated: {size:,} bytes on disk, but a PyTorch checkpoint's zip archive ends with a "
                "directory that is missing here (an interrupted download or copy); fetch the file again")
    return (f"{path} ({size:,} bytes) is not a PyTorch checkpoint (corrupt, truncated, or another kind of file); "
            "pass the .pth written by the official repository or by `edgedet train`")
