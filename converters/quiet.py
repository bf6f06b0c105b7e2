"""Quiet by default: known, harmless messages of the libraries we drive go to the debug log (`-v`).

torch's ONNX exporter prints a C++ warning per fused MSDA node ("shape inference of
edgedet::MultiScaleDeformableAttention type is missing") although the symbolic sets the output
type; it writes to the process's stderr from C++, past Python's `warnings`, so it is filtered there.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Iterator, Sequence

log = logging.getLogger(__name__)

TORCH_EXPORT_NOISE = ("The shape inference of edgedet::", "shape_type_inference.cpp")


def verbose() -> bool:
    return logging.getLogger().isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def filtered_stderr(drop: Sequence[str] = TORCH_EXPORT_NOISE) -> Iterator[None]:
    """Collect what C/C++ code writes to fd 2 inside the block; re-emit lines not matching `drop` afterwards."""
    if verbose():
        yield
        return
    fd = 2  # C++ writes to the process's fd 2, whatever sys.stderr is (pytest, notebooks)
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except OSError:  # no fd 2 at all: nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            for line in text.splitlines(keepends=True):
                if any(d in line for d in drop):
                    log.debug("%s", line.rstrip())
                else:
                    sys.stderr.write(line)
            sys.stderr.flush()


@contextlib.contextmanager
def quiet_nncf() -> Iterator[None]:
    """Inside the block, NNCF is quiet unless -v: its ~100 INFO lines per INT8 model (ignored nodes, quantizer
    choices) become warnings only, and its progress bars ("Statistics collection", "Applying Fast Bias
    correction", drawn by rich on the console whatever the log level) are not drawn."""
    if verbose():
        yield
        return
    import nncf
    from nncf.common.logging.track_progress import track

    nncf.set_log_level(logging.WARNING)
    original = track.__init__

    def silent_init(self, *args, **kwargs):  # every NNCF bar is a `track`; `disable` is its own switch
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    track.__init__ = silent_init
    try:
        yield
    finally:
        track.__init__ = original


__all__ = ["filtered_stderr", "quiet_nncf", "verbose"]
