"""The one place a detector's defaults come from: the score threshold and the duplicate filter.

Every command that draws or writes detections (predict, run, track, val plots, the live view) uses
the manifest's recommended values unless the user gives `--conf` / `--dedup-iou`, and says once
which it uses and where that came from (`defaults_note`).
"""
from __future__ import annotations

from typing import Any, Optional

from runtime.postprocess import checked_dedup_iou

DEDUP_OFF = 0.0  # --dedup-iou 0: no duplicate filter even when the manifest recommends one


def resolve_conf(conf: Optional[float], manifest: Any) -> float:
    """The score threshold in use: `conf` when given, else the manifest's recommended one."""
    value = manifest.outputs.score_threshold if conf is None else conf
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"--conf must be in [0, 1], got {value}")
    return float(value)


def resolve_dedup_iou(dedup_iou: Optional[float], manifest: Any) -> Optional[float]:
    """The duplicate filter in use: `dedup_iou` when given (0 = off), else the manifest's recommendation (None = off)."""
    if dedup_iou is None:
        dedup_iou = getattr(manifest.outputs, "dedup_iou", None)
    if dedup_iou is None or float(dedup_iou) == DEDUP_OFF:
        return None
    return checked_dedup_iou(dedup_iou)


def defaults_note(conf: Optional[float], dedup_iou: Optional[float], manifest: Any) -> str:
    """One line: the threshold and duplicate filter in use, and where each came from."""
    used = resolve_conf(conf, manifest)
    source = "--conf" if conf is not None else f"the manifest's recommendation: {manifest.outputs.score_threshold_source}"
    dedup = resolve_dedup_iou(dedup_iou, manifest)
    if dedup_iou is not None:
        dedup_text = f"duplicate filter {'off' if dedup is None else f'IoU {dedup:g}'} (--dedup-iou)"
    elif dedup is not None:
        dedup_text = f"duplicate filter IoU {dedup:g} (the manifest's recommendation; --dedup-iou 0 turns it off)"
    else:
        dedup_text = "duplicate filter off (--dedup-iou 0.7 drops near-copies of one object)"
    return f"score threshold {used:.3g} ({source}); {dedup_text}"


__all__ = ["resolve_conf", "resolve_dedup_iou", "defaults_note", "DEDUP_OFF"]
