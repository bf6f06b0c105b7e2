"""Image preprocessing shared by deployment and training-time evaluation.

numpy + OpenCV only, no per-pixel Python. The training stack calls these same functions,
so an exported model sees exactly the pixels it was evaluated on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

if TYPE_CHECKING:
    from runtime.manifest import PreprocessSpec

INPUT_FORMATS = ("float32_nchw", "uint8_nhwc")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image_rgb: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> float32 [3, H, W] as (x / 255 - mean) / std.

    Computed in float32 in that order, which equals torchvision's ToTensor + Normalize bit for bit.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got shape {image_rgb.shape}")
    x = image_rgb.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def resize_shorter_side(image: np.ndarray, size: int, max_size: int = 0) -> Tuple[np.ndarray, float]:
    """Resize so the shorter side is `size` (longer side capped at `max_size` if > 0) -> (image, scale)."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    if max_size and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (nh, nw) == (h, w):
        return image, 1.0
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR), scale


@dataclass(frozen=True)
class LetterboxInfo:
    """How an original image maps into the network input: x_net = x_orig * scale + pad.

    `scale_hw` (sy, sx) is the exact ratio of each axis (resized / original pixels: a letterbox rounds
    each side to whole pixels, a stretch scales the axes differently); None means `scale` on both axes.
    `valid_hw` (h, w) is the region of the network input that holds the image (the rest is padding);
    None means the whole input. Models trained with a padding mask get it as the graph's `valid_hw` input.
    """

    scale: float
    pad_x: int
    pad_y: int
    orig_size: Tuple[int, int]  # (H, W)
    scale_hw: Optional[Tuple[float, float]] = None
    valid_hw: Optional[Tuple[int, int]] = None

    def to_original(self, boxes_xyxy: np.ndarray, clip: bool = True) -> np.ndarray:
        """[N, 4] xyxy network-input pixels -> float32 [N, 4] xyxy original-image pixels."""
        sy, sx = self.scale_hw if self.scale_hw is not None else (self.scale, self.scale)
        b = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], np.float32)
        out = (b - offset) / np.array([sx, sy, sx, sy], np.float32)
        if clip:
            h, w = self.orig_size
            out = np.clip(out, 0, np.array([w, h, w, h], np.float32))
        return out.astype(np.float32, copy=False)


def letterbox(image: np.ndarray, size_hw: Tuple[int, int], pad_value: Union[int, Sequence[int]] = 0) -> Tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping the aspect ratio into `size_hw`, padding bottom/right with `pad_value`."""
    h, w = image.shape[:2]
    th, tw = size_hw
    scale = min(th / h, tw / w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else image
    out = np.full((th, tw) + image.shape[2:], pad_value, dtype=image.dtype)
    out[:nh, :nw] = resized
    return out, letterbox_info(h, w, nh, nw, scale)


def letterbox_info(h: int, w: int, nh: int, nw: int, scale: float) -> LetterboxInfo:
    """The mapping of an (h, w) image resized to (nh, nw) at the top-left of the network input."""
    return LetterboxInfo(scale, 0, 0, (h, w), scale_hw=(nh / h, nw / w), valid_hw=(nh, nw))


def valid_region(infos: Sequence[LetterboxInfo], size_hw: Tuple[int, int]) -> np.ndarray:
    """int32 [B, 2]: the (h, w) of each image inside the network input of `size_hw`, the graph's
    `valid_hw` input (the padding mask the model was trained with is rebuilt from it)."""
    th, tw = int(size_hw[0]), int(size_hw[1])
    out = np.empty((len(infos), 2), np.int32)
    for i, info in enumerate(infos):
        out[i] = info.valid_hw if info.valid_hw is not None else (th, tw)
    return out


def check_valid_region(valid_hw: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """A `valid_hw` feed must be [B, 2] integers with 1 <= h <= H and 1 <= w <= W: a region outside the
    network input would build a mask that hides the image. Returns it as int32."""
    arr = np.asarray(valid_hw)
    th, tw = int(size_hw[0]), int(size_hw[1])
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"valid_hw must be [B, 2] (height, width of the image inside the {th}x{tw} input), got shape {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer) and not np.array_equal(arr, np.round(arr)):
        raise ValueError(f"valid_hw must hold whole pixels, got {arr.tolist()}")
    bad = (arr[:, 0] < 1) | (arr[:, 0] > th) | (arr[:, 1] < 1) | (arr[:, 1] > tw)
    if bad.any():
        raise ValueError(f"valid_hw {arr[bad].tolist()} lies outside the {th}x{tw} network input: each (h, w) must be "
                         f"within 1..{th} and 1..{tw} (the letterboxed image's size, as Preprocessor computes it)")
    return arr.astype(np.int32)


def as_bgr(frame: object) -> np.ndarray:
    """Validate a frame and return it as uint8 [H, W, 3] BGR (grayscale and BGRA are converted).

    Raises ValueError with what was wrong and what to pass instead.
    """
    if frame is None:
        raise ValueError("frame is None: the source returned no image (camera unplugged, end of file, or unreadable image path?)")
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy array (H, W, 3) uint8 BGR, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 BGR (as cv2.imread/VideoCapture return), got dtype {frame.dtype}; "
                         "convert with np.clip(x * 255, 0, 255).astype(np.uint8) if it is float in [0, 1]")
    if frame.size == 0:  # before any conversion: OpenCV would fail with an assertion dump
        raise ValueError(f"frame is empty (shape {frame.shape}): pass a decoded image [H, W, 3] uint8 BGR")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.ndim == 3 and frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be [H, W, 3] BGR (or [H, W] grayscale), got shape {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame is empty (shape {frame.shape})")
    return frame


class Preprocessor:
    """BGR frames (OpenCV order) -> network input float32 [B, 3, H, W] per a manifest's PreprocessSpec.

    Equals `normalize(letterbox(rgb, size, pad_value))` (or a plain resize for "stretch")
    bit for bit: normalisation is a per-channel 256-entry table computed with the same
    float32 operations, applied by cv2.LUT straight into each output plane.
    """

    def __init__(self, spec: "PreprocessSpec"):
        if spec.resize not in ("letterbox", "stretch"):
            raise ValueError(f"unknown resize '{spec.resize}'; valid: letterbox, stretch")
        if spec.input_format not in INPUT_FORMATS:
            raise ValueError(f"unknown input_format '{spec.input_format}'; valid: {', '.join(INPUT_FORMATS)}")
        self.uint8_input = spec.input_format == "uint8_nhwc"
        if spec.channel_order.upper() not in ("RGB", "BGR"):
            raise ValueError(f"unknown channel_order '{spec.channel_order}'; valid: RGB, BGR")
        self.spec = spec
        self.size_hw = (int(spec.size[0]), int(spec.size[1]))
        rgb = spec.channel_order.upper() == "RGB"
        # Network channel k reads frame (BGR) channel order[k].
        self._order = [2, 1, 0] if rgb else [0, 1, 2]
        frame_of_net = np.argsort(self._order)  # frame channel j -> network channel
        mean = np.asarray(spec.mean, np.float32)[frame_of_net]
        std = np.asarray(spec.std, np.float32)[frame_of_net]
        values = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)
        table = (values - mean) / std  # [256, 3] in frame channel order
        self._luts = [np.ascontiguousarray(table[:, j]) for j in range(3)]
        pad = np.broadcast_to(np.asarray(spec.pad_value, np.int64), (3,))
        self._pad_bgr = tuple(int(v) for v in pad[frame_of_net])
        self._pad_net = [float(self._luts[j][self._pad_bgr[j]]) for j in self._order]  # the band's value per network channel
        # One padding row (W pixels, BGR interleaved): the padding is copied row by row as a plain byte copy.
        # Broadcasting the 3-value pixel instead costs ~10 ms on a 1080p frame's 640x280 bottom band, more than
        # the resize itself.
        self._pad_row = np.tile(np.asarray(self._pad_bgr, np.uint8), self.size_hw[1])

    def __call__(self, frames: Union[np.ndarray, Sequence[np.ndarray]]) -> Tuple[np.ndarray, List[LetterboxInfo]]:
        """frames: one [H, W, 3] BGR uint8 image or a list -> (x [B, 3, H, W] float32, or [B, H, W, 3] uint8 BGR
        for a `uint8_nhwc` graph, and one LetterboxInfo each)."""
        if isinstance(frames, np.ndarray) and frames.ndim in (2, 3) or frames is None:
            frames = [frames]
        th, tw = self.size_hw
        if self.uint8_input:  # the graph normalises: only the letterbox happens here, straight into the batch
            x8 = np.empty((len(frames), th, tw, 3), np.uint8)
            infos = [self.resize(as_bgr(frame), out=x8[i])[1] for i, frame in enumerate(frames)]
            return x8, infos
        x = np.empty((len(frames), 3, th, tw), np.float32)
        infos = []
        for i, frame in enumerate(frames):
            image, info = self._fit(as_bgr(frame))
            nh, nw = image.shape[:2]
            planes = cv2.split(image)
            for k, j in enumerate(self._order):
                # Table lookup of the image part only, straight into the output plane (no HWC->CHW copy);
                # the letterbox band is one constant per channel, filled without a lookup.
                cv2.LUT(planes[j], self._luts[j], dst=x[i, k, :nh, :nw])
                x[i, k, nh:] = self._pad_net[k]
                x[i, k, :nh, nw:] = self._pad_net[k]
            infos.append(info)
        return x, infos

    def _place(self, h: int, w: int) -> Tuple[int, int, LetterboxInfo]:
        """Where an h x w image goes in the network input: its resized (height, width) at the top-left, and the mapping."""
        th, tw = self.size_hw
        if self.spec.resize == "stretch":
            sy, sx = th / h, tw / w
            return th, tw, LetterboxInfo(min(sy, sx), 0, 0, (h, w), scale_hw=(sy, sx))
        scale = min(th / h, tw / w)
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        return nh, nw, letterbox_info(h, w, nh, nw, scale)

    def _fit(self, bgr: np.ndarray) -> Tuple[np.ndarray, LetterboxInfo]:
        """uint8 BGR -> (the image resized to its place in the network input, no padding; the mapping)."""
        nh, nw, info = self._place(*bgr.shape[:2])
        return (cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != bgr.shape[:2] else bgr), info

    def resize(self, bgr: np.ndarray, out: Optional[np.ndarray] = None) -> Tuple[np.ndarray, LetterboxInfo]:
        """uint8 BGR -> uint8 BGR [H_net, W_net, 3] letterboxed or stretched (into `out` when given), and the mapping."""
        h, w = bgr.shape[:2]
        nh, nw, info = self._place(h, w)
        canvas = np.empty(self.size_hw + (3,), np.uint8) if out is None else out
        if (nh, nw) != (h, w):
            cv2.resize(bgr, (nw, nh), dst=canvas[:nh, :nw], interpolation=cv2.INTER_LINEAR)
        else:
            canvas[:nh, :nw] = bgr
        if not canvas.flags.c_contiguous:  # an `out` view with strides: plain broadcasting
            canvas[nh:] = self._pad_bgr
            canvas[:nh, nw:] = self._pad_bgr
            return canvas, info
        th, tw = self.size_hw
        rows = canvas.reshape(th, tw * 3)  # contiguous: its rows as bytes, the padding copied row by row
        rows[nh:] = self._pad_row
        if nw < tw:
            rows[:nh, nw * 3:] = self._pad_row[nw * 3:]
        return canvas, info
