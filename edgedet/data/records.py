"""Dataset records and the torch `DetectionDataset` every reader returns.

An `ImageRecord` holds one image's annotations in absolute pixels (boxes_xyxy) with contiguous
labels 0..C-1; `DetectionDataset` decodes the image, runs the transforms and hands out
`(image [3, H, W] float32 normalised, target)` in the training target format.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from edgedet.data.io import SKIP_HINT, DataFormatError, jpeg_truncated
from runtime.annotations.common import ImageRecord  # torch-free: the runtime's val reads the same records

Transform = Callable[[np.ndarray, Dict[str, Any]], Tuple[np.ndarray, Dict[str, Any]]]


def load_image_rgb(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB from any 8/16-bit gray, RGB or RGBA file (see `augment.to_uint8_rgb`);
    raises DataFormatError naming the file when it cannot be decoded."""
    from edgedet.data.augment import to_uint8_rgb

    # ANYDEPTH keeps 16-bit values (IMREAD_COLOR alone divides them by 256, which leaves 12-bit
    # sensor data nearly black); EXIF orientation is still applied.
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise DataFormatError(f"cannot decode image {path}: the file is missing or corrupt")
    if jpeg_truncated(path):  # would train as a partly grey image
        raise DataFormatError(f"image {path} is truncated (its data ends early); {SKIP_HINT}")
    return to_uint8_rgb(image)


class DetectionDataset(Dataset):
    """Images + boxes from any reader.

    `class_names[label]` names a contiguous label; `category_ids[label]` is its COCO category id
    (used for COCO-format evaluation). `transforms(image_rgb uint8 HWC, target)` must end with
    `ToTarget` + `Normalize` (see `edgedet.data.transforms.build_transforms`).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        class_names: Sequence[str],
        category_ids: Optional[Sequence[int]] = None,
        transforms: Optional[Transform] = None,
        name: str = "",
    ):
        self.records: List[ImageRecord] = list(records)
        self.class_names: List[str] = list(class_names)
        self.category_ids: List[int] = list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
        if len(self.category_ids) != len(self.class_names):
            raise ValueError(f"{len(self.category_ids)} category ids for {len(self.class_names)} class names")
        self.transforms = transforms
        self.name = name
        self._coco = None

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"DetectionDataset({self.name or 'unnamed'}: {len(self)} images, classes={self.class_names})"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def raw_target(self, index: int) -> Dict[str, Any]:
        """Target before transforms: boxes xyxy absolute pixels (numpy), labels, image_id, orig_size (H, W)."""
        r = self.records[index]
        return {
            "boxes": r.boxes_xyxy.copy(),
            "labels": r.labels.copy(),
            "image_id": int(r.image_id),
            "orig_size": np.array([r.height, r.width], np.int64),
        }

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """-> (image float32 [3, H, W] normalised, target with labels int64 [n], boxes float32 [n, 4]
        normalised cxcywh, image_id int, orig_size int64 [2] (H, W), size int64 [2] (H, W))."""
        record = self.records[index]
        image = load_image_rgb(record.path)
        target = self.raw_target(index)
        if self.transforms is None:
            raise RuntimeError("DetectionDataset has no transforms; pass build_transforms(data_cfg, train)")
        image, target = self.transforms(image, target)
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != np.float32:
            raise RuntimeError(f"transforms must end with Normalize (float32 [3, H, W]); got {image.dtype} {image.shape}")
        out = {
            "labels": torch.as_tensor(target["labels"], dtype=torch.int64),
            "boxes": torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4),
            "image_id": int(target["image_id"]),
            "orig_size": torch.as_tensor(target["orig_size"], dtype=torch.int64),
            "size": torch.as_tensor(target["size"], dtype=torch.int64),
        }
        return torch.from_numpy(np.ascontiguousarray(image)), out

    def coco_gt(self):
        """pycocotools `COCO` built in memory from the records (bbox xywh pixels, iscrowd 0)."""
        if self._coco is None:
            from pycocotools.coco import COCO

            images, annotations = [], []
            for r in self.records:
                images.append({"id": int(r.image_id), "file_name": r.path.name, "width": r.width, "height": r.height})
                for box, label in zip(r.boxes_xyxy.tolist(), r.labels.tolist()):
                    w, h = box[2] - box[0], box[3] - box[1]
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": int(r.image_id),
                            "category_id": int(self.category_ids[label]),
                            "bbox": [box[0], box[1], w, h],
                            "area": w * h,
                            "iscrowd": 0,
                        }
                    )
            categories = [{"id": int(c), "name": n} for c, n in zip(self.category_ids, self.class_names)]
            coco = COCO()
            coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
            with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
                coco.createIndex()
            self._coco = coco
        return self._coco
