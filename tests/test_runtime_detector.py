"""runtime.Detector on real ONNX artifacts: exact letterbox undo, every output layout, batches, bad input."""
import cv2
import numpy as np
import pytest

from runtime import Detector
from runtime.backends import ArtifactError, InputError
from runtime.manifest import ManifestError, read_sidecar
from runtime.testing import BLOB_CLASSES, blob_reference, make_blob_artifact


def _scene(h=300, w=500):
    """Black frame with a red box at x 100..199, y 50..149 and a blue one at x 300..449, y 200..279 (BGR)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[50:150, 100:200] = (0, 0, 255)
    img[200:280, 300:450] = (255, 0, 0)
    return img


def _expected(det, frame, layout):
    """Boxes the artifact must return, mapped back by hand: x = (x_net - pad) / scale per axis."""
    x, (info,) = det.preprocess(frame)
    ref = blob_reference(x, layout)
    h, w = frame.shape[:2]
    nh, nw = det.input_size
    if det.manifest.preprocess.resize == "stretch":
        sx, sy = nw / w, nh / h
    else:  # the letterbox resizes each side to whole pixels: that exact ratio maps back
        s = min(nh / h, nw / w)
        sx, sy = round(w * s) / w, round(h * s) / h
    if layout == "postprocessed":
        boxes, keep = ref["boxes"][0], ref["scores"][0] > 0
    else:
        c = ref["pred_boxes"][0] * np.array([nw, nh, nw, nh], np.float32)
        boxes = np.stack([c[:, 0] - c[:, 2] / 2, c[:, 1] - c[:, 3] / 2, c[:, 0] + c[:, 2] / 2, c[:, 1] + c[:, 3] / 2], 1)
        keep = np.diagonal(ref["pred_logits"][0][:, :3]) > 0  # query q scores class q: +4 present, -4 absent
    out = boxes[keep] / np.array([sx, sy, sx, sy], np.float32)
    return np.clip(out, 0, [w, h, w, h]), np.flatnonzero(keep)


@pytest.mark.parametrize("layout", ["postprocessed", "softmax", "sigmoid"])
@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_boxes_map_back_to_original_pixels(tmp_path, layout, resize):
    det = Detector(make_blob_artifact(tmp_path, layout, size_hw=(96, 128), resize=resize))
    frame = _scene()
    dets = det(frame)
    boxes, labels = _expected(det, frame, layout)
    np.testing.assert_array_equal(np.sort(dets.labels), labels)
    order = np.argsort(dets.labels)
    np.testing.assert_allclose(dets.boxes_xyxy[order], boxes, atol=1e-3)
    assert sorted(dets.names) == ["blue", "red"] and dets.image_size == (300, 500)
    # And the toy really found the drawn boxes, to within one network pixel mapped back.
    tol = 1.5 * max(500 / 128, 300 / 96)
    np.testing.assert_allclose(dets.boxes_xyxy[order], [[100, 50, 200, 150], [300, 200, 450, 280]], atol=tol)
    assert set(dets.timings_ms) == {"preprocess", "infer", "postprocess"}


def test_raw_infer_returns_engine_outputs(tmp_path):
    det = Detector(make_blob_artifact(tmp_path, "sigmoid"))
    x, _ = det.preprocess(_scene())
    out = det.infer({"images": x})
    ref = blob_reference(x, "sigmoid")
    assert set(out) == {"pred_logits", "pred_boxes"}
    np.testing.assert_allclose(out["pred_logits"], ref["pred_logits"], atol=1e-6)
    np.testing.assert_allclose(out["pred_boxes"], ref["pred_boxes"], atol=1e-6)
    with pytest.raises(InputError, match="expects"):
        det.infer({"images": np.zeros((1, 3, 32, 32), np.float32)})
    with pytest.raises(InputError, match="inputs"):
        det.infer({"pixels": x})


@pytest.mark.parametrize("dynamic", [True, False])
def test_batch_matches_single_frames(tmp_path, dynamic):
    det = Detector(make_blob_artifact(tmp_path, "postprocessed", dynamic_batch=dynamic))
    frames = [_scene(), _scene(240, 320), cv2.cvtColor(_scene(), cv2.COLOR_BGR2GRAY), _scene()[:, ::-1].copy()]
    batched = det.batch(frames)
    assert len(batched) == 4
    for frame, got in zip(frames, batched):
        single = det(frame)
        np.testing.assert_array_equal(got.labels, single.labels)
        np.testing.assert_allclose(got.boxes_xyxy, single.boxes_xyxy)
    assert batched[2].labels.size == 0  # grey frame: no saturated channel


def test_conf_and_classes_filters(tmp_path):
    path = make_blob_artifact(tmp_path, "sigmoid")
    assert Detector(path, classes=[2])(_scene()).names == ["blue"]
    assert len(Detector(path, conf=0.99)(_scene())) == 0  # sigmoid(4) = 0.982


def test_manifest_embedded_in_onnx(tmp_path):
    path = make_blob_artifact(tmp_path, "postprocessed", embed=True, sidecar=False)
    det = Detector(path)
    assert det.class_names == BLOB_CLASSES and len(det(_scene())) == 2
    bare = make_blob_artifact(tmp_path, "postprocessed", sidecar=False, name="bare")
    with pytest.raises(ManifestError, match="no edgedet manifest"):
        Detector(bare)
    det = Detector(bare, manifest=read_sidecar(make_blob_artifact(tmp_path / "m")))
    assert len(det(_scene())) == 2


def test_missing_and_truncated_artifacts(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Detector(tmp_path / "missing.onnx")
    path = make_blob_artifact(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        Detector(path)


@pytest.mark.parametrize("bad, match", [(None, "frame is None"), (np.zeros((10, 10, 3), np.float64), "uint8"),
                                        (np.zeros((4, 10, 10, 3), np.uint8), "shape")])
def test_corrupted_frames(tmp_path, bad, match):
    det = Detector(make_blob_artifact(tmp_path))
    with pytest.raises(ValueError, match=match):
        det(bad)
