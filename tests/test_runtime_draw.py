"""runtime.draw: boxes land where the detections say, colours per class, contact sheets tile frames."""
import numpy as np
import pytest

from runtime.draw import class_color, contact_sheet, draw, draw_fps
from runtime.types import Detections


def test_draw_boxes_in_class_colours_without_touching_the_input():
    frame = np.zeros((100, 200, 3), np.uint8)
    dets = Detections(np.array([[20, 30, 80, 90], [120, 10, 190, 60]], np.float32), np.array([0.9, 0.5]), np.array([0, 3]), ("a", "b", "c", "d"))
    out = draw(frame, dets, thickness=1, show_scores=False)
    assert not frame.any() and out.shape == frame.shape
    assert tuple(out[60, 20]) == class_color(0)  # left edge of box 0
    assert tuple(out[40, 190]) == class_color(3)  # right edge of box 1
    assert not out[60, 50].any()  # inside stays untouched
    assert class_color(0) != class_color(1) and class_color(5) == class_color(5)
    same = draw(frame, Detections.empty(), copy=False)
    assert same is frame


def test_fps_overlay_and_contact_sheet():
    frame = np.zeros((60, 200, 3), np.uint8)
    assert draw_fps(frame, 29.97, 12.5) is frame and frame.any()
    tiles = [np.full((40, 80, 3), v, np.uint8) for v in (50, 100, 150)]
    sheet = contact_sheet(tiles, cols=2, gap=2)
    assert sheet.shape == (2 * 42 + 2, 2 * 82 + 2, 3)
    assert sheet[20, 40, 0] == 50 and sheet[20, 120, 0] == 100 and sheet[60, 40, 0] == 150
    small = contact_sheet([np.full((10, 20), 7, np.uint8)], cols=3, cell_size=(20, 20))
    assert small.shape == (28, 28, 3) and small[14, 14, 0] == 7
    with pytest.raises(ValueError, match="at least one"):
        contact_sheet([])
