"""COCO class names in the official DETR-family checkpoints' order.

DETR, Deformable-DETR, DAB-DETR and DINO checkpoints have 91 class rows indexed by COCO category id
(1 = person ... 90 = toothbrush); ids COCO never assigned (0, 12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
are "N/A". RT-DETR(v2), D-FINE and DEIM train 80 contiguous classes (the category ids in increasing
order, `remap_mscoco_category` maps row i back to its id): `coco_contiguous_names()`.
"""
from __future__ import annotations

from typing import List

_BY_ID = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana",
    53: "apple", 54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table",
    70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone",
    78: "microwave", 79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock",
    86: "vase", 87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}
COCO_OFFICIAL_NUM_CLASSES = 91


def coco_official_names() -> List[str]:
    """91 names, index = COCO category id, "N/A" where COCO has no category."""
    return [_BY_ID.get(i, "N/A") for i in range(COCO_OFFICIAL_NUM_CLASSES)]


COCO_CONTIGUOUS_NUM_CLASSES = 80


def coco_contiguous_names() -> List[str]:
    """80 names, row i = the i-th COCO category in id order (RT-DETR, D-FINE, DEIM class heads)."""
    return [_BY_ID[i] for i in sorted(_BY_ID)]


def official_class_names(family: str, num_classes: int) -> List[str]:
    """The class names of an official COCO checkpoint's rows, in that family's order; [] when not COCO-sized."""
    if num_classes == COCO_OFFICIAL_NUM_CLASSES and family not in CONTIGUOUS_FAMILIES:
        return coco_official_names()
    if num_classes == COCO_CONTIGUOUS_NUM_CLASSES and family in CONTIGUOUS_FAMILIES:
        return coco_contiguous_names()
    return []


CONTIGUOUS_FAMILIES = ("rtdetr", "dfine")

__all__ = ["coco_official_names", "coco_contiguous_names", "official_class_names", "COCO_OFFICIAL_NUM_CLASSES",
           "COCO_CONTIGUOUS_NUM_CLASSES"]
