"""`edgedet label`: auto-label images and videos with the prompted detector into a YOLO + COCO data set.

Torch-free (exported artifacts); a trex checkpoint is exported once by the converters' plug-in. `--ray`
spreads the detector over a Ray Data actor pool (`runtime.label.ray_runner`, the `ray` extra).
"""
from runtime.label.core import LabelConfig, format_summary, label
from runtime.label.dataset import LabelDataset, LabelOutputError

__all__ = ["LabelConfig", "label", "format_summary", "LabelDataset", "LabelOutputError"]
