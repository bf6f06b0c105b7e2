"""Batching: pad images to the batch's largest H, W (rounded up to the model's size divisor) with a
padding mask, and the DataLoader."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

Batch = Tuple[torch.Tensor, torch.Tensor, List[Dict[str, Any]]]


def collate_fn(batch: Sequence[Tuple[torch.Tensor, Dict[str, Any]]], size_divisor: int = 1,
               fill: Optional[Sequence[float]] = None) -> Batch:
    """[(image [3, H_i, W_i], target)] -> (images [B, 3, H, W] padded bottom/right, mask [B, H, W] bool
    True at padding, targets list). H, W = the batch's largest sides rounded up to a multiple of
    `size_divisor`. Padding is zero (the mean colour after Normalize) unless `fill` gives per-channel values.

    With `fill` (the mask-free families, which see padding as image content, as the deployed letterbox
    shows it to them) each target's boxes are re-normalised to the padded input and `canvas` = (H, W) is
    set: such a model can only predict where an object lies in the input it sees, so it is trained and
    evaluated in the coordinates of its deployed graph (boxes in network-input pixels)."""
    if not batch:
        raise ValueError("collate_fn got an empty batch")
    images = [item[0] for item in batch]
    d = max(1, int(size_divisor))
    h = math.ceil(max(im.shape[1] for im in images) / d) * d
    w = math.ceil(max(im.shape[2] for im in images) / d) * d
    out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    if fill is not None:
        out += torch.as_tensor(fill, dtype=out.dtype).view(1, -1, 1, 1)
    mask = torch.ones((len(images), h, w), dtype=torch.bool)
    targets = [item[1] for item in batch]
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
        mask[i, : im.shape[1], : im.shape[2]] = False
        if fill is not None and isinstance(targets[i], dict) and "boxes" in targets[i]:
            targets[i] = to_canvas(targets[i], im.shape[1], im.shape[2], h, w)
    return out, mask, targets


def to_canvas(target: Dict[str, Any], h: int, w: int, canvas_h: int, canvas_w: int) -> Dict[str, Any]:
    """Boxes normalised to an (h, w) image -> normalised to the (canvas_h, canvas_w) input it sits in (top-left)."""
    t = dict(target)
    sx, sy = w / canvas_w, h / canvas_h
    boxes = torch.as_tensor(t["boxes"], dtype=torch.float32)
    t["boxes"] = boxes * boxes.new_tensor([sx, sy, sx, sy])
    t["canvas"] = torch.tensor([canvas_h, canvas_w], dtype=torch.int64)
    return t


class PadCollate:
    """`collate_fn` with a fixed size divisor and fill (a class, not a lambda, so worker processes can pickle it)."""

    def __init__(self, size_divisor: int = 1, fill: Optional[Sequence[float]] = None):
        self.size_divisor = max(1, int(size_divisor))
        self.fill = None if fill is None else tuple(float(v) for v in fill)

    def __call__(self, batch: Sequence[Tuple[torch.Tensor, Dict[str, Any]]]) -> Batch:
        return collate_fn(batch, self.size_divisor, self.fill)

    def __repr__(self) -> str:
        return f"PadCollate(size_divisor={self.size_divisor}, fill={self.fill})"


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    distributed: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    size_divisor: int = 1,
    fill: Optional[Sequence[float]] = None,
) -> DataLoader:
    """DataLoader with `collate_fn`; the order depends only on `seed` (and the epoch).

    With `distributed` a `DistributedSampler` shards the data: call `loader.sampler.set_epoch(e)`
    each epoch. Otherwise a seeded generator drives shuffling and the per-worker seeds, so each
    epoch draws a new but reproducible order. `size_divisor` / `fill`: see `collate_fn`
    (`edgedet.data.padding.batch_padding` gives a model's values).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=PadCollate(size_divisor, fill),
        drop_last=drop_last,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
