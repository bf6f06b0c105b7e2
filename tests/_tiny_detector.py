"""A tiny detector and a tiny shapes dataset that follow the model and data contracts (engine tests only)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgedet.config import ModelConfig
from edgedet.losses import HungarianMatcher, SetCriterion
from edgedet.registry import MODELS

TINY = "tiny_test"


@dataclass
class TinyConfig(ModelConfig):
    focal: bool = False


class TinyDetector(nn.Module):
    """Conv stem -> pooled 4x4 grid -> per-query MLP heads; one auxiliary layer."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.config = cfg
        self.score_activation = "sigmoid" if cfg.focal else "softmax"
        d = cfg.hidden_dim
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.proj = nn.Linear(16 * 16, d)
        self.query = nn.Embedding(cfg.num_queries, d)
        self.layers = nn.ModuleList([nn.Linear(d, d) for _ in range(2)])
        self.class_head = nn.Linear(d, cfg.num_classes + (0 if cfg.focal else 1))
        self.box_head = nn.Linear(d, 4)

    def forward(self, images, mask=None, targets=None):
        h = self.proj(self.backbone(images))[:, None, :] + self.query.weight[None]
        outs = []
        for layer in self.layers:
            h = torch.relu(layer(h)) + h
            outs.append({"pred_logits": self.class_head(h), "pred_boxes": self.box_head(h).sigmoid()})
        return {**outs[-1], "aux_outputs": outs[:-1]}

    def build_criterion(self):
        focal = self.config.focal
        matcher = HungarianMatcher(2.0 if focal else 1.0, 5.0, 2.0, focal=focal)
        weights = {"loss_ce": 2.0 if focal else 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
        return SetCriterion(self.config.num_classes, matcher, weights, loss_class="focal" if focal else "ce")


if TINY not in MODELS:
    MODELS.register(TINY, config=TinyConfig)(TinyDetector)


class TinyShapes(torch.utils.data.Dataset):
    """Images of bright rectangles on a dark background; label = colour channel (3 classes).

    Follows the DetectionDataset contract: class_names, category_ids, coco_gt(), items
    (image [3, H, W] float32, target with labels, boxes cxcywh normalised, image_id, orig_size, size).
    """

    class_names = ["red", "green", "blue"]
    category_ids = [1, 2, 3]

    def __init__(self, n: int = 8, size: int = 48, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            h, w = size, size + 8 * (i % 2)  # two shapes so batches need padding
            img = np.zeros((3, h, w), np.float32)
            boxes, labels = [], []
            for _ in range(int(rng.integers(1, 3))):
                bw, bh = rng.integers(8, 20, size=2)
                x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                c = int(rng.integers(0, 3))
                img[c, y0:y0 + bh, x0:x0 + bw] = 1.0
                boxes.append([x0, y0, x0 + bw, y0 + bh])
                labels.append(c)
            self.items.append((img, np.asarray(boxes, np.float32), np.asarray(labels, np.int64), h, w))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        img, b, labels, h, w = self.items[i]
        cxcywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                           (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], 1)
        target = {"labels": torch.as_tensor(labels), "boxes": torch.as_tensor(cxcywh, dtype=torch.float32),
                  "image_id": i + 1, "orig_size": torch.tensor([h, w]), "size": torch.tensor([h, w])}
        return torch.as_tensor(img), target

    def coco_dict(self):
        images, anns = [], []
        for i, (_, b, labels, h, w) in enumerate(self.items):
            images.append({"id": i + 1, "width": w, "height": h, "file_name": f"{i}.png"})
            for box, c in zip(b.tolist(), labels.tolist()):
                bw, bh = box[2] - box[0], box[3] - box[1]
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": self.category_ids[c],
                             "bbox": [box[0], box[1], bw, bh], "area": bw * bh, "iscrowd": 0})
        cats = [{"id": cid, "name": n} for cid, n in zip(self.category_ids, self.class_names)]
        return {"images": images, "annotations": anns, "categories": cats}

    def coco_gt(self):
        import contextlib
        import io

        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = self.coco_dict()
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def write_coco_json(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.coco_dict()))
        return Path(path)
