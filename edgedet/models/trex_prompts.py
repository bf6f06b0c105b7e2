"""Prompted tasks for the prompted detector (`trex`) on an ordinary detection dataset.

Training goes through the common engine (`edgedet train --model trex`): in training mode with
targets and no explicit prompts, `TRex.forward` calls `sample_prompts`, which turns the batch into
a prompted task:
- every image gets prompt slots for the classes it contains (positives) plus classes it does
  not contain (negatives: their columns get no target), shuffled, at most `max_prompts`;
- per image the prompts are visual (with probability `prompt_visual_prob`) or text; a visual prompt
  of class c is encoded from 1..N boxes of c on a random batch image holding c (often another
  image: the exemplar and the detected object differ), some boxes reduced to points;
  classes without an exemplar in the batch fall back to text;
- targets' labels become prompt-slot indices; the visual embeddings and the text embeddings of
  all classes feed the InfoNCE alignment loss.
`evaluate_prompted` scores COCO mAP of given prompts restricted to the classes they stand for;
`find_exemplars` / `one_shot_prompts` pick one visual exemplar per class.
"""
from __future__ import annotations

import contextlib
import io
import random
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm import tqdm

from edgedet.engine.postprocess import to_detections


def _exemplars(targets: Sequence[Dict], classes: Sequence[int], max_boxes: int, point_prob: float,
               rng: random.Random) -> Tuple[Tensor, Tensor, List[Tuple[int, int, int]]]:
    """Exemplar boxes per (image, class present): boxes [B, Kx, N, 4], valid [B, Kx, N], index (image, slot, class)."""
    per_image = [[c for c in sorted(set(t["labels"].tolist())) if c in classes] for t in targets]
    kx = max([len(p) for p in per_image] + [1])
    boxes = torch.zeros(len(targets), kx, max_boxes, 4)
    valid = torch.zeros(len(targets), kx, max_boxes, dtype=torch.bool)
    index = []
    for i, (t, present) in enumerate(zip(targets, per_image)):
        for j, c in enumerate(present):
            own = t["boxes"][t["labels"] == c]
            pick = rng.sample(range(len(own)), rng.randint(1, min(max_boxes, len(own))))
            for n, p in enumerate(pick):
                box = own[p].clone()
                if rng.random() < point_prob:
                    box[2:] = 0.0  # a point prompt: the box centre, zero size
                boxes[i, j, n] = box
                valid[i, j, n] = True
            index.append((i, j, c))
    return boxes, valid, index


def sample_prompts(model, memory, targets: Sequence[Dict], classes: Sequence[int], class_names: Sequence[str],
                   visual_prob: float = 0.5, point_prob: float = 0.2, rng: Optional[random.Random] = None):
    """A prompted task for a batch -> (prompts [B, K, Dp], prompt_mask [B, K], slot targets, prompt_align dict).

    memory: the batch's `ImageMemory`; classes: dataset labels that may be prompted (the seen
    classes); class_names: names of all dataset labels (text prompts).
    """
    rng = rng or random  # the global generator: seeded per rank and restored on resume by the engine
    cfg = model.config
    k_max, device = cfg.max_prompts, memory.memory.device
    classes = list(classes)
    text = model.encode_text_prompts([class_names[c] for c in classes])  # [C, Dp]
    row_of = {c: r for r, c in enumerate(classes)}
    boxes, valid, index = _exemplars(targets, classes, cfg.max_prompt_boxes, point_prob, rng)
    visual, _ = model.encode_visual_prompts(memory, boxes.to(device), valid.to(device))
    sources: Dict[int, List[Tuple[int, int]]] = {}
    for i, j, c in index:
        sources.setdefault(c, []).append((i, j))

    prompts = text.new_zeros(len(targets), k_max, text.shape[1])
    prompt_mask = torch.zeros(len(targets), k_max, dtype=torch.bool, device=device)
    new_targets = []
    for b, t in enumerate(targets):
        present = [c for c in sorted(set(t["labels"].tolist())) if c in row_of]
        rng.shuffle(present)
        positives = present[:k_max]
        absent = [c for c in classes if c not in present]
        negatives = rng.sample(absent, rng.randint(0, min(len(absent), k_max - len(positives))))
        slots = positives + negatives
        rng.shuffle(slots)
        use_visual = rng.random() < visual_prob
        rows = []
        for c in slots:
            if use_visual and c in sources:
                i, j = rng.choice(sources[c])
                rows.append(visual[i, j])
            else:
                rows.append(text[row_of[c]])
        if rows:
            prompts[b, : len(rows)] = torch.stack(rows)
            prompt_mask[b, : len(rows)] = True
        slot_of = {c: s for s, c in enumerate(slots)}
        keep = torch.tensor([int(c) in slot_of for c in t["labels"].tolist()], dtype=torch.bool)
        labels = torch.tensor([slot_of[int(c)] for c in t["labels"][keep].tolist()], dtype=torch.int64)
        new_targets.append({**t, "labels": labels.to(device), "boxes": t["boxes"][keep].to(device)})
    align = {
        "visual": torch.stack([visual[i, j] for i, j, _ in index]) if index else text[:0],
        "labels": torch.tensor([row_of[c] for _, _, c in index], dtype=torch.int64, device=device),
        "text": text,
    }
    return prompts, prompt_mask, new_targets, align


@torch.no_grad()
def evaluate_prompted(model, dataset, prompts: Tensor, prompt_labels: Sequence[int], batch_size: int = 4,
                      device: str = "cpu", top_k: int = 100, progress: bool = False) -> Dict[str, float]:
    """COCO mAP / mAP50 of the prompted model on `dataset`, over the classes `prompt_labels` only.

    prompts [K, Dp] (unit embeddings); prompt_labels [K]: the dataset label each prompt stands for.
    """
    from pycocotools.cocoeval import COCOeval

    from edgedet.data import build_dataloader

    model.to(device).eval()
    category_ids = [dataset.category_ids[c] for c in prompt_labels]
    results: List[Dict] = []
    loader = build_dataloader(dataset, batch_size=batch_size, shuffle=False)
    for images, mask, targets in tqdm(loader, desc="eval prompted", disable=not progress, leave=False):
        out = model(images.to(device), mask.to(device), prompts=prompts.to(device)[None])
        orig = torch.stack([torch.as_tensor(t["orig_size"]) for t in targets])
        for t, det in zip(targets, to_detections(out, orig, "sigmoid", top_k, clip=True)):
            results.extend(det.to_coco(int(t["image_id"]), category_ids))
    if not results:
        return {"mAP": 0.0, "mAP50": 0.0}
    gt = dataset.coco_gt()
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.catIds = sorted(set(category_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP": float(ev.stats[0]), "mAP50": float(ev.stats[1])}


def find_exemplars(dataset, classes: Sequence[int]) -> Dict[int, Tuple[int, int]]:
    """One visual exemplar per class: the largest box of that class on the first image holding it
    -> {class: (image index, box index)} (box index into the record's and the target's boxes)."""
    found: Dict[int, Tuple[int, int]] = {}
    for i, rec in enumerate(dataset.records):
        for c in classes:
            if c in found or c not in rec.labels:
                continue
            idx = [j for j, label in enumerate(rec.labels) if label == c]
            wh = [(rec.boxes_xyxy[j][2] - rec.boxes_xyxy[j][0]) * (rec.boxes_xyxy[j][3] - rec.boxes_xyxy[j][1]) for j in idx]
            found[c] = (i, idx[max(range(len(idx)), key=wh.__getitem__)])
    missing = [c for c in classes if c not in found]
    if missing:
        raise RuntimeError(f"no image holds classes {missing}; generate more images for the exemplars")
    return found


@torch.no_grad()
def one_shot_prompts(model, dataset, classes: Sequence[int]) -> Tensor:
    """Visual prompt embeddings [len(classes), Dp], one `find_exemplars` box each."""
    shots, rows = find_exemplars(dataset, classes), []
    for c in classes:
        i, j = shots[c]
        image, target = dataset[i]
        emb, _ = model.encode_visual_prompts(image[None], target["boxes"][j].view(1, 1, 1, 4))
        rows.append(emb[0, 0])
    return torch.stack(rows)


__all__ = ["sample_prompts", "evaluate_prompted", "find_exemplars", "one_shot_prompts"]
