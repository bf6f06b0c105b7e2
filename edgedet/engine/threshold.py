"""The deploy threshold of best F1: `runtime.threshold` (numpy only), re-exported for the training stack."""
from runtime.threshold import FALLBACK_THRESHOLD, MATCH_IOU, best_f1_threshold

__all__ = ["best_f1_threshold", "FALLBACK_THRESHOLD", "MATCH_IOU"]
