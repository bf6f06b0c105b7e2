"""Multi-process training with torch.distributed: init from torchrun's env vars, DDP, reductions.

Launch: `torchrun --nproc_per_node N -m edgedet.cli train ...`. Without those env vars every
helper degrades to single-process behaviour.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the process group described by RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun).

    gloo on CPU, nccl on CUDA (each process takes GPU `LOCAL_RANK`). Idempotent.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        log.debug("rank %d/%d joined the %s process group", rank, world, backend)
    return DistInfo(rank, world, local)


def check_device(device: str) -> torch.device:
    """torch.device(device), refusing in one line a CUDA device this PyTorch cannot use."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device '{device}'; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device '{device}': this PyTorch sees no CUDA GPU (CPU-only build, or no driver); "
                             "use --device cpu, or install a CUDA build of PyTorch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device '{device}': only {torch.cuda.device_count()} CUDA GPU(s) here; use cuda:0 ...")
    return dev


def device_for(info: DistInfo, device: str) -> torch.device:
    """cuda -> this process's GPU; anything else unchanged."""
    check_device(device)
    if device.startswith("cuda") and info.enabled:
        return torch.device("cuda", info.local_rank)
    return torch.device(device)


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP-wrap when distributed. Some families leave parameters unused in a step (e.g. denoising
    embeddings), so unused parameters are tolerated."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over processes (a copy; `t` itself is left alone)."""
    t = t.detach().clone()
    if world_size() > 1:
        dist.all_reduce(t)
        t /= world_size()
    return t


def reduce_dict(values: Dict[str, float], device: torch.device) -> Dict[str, float]:
    """Mean of each float over processes (same keys on every rank)."""
    if world_size() == 1 or not values:
        return dict(values)
    keys = sorted(values)
    t = all_reduce_mean(torch.tensor([float(values[k]) for k in keys], device=device, dtype=torch.float64))
    return dict(zip(keys, t.tolist()))


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any (e.g. one rank ran out of time budget)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj: Any) -> List[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] without DDP)."""
    if world_size() == 1:
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["DistInfo", "init_distributed", "device_for", "wrap_model", "is_main_process", "world_size", "barrier",
           "all_reduce_mean", "reduce_dict", "any_process", "gather_objects", "cleanup"]
