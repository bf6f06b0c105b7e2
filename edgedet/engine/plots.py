"""Training curves (loss and mAP against epoch) drawn from `metrics.jsonl` with matplotlib's Agg backend."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List

log = logging.getLogger(__name__)


def read_metrics(path: Path) -> List[Dict]:
    """Rows of a metrics.jsonl file (one JSON object per line)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: Path, out_png: Path) -> Path:
    """Left: weighted training loss per epoch; right: val mAP and mAP50 per evaluated epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    ep = [r["epoch"] for r in rows if "train_loss" in r]
    ax_loss.plot(ep, [r["train_loss"] for r in rows if "train_loss" in r], marker="o", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("weighted loss")
    ax_loss.legend()
    evaluated = [r for r in rows if "val_mAP" in r]
    for key, label in (("val_mAP", "mAP"), ("val_mAP50", "mAP@0.5")):
        ax_map.plot([r["epoch"] for r in evaluated], [r[key] for r in evaluated], marker="o", label=label)
    ax_map.set_xlabel("epoch")
    ax_map.set_ylabel("COCO AP")
    ax_map.set_ylim(0, 1)
    ax_map.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return Path(out_png)


__all__ = ["plot_curves", "read_metrics"]
