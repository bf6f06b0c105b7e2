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
    if not names:  # zip: "GLOBAL x was not an allowed global"; legacy: "unsupported GLOBAL x whose module ..."
        names = re.findall(r"GLOBAL ([\w.]+)", message)
    return [n for n in names if n not in allowed]


def unsafe_globals_message(path: Path, error: BaseException) -> str:
    """The one-line refusal for a pickle that needs globals beyond the allow-list, or "" when `error` is
    not that (a broken or foreign file). Never echoes torch's advice to retry with weights_only=False."""
    if not isinstance(error, pickle.UnpicklingError):
        return ""
    names = _unsafe_globals(path, str(error))
    if not names:
        return ""
    return (f"refusing to load {path}: its pickle needs the global(s) {', '.join(names)}, and edgedet does not "
            "execute arbitrary pickles (only tensors, containers and argparse.Namespace are allowed). "
            "If you trust the file, re-save only its tensors (a state dict of tensors, with plain dicts, lists, "
            "numbers and strings around them) and load that.")


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
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, KeyError, EOFError... for foreign bytes
        refusal = unsafe_globals_message(p, e)
        if refusal:
            raise UnsafeCheckpointError(refusal) from None
        raise ValueError(not_a_checkpoint(p, str(e))) from None


def not_a_checkpoint(path: Path, reason: str = "") -> str:
    """The one-line answer to bytes torch cannot read (PyTorch's own text suggests weights_only=False: never that)."""
    size = path.stat().st_size if path.is_file() else 0
    if size == 0 and path.is_file():
        return f"{path} is empty (0 bytes): an interrupted copy or save; copy or save it again"
    if "central directory" in reason:
        # A torch.save zip ends with its directory: the file stops before the end its format needs.
        return (f"{path} is truncated: {size:,} bytes on disk, but a PyTorch checkpoint's zip archive ends with a "
                "directory that is missing here (an interrupted download or copy); fetch the file again")
    return (f"{path} ({size:,} bytes) is not a PyTorch checkpoint (corrupt, truncated, or another kind of file); "
            "pass the .pth written by the official repository or by `edgedet train`")
