"""Training / evaluation transforms on (image uint8 [H, W, 3] RGB, target) pairs, numpy + OpenCV.

Inside the pipeline `target["boxes"]` is float32 [n, 4] boxes_xyxy in the current image's pixels;
`ToTarget` turns it into normalised cxcywh and sets `size`, `Normalize` gives float32 [3, H, W].
Resizing, letterboxing and normalisation call `runtime.preprocess`, so the pixels seen in
training-time evaluation are the ones the deployed runtime produces.
Randomness comes from Python's `random` (seeded per DataLoader worker by torch).
"""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from edgedet.data.augment import ColorJitter, color_jitter
from runtime.manifest import PreprocessSpec
from runtime.preprocess import LetterboxInfo, letterbox, normalize, resize_shorter_side

Target = Dict[str, Any]


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, target: Target) -> Tuple[np.ndarray, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


def hflip(image: np.ndarray, target: Target) -> Tuple[np.ndarray, Target]:
    """Mirror left-right; x0' = W - x1, x1' = W - x0."""
    w = image.shape[1]
    target = dict(target)
    boxes = target["boxes"].copy()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    return np.ascontiguousarray(image[:, ::-1]), target


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: np.ndarray, target: Target) -> Tuple[np.ndarray, Target]:
        return hflip(image, target) if random.random() < self.p else (image, target)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def resize(image: np.ndarray, target: Target, size: int, max_size: int = 0) -> Tuple[np.ndarray, Target]:
    """Shorter side -> `size` (longer side <= `max_size` if > 0); boxes scale with the actual pixel ratios."""
    h, w = image.shape[:2]
    out, _ = resize_shorter_side(image, size, max_size)
    nh, nw = out.shape[:2]
    target = dict(target)
    target["boxes"] = target["boxes"] * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
    return out, target


class RandomResize:
    """Multi-scale resize: shorter side drawn from `sizes`."""

    def __init__(self, sizes: Sequence[int], max_size: int = 0):
        self.sizes = list(sizes)
        self.max_size = max_size

    def __call__(self, image: np.ndarray, target: Target) -> Tuple[np.ndarray, Target]:
        # One size draws nothing: random.choice would still advance the RNG, so the validation transform
        # (a single size) shifted the training augmentations of every later epoch (resume mismatched).
        size = self.sizes[0] if len(self.sizes) == 1 else random.choice(self.sizes)
        return resize(image, target, size, self.max_size)

    def __repr__(self) -> str:
        return f"RandomResize({self.sizes}, max_size={self.max_size})"


def crop(image: np.ndarray, target: Target, top: int, left: int, height: int, width: int) -> Tuple[np.ndarray, Target]:
    """Cut the region; boxes are shifted and clipped, boxes left without area go with their labels."""
    target = dict(target)
    boxes = target["boxes"] - np.array([left, top, left, top], np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    target["boxes"] = boxes[keep]
    target["labels"] = target["labels"][keep]
    return np.ascontiguousarray(image[top : top + height, left : left + width]), target


class RandomSizeCrop:
    """DETR's random-size crop (side in [min_size, max_size] px), retried until a box survives."""

    def __init__(self, min_size: int, max_size: int, max_tries: int = 10):
        self.min_size, self.max_size, self.max_tries = min_size, max_size, max_tries

    def __call__(self, image: np.ndarray, target: Target) -> Tuple[np.ndarray, Target]:
        h, w = image.shape[:2]
        for _ in range(self.max_tries):
            cw = random.randint(min(self.min_size, w), min(w, self.max_size))
            ch = random.randint(min(self.min_size, h), min(h, self.max_size))
            top, left = random.randint(0, h - ch), random.randint(0, w - cw)
            out, new_target = crop(image, target, top, left, ch, cw)
            if len(new_target["boxes"]) or not len(target["boxes"]):
                return out, new_target
        return image, target  # no crop kept an object: better the whole image than an empty one

    def __repr__(self) -> str:
        return f"RandomSizeCrop({self.min_size}, {self.max_size})"


class RandomSelect:
    """`first` with probability p, else `second`."""

    def __init__(self, first: Callable, second: Callable, p: float = 0.5):
        self.first, self.second, self.p = first, second, p

    def __call__(self, image: np.ndarray, target: Target) -> Tuple[np.ndarray, Target]:
        return self.first(image, target) if random.random() < self.p else self.second(image, target)

    def __repr__(self) -> str:
        return f"RandomSelect({self.first!r}, {self.second!r}, p={self.p})"


class ToTarget:
    """boxes_xyxy pixels -> normalised cxcywh of the current image; sets `size` (H, W)."""

    def __call__(self, image: np.ndarray, target: Target) -> Tuple[np.ndarray, Target]:
        h, w = image.shape[:2]
        target = dict(target)
        b = np.asarray(target["boxes"], np.float32).reshape(-1, 4)
        cxcywh = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
        target["boxes"] = (cxcywh / np.array([w, h, w, h], np.float32)).astype(np.float32)
        target["size"] = np.array([h, w], np.int64)
        return image, target

    def __repr__(self) -> str:
        return "ToTarget()"


class Normalize:
    """uint8 [H, W, 3] RGB -> float32 [3, H, W] through `runtime.preprocess.normalize`."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: np.ndarray, target: Target) -> Tuple[np.ndarray, Target]:
        return normalize(image, self.mean, self.std), target

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


# The runtime letterboxes with the mean colour, which normalises to ~0: the value the training
# batches' zero padding has (see runtime.manifest.PreprocessSpec.pad_value).
DEPLOY_PAD_VALUE = PreprocessSpec().pad_value


class DeployTransform:
    """The deployed runtime's preprocessing: letterbox (or stretch) into `size_hw`, then normalise.

    Returns float32 [3, th, tw]; the target (optional) gets boxes as normalised cxcywh of the
    network input, `size` = size_hw and `letterbox` = the `LetterboxInfo` (x_net = x_orig * scale + pad).
    """

    def __init__(self, size_hw: Tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 pad_value: Union[int, Sequence[int]] = DEPLOY_PAD_VALUE, resize: str = "letterbox"):
        if resize not in ("letterbox", "stretch"):
            raise ValueError(f"unknown resize '{resize}'; valid: letterbox, stretch")
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        pad = (int(pad_value),) * 3 if isinstance(pad_value, (int, np.integer)) else tuple(int(v) for v in pad_value)
        self.mean, self.std, self.pad_value, self.resize = tuple(mean), tuple(std), pad, resize

    def _resize(self, image: np.ndarray) -> Tuple[np.ndarray, LetterboxInfo]:
        if self.resize == "letterbox":
            return letterbox(image, self.size_hw, self.pad_value)
        (h, w), (th, tw) = image.shape[:2], self.size_hw
        out = cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR) if (h, w) != (th, tw) else image
        return out, LetterboxInfo(min(th / h, tw / w), 0, 0, (h, w), scale_hw=(th / h, tw / w))

    def __call__(self, image: np.ndarray, target: Optional[Target] = None) -> Tuple[np.ndarray, Target]:
        h, w = image.shape[:2]
        canvas, info = self._resize(image)
        target = dict(target) if target is not None else {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
        target.setdefault("orig_size", np.array([h, w], np.int64))
        sy, sx = info.scale_hw if info.scale_hw is not None else (info.scale, info.scale)
        scale = np.array([sx, sy, sx, sy], np.float32)
        offset = np.array([info.pad_x, info.pad_y, info.pad_x, info.pad_y], np.float32)
        target["boxes"] = np.asarray(target["boxes"], np.float32).reshape(-1, 4) * scale + offset
        canvas, target = ToTarget()(canvas, target)
        target["letterbox"] = info
        return normalize(canvas, self.mean, self.std), target

    def __repr__(self) -> str:
        return f"DeployTransform(size_hw={self.size_hw}, resize={self.resize}, pad_value={self.pad_value})"


def deploy_transform(size_hw: Tuple[int, int], mean: Sequence[float], std: Sequence[float],
                     pad_value: Union[int, Sequence[int]] = DEPLOY_PAD_VALUE, resize: str = "letterbox") -> DeployTransform:
    """The preprocessing an exported model gets at run time (see `DeployTransform`)."""
    return DeployTransform(size_hw, mean, std, pad_value, resize)


def _crop_branch(scales: Sequence[int], max_size: int) -> Compose:
    """DETR's crop branch (resize to 400-600, crop 384-600, resize to the scales) scaled to max(scales)/800."""
    top = max(scales)
    pre = sorted({max(1, round(top * f)) for f in (0.5, 0.625, 0.75)})
    return Compose([RandomResize(pre), RandomSizeCrop(max(1, round(top * 0.48)), max(1, round(top * 0.75))), RandomResize(scales, max_size)])


def build_transforms(data_cfg: Any, train: bool) -> Compose:
    """Train: photometric jitter, flip, multi-scale resize (optionally DETR's random crop branch); val: deterministic resize
    of the shorter side to `val_size`. Both end with ToTarget + Normalize(data_cfg.mean, data_cfg.std)."""
    steps: List[Callable] = []
    if train:
        jitter = color_jitter(getattr(data_cfg, "color_jitter", (0.0, 0.0, 0.0, 0.0)))
        if any(v > 0 for v in jitter):
            steps.append(ColorJitter(*jitter))
        if data_cfg.hflip > 0:
            steps.append(RandomHorizontalFlip(data_cfg.hflip))
        multi_scale = RandomResize(data_cfg.scales, data_cfg.max_size)
        steps.append(RandomSelect(multi_scale, _crop_branch(data_cfg.scales, data_cfg.max_size)) if data_cfg.random_crop else multi_scale)
    else:
        steps.append(RandomResize([data_cfg.val_size], data_cfg.max_size))
    steps += [ToTarget(), Normalize(data_cfg.mean, data_cfg.std)]
    return Compose(steps)
