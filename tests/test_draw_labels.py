"""Drawing: labels never cover each other; prompt exemplars are drawn dashed with their names."""
import numpy as np

from runtime import Detections, draw_prompts
from runtime.draw import _label_rect, _overlaps, draw


def _dets(boxes, scores):
    n = len(boxes)
    return Detections(np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.zeros(n, np.int64), ("thing",),
                      (200, 300))


def test_labels_of_overlapping_boxes_do_not_overlap():
    taken = []
    for box in ([50, 60, 120, 140], [52, 62, 118, 138], [55, 58, 125, 141], [0, 0, 40, 20]):
        rect = _label_rect(tuple(box), 60, 10, 4, 300, 200, taken)
        assert not any(_overlaps(rect, t) for t in taken)
        assert 0 <= rect[1] and rect[3] <= 200
        taken.append(rect)


def test_draw_puts_nearly_identical_boxes_labels_apart():
    image = np.zeros((200, 300, 3), np.uint8)
    out = draw(image, _dets([[50, 60, 120, 140], [51, 61, 121, 141]], [0.9, 0.8]))
    # two filled label bars: the label rows differ (one above the box, the other inside its top)
    rows = np.where((out[:, 50:110] != 0).all(axis=2).sum(axis=1) > 40)[0]
    assert rows.min() < 60 <= rows.max()
    assert image.sum() == 0  # a copy was drawn on


def test_draw_prompts_is_dashed_and_named():
    image = np.full((120, 160, 3), 100, np.uint8)
    out = draw_prompts(image, [[20, 20, 100, 80]], ["cup"])
    top_edge = out[20, 20:100]
    changed = (top_edge != 100).any(axis=1)
    assert 0.3 < changed.mean() < 0.9  # dashes: some of the edge drawn, not all
    assert (out[80:100, 20:100] != 100).any()  # the "prompt: cup" label below the box


def test_drawing_scales_with_the_image_so_boxes_on_a_large_photo_are_visible():
    """6000x4000: lines ~16 px and labels ~80 px tall (2 px and ~12 px were invisible once the photo is viewed
    whole); a 640x480 frame keeps the 2 px lines. Labels of overlapping boxes still do not overlap."""
    from runtime.draw import draw_style

    assert draw_style(480, 640)[:2] == (2, 0.5)
    photo = np.zeros((4000, 6000, 3), np.uint8)
    boxes = [[500, 600, 1800, 2000], [520, 620, 1820, 2010], [3000, 1000, 4200, 2500]]
    dets = Detections(np.asarray(boxes, np.float32), np.asarray([0.9, 0.6, 0.8], np.float32), np.zeros(3, np.int64),
                      ("thing",), (4000, 6000))
    out = draw(photo, dets)
    left_edge = (out[1200, 3000 - 40:3000 + 40] != 0).any(axis=1)  # the third box's left side, mid-height
    assert left_edge.sum() >= 12
    bars = (out[:, 3000:3400] != 0).all(axis=2).sum(axis=1) > 300  # the filled label bar above the third box
    assert 60 <= bars[:1000].sum() <= 200
    # the two overlapping boxes' labels: two separate bars in the columns they share
    rows = np.where((out[:, 560:900] != 0).all(axis=2).sum(axis=1) > 300)[0]
    groups = np.split(rows, np.where(np.diff(rows) > 1)[0] + 1)
    assert len([g for g in groups if len(g) > 40]) == 2
