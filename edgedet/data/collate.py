"""Batching: pad images to the batch's largest H, W with a padding mask, and the DataLoader."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler


def collate_fn(batch: Sequence[Tuple[torch.Tensor, Dict[str, Any]]]) -> Tuple[torch.Tensor, torch.Tensor, List[Dict[str, Any]]]:
    """[(image [3, H_i, W_i], target)] -> (images [B, 3, Hmax, Wmax] zero-padded bottom/right,
    mask [B, Hmax, Wmax] bool True at padding, targets list). Zero is the mean colour after Normalize."""
    if not batch:
        raise ValueError("collate_fn got an empty batch")
    images = [item[0] for item in batch]
    h = max(im.shape[1] for im in images)
    w = max(im.shape[2] for im in images)
    out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    mask = torch.ones((len(images), h, w), dtype=torch.bool)
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
        mask[i, : im.shape[1], : im.shape[2]] = False
    return out, mask, [item[1] for item in batch]


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    distributed: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """DataLoader with `collate_fn`; the order depends only on `seed` (and the epoch).

    With `distributed` a `DistributedSampler` shards the data: call `loader.sampler.set_epoch(e)`
    each epoch. Otherwise a seeded generator drives shuffling and the per-worker seeds, so each
    epoch draws a new but reproducible order.
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
        collate_fn=collate_fn,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
