"""A rendered world that looks like a camera's: the shapes of `shape_drawing.py` seen through a moving,
imperfect camera, with exact ground truth.

What makes it camera-like: the background texture pans (the camera drifts), the light changes over
time and across the frame, moving shapes are motion-blurred along their velocity and spin, a
foreground occluder (a pole or a branch) passes in front of them, shapes overlap each other, enter
and leave the frame, and the sensor adds noise and now and then loses focus.

Ground truth stays exact because every object is composited from its own alpha: an object's box is
the extent of its *visible* alpha (after objects and occluders in front of it and the frame border)
at or above VISIBLE_ALPHA, and `visible` is its visible alpha over its whole alpha. Objects with less
than MIN_VISIBLE of themselves in view are marked `ignore` (scored as COCO crowd regions: neither a
miss nor a false positive), since nobody could tell a sliver of a triangle from one of a square.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import cv2
import numpy as np

from edgedet.data.shape_drawing import SHAPES, check_num_classes, render_background, shape_sprite

VISIBLE_ALPHA = 0.3  # a pixel belongs to an object's box when this much of it shows
MIN_VISIBLE = 0.3  # objects showing less than this share of themselves are `ignore` regions
SIZE_RANGE = (0.12, 0.25)  # object size as a share of the frame's shorter side


@dataclass
class _Shape:
    track_id: int
    label: int
    size: float
    angle: float
    spin: float  # radians per frame
    centre: np.ndarray  # float xy, frame pixels
    velocity: np.ndarray  # pixels per frame
    colour: np.ndarray  # RGB float32
    hidden_for: int = 0  # frames left before a shape that left the frame comes back
    coloured: bool = False  # its colour is chosen against the background where it first shows


def _motion_blur(alpha: np.ndarray, velocity: np.ndarray, exposure: float) -> np.ndarray:
    """Smear an alpha mask along `velocity` over `exposure` of a frame (a line kernel)."""
    length = float(np.hypot(*velocity)) * exposure
    if length < 1.5:
        return alpha
    k = int(np.ceil(length)) | 1
    kernel = np.zeros((k, k), np.float32)
    d = velocity / max(np.hypot(*velocity), 1e-6) * (k - 1) / 2
    c = (k - 1) / 2
    cv2.line(kernel, (int(round(c - d[0])), int(round(c - d[1]))), (int(round(c + d[0])), int(round(c + d[1]))), 1.0, 1)
    kernel /= kernel.sum()
    pad = k // 2 + 1
    padded = cv2.copyMakeBorder(alpha, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    return cv2.filter2D(padded, -1, kernel, borderType=cv2.BORDER_CONSTANT)


def _occluder_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 [H, 2W] alpha of a foreground element wider than the frame so it can slide across:
    a vertical pole, or a leafy branch reaching in from the top."""
    mask = np.zeros((height, 2 * width), np.float32)
    x = int(rng.uniform(0.3, 1.7) * width)
    if rng.random() < 0.5:  # pole
        half = max(2, int(rng.uniform(0.025, 0.05) * width))
        cv2.rectangle(mask, (x - half, 0), (x + half, height), 1.0, -1)
    else:  # branch with leaves
        end = (x + int(rng.uniform(-0.2, 0.2) * width), int(rng.uniform(0.35, 0.6) * height))
        cv2.line(mask, (x, 0), end, 1.0, max(2, int(0.012 * width)), cv2.LINE_AA)
        for t in np.linspace(0.15, 1.0, 7):
            px, py = int(x + (end[0] - x) * t), int(end[1] * t)
            axes = (int(rng.uniform(0.02, 0.04) * width), int(rng.uniform(0.008, 0.016) * width))
            cv2.ellipse(mask, (px, py), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
    return cv2.GaussianBlur(mask, (3, 3), 0)


class CameraWorld:
    """A scene advanced one frame per `step()`; `render()` draws the current frame and its truth.

    Everything random comes from the generator given at construction, so (seed, size, settings)
    determine every frame. With `enter_leave`, a shape that has left the frame comes back after a
    pause from a random border, as a new object (new track id, shape, size and colour).
    """

    def __init__(self, rng: np.random.Generator, height: int, width: int, num_classes: int = 3, num_objects: int = 4,
                 enter_leave: bool = True, all_inside_first: bool = True):
        check_num_classes(num_classes)
        self.rng, self.height, self.width = rng, height, width
        self.num_classes, self.enter_leave = num_classes, enter_leave
        self.margin = int(0.1 * max(height, width))  # how far the camera drifts
        self.texture = render_background(rng, height + 2 * self.margin, width + 2 * self.margin)
        self.camera = rng.uniform(0, 2 * self.margin, 2)
        self.camera_velocity = rng.uniform(0.3, 1.0, 2) * rng.choice([-1, 1], 2)
        self.light_phase, self.light_period = rng.uniform(0, 2 * np.pi), rng.uniform(60, 160)
        self.light_amplitude = rng.uniform(0.15, 0.35)
        self.spot = rng.uniform(0, 1, 2) * (width, height)  # a bright patch that wanders (sun through clouds)
        self.spot_velocity = rng.uniform(-2, 2, 2)
        self.occluder = _occluder_mask(rng, height, width) if rng.random() < 0.85 else None
        self.occluder_x = rng.uniform(0, width)
        self.occluder_speed = rng.uniform(-1.2, 1.2)
        self.occluder_colour = rng.uniform(20, 120, 3).astype(np.float32)  # dark, like a silhouette
        self._grid = np.mgrid[0:height, 0:width].astype(np.float32)  # pixel coordinates for the light
        self.blur_frames = 0
        self.frame_index = 0
        self.next_id = 0
        # every class on screen from the start, so a prompt can be taken from the first frame
        labels = list(range(min(num_classes, num_objects))) + [int(rng.integers(num_classes))
                                                               for _ in range(max(0, num_objects - num_classes))]
        self.shapes: List[_Shape] = []
        for i, label in enumerate(labels):
            self.shapes.append(self._new_shape(label, inside=all_inside_first, slot=i))

    # ---- objects ------------------------------------------------------------------------------
    def _new_shape(self, label: int, inside: bool, slot: int = 0) -> _Shape:
        rng = self.rng
        size = rng.uniform(*SIZE_RANGE) * min(self.height, self.width)
        speed = rng.uniform(1.0, 6.0)
        direction = rng.uniform(0, 2 * np.pi)
        velocity = speed * np.array([np.cos(direction), np.sin(direction)])
        reach = size * 0.75  # half the sprite's diagonal-ish extent
        if inside:  # the first shapes spread over columns of the frame, in full view: apart, clear of the occluder
            columns = self.num_classes + 1
            span = (self.width - 2 * reach) / columns
            for _try in range(50):
                centre = np.array([reach + span * (slot % columns) + rng.uniform(0, span),
                                   rng.uniform(reach, self.height - reach)])
                if self._clear(centre, reach):
                    break
        else:  # just outside a random border, heading in
            side = int(rng.integers(4))
            along = rng.uniform(0.15, 0.85)
            centre = [np.array([-reach, along * self.height]), np.array([self.width + reach, along * self.height]),
                      np.array([along * self.width, -reach]), np.array([along * self.width, self.height + reach])][side]
            inward = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]][side], np.float64)
            velocity = inward * speed + rng.uniform(-0.5, 0.5, 2) * speed
        # the colour drawn here is replaced on first view (`_contrasting`); the draw stays so that cached
        # datasets and videos keep their random stream
        shape = _Shape(self.next_id, label, size, rng.uniform(0, 2 * np.pi), rng.uniform(-0.05, 0.05), centre, velocity,
                       rng.uniform(0, 255, 3).astype(np.float32))
        self.next_id += 1
        return shape

    def _clear(self, centre: np.ndarray, reach: float) -> bool:
        """Whether a shape around `centre` would overlap no other shape and no occluder on frame 0."""
        if any(np.hypot(*(centre - s.centre)) < reach + s.size * 0.75 + 4 for s in self.shapes):
            return False
        if self.occluder is None:
            return True
        view = self._occluder_alpha()
        x0, x1 = int(max(centre[0] - reach, 0)), int(min(centre[0] + reach, self.width))
        y0, y1 = int(max(centre[1] - reach, 0)), int(min(centre[1] + reach, self.height))
        return not (view[y0:y1, x0:x1] > 0).any()

    def _contrasting(self, shape: _Shape, patch: np.ndarray) -> None:
        """Give a new shape a colour that stands out from where it appears (as synthetic.py does)."""
        mean = patch.reshape(-1, 3).mean(0)
        options = self.rng.uniform(0, 255, (16, 3))
        shape.colour = options[np.abs(options - mean).sum(1).argmax()].astype(np.float32)

    def step(self) -> None:
        """Advance one frame: camera, light, occluder and shapes move; shapes that left may return."""
        self.frame_index += 1
        self.camera += self.camera_velocity
        for k in range(2):  # the camera drifts back and forth within the texture
            if not 0 <= self.camera[k] <= 2 * self.margin:
                self.camera_velocity[k] *= -1
                self.camera[k] = float(np.clip(self.camera[k], 0, 2 * self.margin))
        self.spot += self.spot_velocity
        self.occluder_x += self.occluder_speed
        if self.blur_frames > 0:
            self.blur_frames -= 1
        elif self.rng.random() < 0.02:  # the autofocus hunts for a few frames
            self.blur_frames = int(self.rng.integers(3, 8))
        for i, s in enumerate(self.shapes):
            if s.hidden_for > 0:
                s.hidden_for -= 1
                if s.hidden_for == 0:
                    self.shapes[i] = self._new_shape(int(self.rng.integers(self.num_classes)), inside=False)
                continue
            s.centre = s.centre + s.velocity
            s.angle += s.spin
            reach = s.size * 0.8
            outside = (s.centre[0] < -reach or s.centre[0] > self.width + reach or
                       s.centre[1] < -reach or s.centre[1] > self.height + reach)
            if outside and self.enter_leave:
                s.hidden_for = int(self.rng.integers(3, 12))
            elif not self.enter_leave:  # bounce off the borders instead
                for k, limit in ((0, self.width), (1, self.height)):
                    if s.centre[k] < reach / 2 or s.centre[k] > limit - reach / 2:
                        s.velocity[k] = -s.velocity[k]

    # ---- drawing ------------------------------------------------------------------------------
    def _background(self) -> np.ndarray:
        cx, cy = self.camera
        m = np.float32([[1, 0, -cx], [0, 1, -cy]])  # sub-pixel pan
        return cv2.warpAffine(self.texture, m, (self.width, self.height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT).astype(np.float32)

    def _shape_alpha(self, s: _Shape) -> Tuple[np.ndarray, np.ndarray]:
        """(full-frame float alpha of the shape, with motion blur; the same without the frame border)."""
        sprite = _motion_blur(shape_sprite(SHAPES[s.label], s.size, s.angle).astype(np.float32) / 255.0, s.velocity, 0.7)
        h, w = sprite.shape
        x0, y0 = int(round(s.centre[0] - w / 2)), int(round(s.centre[1] - h / 2))
        canvas = np.zeros((self.height, self.width), np.float32)
        fx0, fy0 = max(x0, 0), max(y0, 0)
        fx1, fy1 = min(x0 + w, self.width), min(y0 + h, self.height)
        if fx1 > fx0 and fy1 > fy0:
            canvas[fy0:fy1, fx0:fx1] = sprite[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
        return canvas, sprite

    def _occluder_alpha(self) -> np.ndarray:
        if self.occluder is None:
            return np.zeros((self.height, self.width), np.float32)
        offset = int(round(self.occluder_x)) % self.width
        return self.occluder[:, offset : offset + self.width]

    def render(self) -> Tuple[np.ndarray, List[Dict]]:
        """-> (RGB uint8 [H, W, 3], [{box_xyxy, label, name, track_id, visible, ignore}, ...])."""
        frame = self._background()
        live = [s for s in self.shapes if s.hidden_for == 0]
        alphas, totals = [], []
        for s in live:
            canvas, sprite = self._shape_alpha(s)
            if not s.coloured:
                ys, xs = np.nonzero(canvas > 0.5)
                if len(xs):
                    self._contrasting(s, frame[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
                    s.coloured = True
            alphas.append(canvas)
            totals.append(float(sprite.sum()))
        occluder = self._occluder_alpha()
        # composite back to front: later shapes in front of earlier ones, the occluder in front of all
        for s, a in zip(live, alphas):
            frame = frame * (1 - a[..., None]) + s.colour * a[..., None]
        frame = frame * (1 - occluder[..., None]) + self.occluder_colour * occluder[..., None]
        truth = []
        for i, (s, a) in enumerate(zip(live, alphas)):
            cover = occluder.copy()
            for b in alphas[i + 1 :]:
                cover = 1 - (1 - cover) * (1 - b)
            visible = a * (1 - cover)
            ys, xs = np.nonzero(visible >= VISIBLE_ALPHA)
            if len(xs) == 0:
                continue
            share = float(visible.sum()) / max(totals[i], 1e-6)
            truth.append({"box_xyxy": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
                          "label": s.label, "name": SHAPES[s.label], "track_id": s.track_id,
                          "visible": round(min(share, 1.0), 4), "ignore": share < MIN_VISIBLE})
        frame = self._light(frame)
        if self.blur_frames > 0:
            frame = cv2.GaussianBlur(frame, (0, 0), 1.2)
        frame += self.rng.normal(0, 3.0, frame.shape).astype(np.float32)  # sensor noise
        return frame.clip(0, 255).astype(np.uint8), truth

    def _light(self, frame: np.ndarray) -> np.ndarray:
        """Global exposure that drifts over time times a soft bright spot that wanders."""
        gain = 1.0 + self.light_amplitude * np.sin(2 * np.pi * self.frame_index / self.light_period + self.light_phase)
        yy, xx = self._grid
        sx, sy = self.spot[0] % (2 * self.width) - self.width / 2, self.spot[1] % (2 * self.height) - self.height / 2
        radius = 0.6 * max(self.height, self.width)
        spot = np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * radius**2))
        return frame * (gain * (0.8 + 0.4 * spot))[..., None]


def render_camera_scene(rng: np.random.Generator, height: int, width: int, num_classes: int = 3,
                        max_objects: int = 6) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One frame of a random camera world, for training images -> (image uint8 RGB, boxes_xyxy float32
    [n, 4], labels int64 [n], ignore bool [n]). Shapes may be partly out of view, occluded or blurred."""
    world = CameraWorld(rng, height, width, num_classes, int(rng.integers(1, max_objects + 1)), all_inside_first=False)
    for s in world.shapes:  # scatter the shapes anywhere, partly out of view included
        reach = s.size * 0.4
        s.centre = np.array([rng.uniform(-reach, width + reach), rng.uniform(-reach, height + reach)])
    world.frame_index = int(rng.integers(0, 200))  # a random moment of the light cycle
    world.occluder_x = rng.uniform(0, width)
    if rng.random() < 0.1:
        world.blur_frames = 1
    image, truth = world.render()
    boxes = np.array([t["box_xyxy"] for t in truth], np.float32).reshape(-1, 4)
    return image, boxes, np.array([t["label"] for t in truth], np.int64), np.array([t["ignore"] for t in truth], bool)
