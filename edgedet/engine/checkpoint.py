"""Training checkpoints: save, load (weights_only), resume state, and rebuilding a model from one.

Format (a dict saved with `torch.save`): format "edgedet-checkpoint-v1", model (state_dict),
config (plain dict of the ExperimentConfig), class_names, edgedet_version, epoch, metrics, ema.
`last.pth` adds what resuming needs: optimizer, scheduler, scaler, rng (python / numpy / torch /
cuda states), best_map. `best.pth` is lean: weights, EMA weights, config, metrics, best_map.
Every write is atomic and fsynced (`atomic_torch_save`).
Everything is tensors and plain Python values, so `torch.load(weights_only=True)` reads it.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from torch import nn

from edgedet.config import ExperimentConfig, experiment_from_dict, to_dict

log = logging.getLogger(__name__)
FORMAT = "edgedet-checkpoint-v1"
PathLike = Union[str, Path]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used here; the message says what to do."""


class IncompleteCheckpointError(CheckpointError):
    """An edgedet checkpoint (its format says so) that lacks an entry: never to be retried as an official one."""


# ---------------------------------------------------------------- RNG state


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch RNG states as tensors / plain values (weights_only-safe)."""
    py = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: Dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"name": np_name, "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- save / load


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel wrappers."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


TMP_SUFFIX = ".tmp"
# What resuming needs on top of the weights; `best.pth` leaves these out (see save_best).
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng")


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """torch.save to a temp file, fsync, rename over `path`, fsync the folder: after a crash or
    kill -9 `path` is the old file or the new one, never a torn one. A full disk or an unwritable
    folder raises CheckpointError in one line and leaves the old file intact."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:  # torch reports ENOSPC as "unexpected pos ..." RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CheckpointError(f"cannot write checkpoint {path}: {_disk_reason(e, path.parent)}; "
                              f"{'the previous ' + path.name + ' is intact; ' if path.exists() else ''}"
                              "free space or choose a writable --output folder") from None
    return path


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened for fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _disk_reason(e: BaseException, folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = -1
    if isinstance(e, OSError) and e.errno == errno.ENOSPC or 0 <= free < 64 * 2**20 or "unexpected pos" in str(e):
        return f"no space left on the device ({max(free, 0) / 2**20:.0f} MiB free)"
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def remove_stale_temp_files(folder: PathLike) -> list:
    """Delete `*.pth.tmp` partial writes a killed run left in its own run folder (ours, never a user file)."""
    removed = []
    for tmp in sorted(Path(folder).glob(f"*.pth{TMP_SUFFIX}")) + sorted(Path(folder).glob(f"*.jsonl{TMP_SUFFIX}")):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
            log.info("removed %s, a partial write left by an interrupted run", tmp)
    return removed


def save_checkpoint(path: PathLike, model: nn.Module, cfg: ExperimentConfig, epoch: int, **state: Any) -> Path:
    """Write a resumable checkpoint atomically. `state`: optimizer, scheduler, ema, scaler (objects
    with state_dict()) and plain extras such as metrics."""
    import edgedet

    ckpt: Dict[str, Any] = {"format": FORMAT, "model": unwrap(model).state_dict(), "config": to_dict(cfg),
                            "edgedet_version": edgedet.__version__, "epoch": int(epoch), "rng": rng_state(),
                            "class_names": list(cfg.model.class_names)}
    for k, v in state.items():
        if v is not None:
            ckpt[k] = v.state_dict() if hasattr(v, "state_dict") else v
    return atomic_torch_save(ckpt, path)


def save_best(path: PathLike, model: nn.Module, cfg: ExperimentConfig, epoch: int, ema: Any = None,
              metrics: Optional[Dict[str, Any]] = None, best_map: float = -1.0) -> Path:
    """Write what inference and fine-tuning need: weights, EMA weights, config, class names,
    metrics. No optimizer / scheduler / scaler / RNG state (resume from last.pth)."""
    import edgedet

    ckpt: Dict[str, Any] = {"format": FORMAT, "model": unwrap(model).state_dict(), "config": to_dict(cfg),
                            "edgedet_version": edgedet.__version__, "epoch": int(epoch),
                            "class_names": list(cfg.model.class_names), "metrics": dict(metrics or {}),
                            "best_map": float(best_map)}
    if ema is not None:
        ckpt["ema"] = {"module": ema.module.state_dict()}
    return atomic_torch_save(ckpt, path)


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read and validate a checkpoint written by `save_checkpoint` (on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}; pass the .pth written by `edgedet train` (e.g. runs/x/last.pth)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy or save; copy it again, "
                              "or resume from another checkpoint of the run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        from edgedet.checkpoints.safe_load import unsafe_globals_message

        refusal = unsafe_globals_message(path, e)
        if refusal:  # a pickle that would run code: name what it needs, not "corrupt"
            raise CheckpointError(refusal) from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = reason.split(". This is an internal")[0]  # miniz's own apology adds nothing
        if "weights_only" in reason or "Weights only" in reason:  # never relay torch's "retry with weights_only=False"
            reason = "not a tensor checkpoint"
        raise CheckpointError(f"cannot read checkpoint {path} ({reason[:160]}); the file is corrupt or not an edgedet "
                              "checkpoint: re-run training or convert official weights with `edgedet convert-checkpoint`") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an edgedet checkpoint (no format '{FORMAT}'); "
                              "convert official weights with `edgedet convert-checkpoint`")
    lacking = [k for k in ("model", "config") if not isinstance(ckpt.get(k), dict)]
    if lacking:
        raise IncompleteCheckpointError(f"edgedet checkpoint {path} lacks its {' and '.join(repr(k) for k in lacking)} entry "
                              "(written by a tool other than `edgedet train`?); re-save it with save_checkpoint or re-run training")
    return ckpt


def checkpoint_config(ckpt: Dict[str, Any]) -> ExperimentConfig:
    return experiment_from_dict(ckpt["config"])


def load_state_checked(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict) that summarises a mismatch in one line instead of a key dump."""
    own = unwrap(model).state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shape = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or shape:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape", shape)):
            if keys:
                parts.append(f"{len(keys)} keys {what} (e.g. {keys[0]})")
        raise CheckpointError(f"{source} does not fit this model: {'; '.join(parts)}; "
                              "it was trained with another model or config: pass a matching --model/--set or checkpoint")
    unwrap(model).load_state_dict(state_dict)


def check_same_model(ckpt: Dict[str, Any], model_name: str, path: PathLike) -> None:
    saved = ckpt.get("config", {}).get("model", {}).get("name", "?")
    if saved != model_name:
        raise CheckpointError(f"checkpoint {path} holds a '{saved}' model, not '{model_name}'; "
                              f"resume with --model {saved} or pass a '{model_name}' checkpoint")


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu", prefer_ema: bool = True) -> nn.Module:
    """Rebuild the model from the checkpoint's own config and load its weights (EMA ones if
    saved and `prefer_ema`); returned in eval mode on `device`."""
    from edgedet.models import create_model_from_config

    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt)
    model = create_model_from_config(cfg.model)
    weights = ckpt["ema"]["module"] if prefer_ema and "ema" in ckpt else ckpt["model"]
    load_state_checked(model, weights, f"checkpoint {path}")
    return model.to(device).eval()


__all__ = ["FORMAT", "CheckpointError", "IncompleteCheckpointError", "save_checkpoint", "save_best", "atomic_torch_save", "remove_stale_temp_files", "load_checkpoint", "load_model", "checkpoint_config",
           "load_state_checked", "check_same_model", "rng_state", "set_rng_state", "unwrap"]
