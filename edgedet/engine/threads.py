"""How many CPU threads a torch job should use: not more than the cores nobody else is using.

Measured on the 2-core machine with other jobs running: default torch threads made training 2.6x and
evaluation 8x slower than one thread (threads spin-wait for a core someone else holds).
"""
from __future__ import annotations

import os
from typing import Tuple


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(processes: int = 1) -> Tuple[int, str]:
    """(threads per process, why): the cores left free by the 1-minute load average, shared by `processes`."""
    cores = _cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    free = max(1, int(cores - load + 0.5))
    n = max(1, min(cores, free) // max(1, processes))
    return n, f"{cores} cores, load {load:.1f}"


def set_threads(requested: int, processes: int = 1) -> str:
    """Set torch's intra-op threads (0 = `default_threads`); -> the line to print."""
    import torch

    if requested < 0:
        raise ValueError(f"--threads must be >= 0 (0 = automatic), got {requested}")
    if requested:
        n, why = requested, "--threads"
    else:
        n, why = default_threads(processes)
        env = os.environ.get("OMP_NUM_THREADS", "")
        if env.isdigit() and int(env) > 0:
            n, why = int(env), "OMP_NUM_THREADS"
    torch.set_num_threads(n)
    return f"threads: {n} ({why}; --threads N to change)"


__all__ = ["default_threads", "set_threads"]
