"""Training and evaluation of the prompted detector on an ordinary detection dataset.

Each batch is turned into a prompted task (`sample_prompts`):
- every image gets prompt slots for the classes it contains (positives) plus classes it does
  not contain (negatives: their columns get no target), shuffled, at most `max_prompts`;
- per image the prompts are visual (with probability `visual_prob`) or text; a visual prompt of
  class c is encoded from 1..N boxes of c on a random batch image holding c (often another
  image: the exemplar and the detected object differ), some boxes reduced to points;
  classes without an exemplar in the batch fall back to text;
- targets' labels become prompt-slot indices; the visual embeddings and the text embeddings of
  all classes feed the InfoNCE alignment loss.
`evaluate_prompted` scores COCO mAP of given prompts restricted to the classes they stand for.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import random
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm import tqdm

from edgedet.engine.postprocess import to_detections

log = logging.getLogger(__name__)


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
    rng = rng or random.Random()
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


def train_prompted(model, dataset, classes: Optional[Sequence[int]] = None, batch_size: int = 4, lr: float = 2e-4,
                   weight_decay: float = 1e-4, max_steps: Optional[int] = None, budget_s: Optional[float] = None,
                   visual_prob: float = 0.5, point_prob: float = 0.2, clip_max_norm: float = 0.1,
                   warmup_steps: int = 30, device: str = "cpu", seed: int = 0, progress: bool = True,
                   checkpoint: Optional[str] = None) -> Dict:
    """Train `model` (a TRex) on `dataset` (a DetectionDataset) with sampled prompts.

    classes: dataset labels to prompt (default all; objects of other classes are left unlabelled).
    Stops after `max_steps` or `budget_s` seconds (at least one must be given); cosine LR decay
    over max_steps when given, else constant after warm-up. Returns {"steps", "seconds", "losses"
    (total per step)}. checkpoint: where to save the trained model (an edgedet checkpoint that
    `edgedet.engine.checkpoint.load_model` and `converters` read).
    """
    from edgedet.data import build_dataloader

    if max_steps is None and budget_s is None:
        raise ValueError("train_prompted needs max_steps or budget_s")
    classes = list(range(len(dataset.class_names))) if classes is None else list(classes)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    criterion = model.build_criterion()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, warmup_steps))
        return warm * (0.5 * (1 + math.cos(math.pi * step / max_steps)) if max_steps else 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    losses: List[float] = []
    start, step, epoch = time.perf_counter(), 0, 0
    bar = tqdm(total=max_steps, desc="train prompted", disable=not progress, leave=False)
    while True:
        loader = build_dataloader(dataset, batch_size=batch_size, shuffle=True, seed=seed + epoch, drop_last=True)
        for images, mask, targets in loader:
            images, mask = images.to(device), mask.to(device)
            memory = model.encode_images(images, mask)
            prompts, prompt_mask, slot_targets, align = sample_prompts(
                model, memory, targets, classes, dataset.class_names, visual_prob, point_prob, rng)
            out = model(images, mask, slot_targets, prompts=prompts, prompt_mask=prompt_mask, memory=memory)
            out["prompt_align"] = align
            loss = criterion.total_loss(criterion(out, slot_targets))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_max_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, clip_max_norm)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"train_prompted: loss became {losses[-1]} at step {step}; lower lr")
            done = (max_steps is not None and step >= max_steps) or (
                budget_s is not None and time.perf_counter() - start >= budget_s)
            if done:
                bar.close()
                model.eval()
                if checkpoint:
                    _save(checkpoint, model, step)
                return {"steps": step, "seconds": time.perf_counter() - start, "losses": losses}
        epoch += 1


def _save(path: str, model, step: int) -> None:
    from edgedet.config import ExperimentConfig
    from edgedet.engine.checkpoint import save_checkpoint

    save_checkpoint(path, model, ExperimentConfig(model=model.config), epoch=0, steps=step)


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
        for t, det in zip(targets, to_detections(out, orig, "sigmoid", top_k)):
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


__all__ = ["sample_prompts", "train_prompted", "evaluate_prompted", "find_exemplars", "one_shot_prompts"]
