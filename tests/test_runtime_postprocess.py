"""runtime.postprocess: raw DETR heads and postprocessed outputs -> Detections in original pixels."""
import numpy as np
import pytest

from runtime.manifest import OutputSpec
from runtime.postprocess import Postprocessor, boxes_cxcywh_to_xyxy, decode_raw
from runtime.preprocess import LetterboxInfo

IDENTITY = LetterboxInfo(scale=1.0, pad_x=0, pad_y=0, orig_size=(100, 200))


def test_softmax_drops_no_object_column_and_sorts():
    logits = np.log(np.array([[0.7, 0.1, 0.2], [0.1, 0.3, 0.6], [0.05, 0.9, 0.05]], np.float32))
    boxes = np.array([[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.1, 0.1], [0.1, 0.9, 0.2, 0.2]], np.float32)
    scores, labels, xyxy = decode_raw(logits, boxes, (100, 200), "softmax", top_k=10)
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.3], rtol=1e-5)
    np.testing.assert_array_equal(labels, [1, 0, 1])
    np.testing.assert_allclose(xyxy[1], [80, 40, 120, 60], rtol=1e-5)  # query 0: cx 100, cy 50, w 40, h 20


def test_sigmoid_topk_over_queries_and_classes():
    logits = np.array([[0.0, 3.0], [2.0, -1.0], [-5.0, 1.0]], np.float32)
    boxes = np.tile(np.array([[0.5, 0.5, 1.0, 1.0]], np.float32), (3, 1))
    boxes[1] = [0.25, 0.5, 0.5, 1.0]
    scores, labels, xyxy = decode_raw(logits, boxes, (10, 20), "sigmoid", top_k=3)
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-np.array([3.0, 2.0, 1.0]))), rtol=1e-6)
    np.testing.assert_array_equal(labels, [1, 0, 1])
    np.testing.assert_allclose(xyxy[1], [0, 0, 10, 10])  # query 1 (class 0)
    with pytest.raises(ValueError, match="softmax, sigmoid"):
        decode_raw(logits, boxes, (10, 20), "relu", 3)


def test_cxcywh_to_xyxy():
    np.testing.assert_allclose(boxes_cxcywh_to_xyxy(np.array([[5, 6, 2, 4]], np.float32)), [[4, 4, 6, 8]])


def test_postprocessed_outputs_are_mapped_filtered_and_clipped():
    post = Postprocessor(OutputSpec(postprocess=True), (64, 64), ("a", "b", "c"), conf=0.3, classes=[0, 2])
    outputs = {
        "labels": np.array([[0, 1, 2, 0]], np.int64),
        "boxes": np.array([[[2, 4, 10, 20], [0, 0, 5, 5], [10, 10, 70, 30], [1, 1, 2, 2]]], np.float32),
        "scores": np.array([[0.5, 0.9, 0.8, 0.1]], np.float32),
    }
    info = LetterboxInfo(scale=0.5, pad_x=0, pad_y=0, orig_size=(128, 120))
    (det,) = post(outputs, [info])
    np.testing.assert_array_equal(det.labels, [2, 0])  # sorted by score; label 1 and score 0.1 dropped
    np.testing.assert_allclose(det.boxes_xyxy, [[20, 20, 120, 60], [4, 8, 20, 40]])  # x1 140 clipped to width 120
    assert det.names == ["c", "a"] and det.image_size == (128, 120)


def test_missing_output_names_are_reported():
    post = Postprocessor(OutputSpec(postprocess=False, names=["pred_logits", "pred_boxes"]), (8, 8))
    with pytest.raises(KeyError, match="pred_boxes"):
        post({"pred_logits": np.zeros((1, 2, 3), np.float32)}, [IDENTITY])
    with pytest.raises(ValueError, match="must list 2 outputs"):
        Postprocessor(OutputSpec(postprocess=False, names=["a", "b", "c"]), (8, 8))


def test_dedup_iou_drops_near_copies_of_the_same_class_only():
    from runtime.types import Detections

    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [12, 0, 22, 10]], np.float32)
    dets = Detections(boxes, np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 1, 0]), ("a", "b"), (32, 32))
    kept = dets.suppress_duplicates(0.7)  # box 1 overlaps box 0 (same class) by IoU 0.82
    np.testing.assert_allclose(kept.scores, [0.9, 0.7, 0.6])  # the other class and the neighbour stay
    assert len(dets.suppress_duplicates(0.9)) == 4 and len(dets.select(np.array([0])).suppress_duplicates()) == 1

    outputs = {"labels": np.array([[0, 0, 1]], np.int64), "boxes": boxes[None, :3] / 2, "scores": np.array([[0.9, 0.8, 0.7]], np.float32)}
    info = LetterboxInfo(scale=0.5, pad_x=0, pad_y=0, orig_size=(32, 32))
    (plain,) = Postprocessor(OutputSpec(postprocess=True), (16, 16), ("a", "b"), conf=0.1)(outputs, [info])
    (deduped,) = Postprocessor(OutputSpec(postprocess=True), (16, 16), ("a", "b"), conf=0.1, dedup_iou=0.7)(outputs, [info])
    assert len(plain) == 3 and deduped.labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match="dedup_iou must be in"):
        Postprocessor(OutputSpec(postprocess=True), (16, 16), dedup_iou=0)


def test_bad_dedup_iou_is_refused_before_any_artifact_opens():
    from runtime import Detector
    from runtime.prompted import PromptedDetector

    with pytest.raises(ValueError, match="dedup_iou must be in"):
        Detector("no-such-model.xml", dedup_iou=1.5)  # not the missing-file error: nothing was opened
    with pytest.raises(ValueError, match="dedup_iou must be in"):
        PromptedDetector("no-encoder.xml", "no-detector.xml", dedup_iou=-0.1)
