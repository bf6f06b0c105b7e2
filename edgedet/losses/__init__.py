"""Matching and set-prediction losses shared by every DETR family."""
from edgedet.losses.criterion import SetCriterion
from edgedet.losses.focal import focal_class_cost, sigmoid_focal_loss
from edgedet.losses.matcher import HungarianMatcher

__all__ = ["HungarianMatcher", "SetCriterion", "sigmoid_focal_loss", "focal_class_cost"]
