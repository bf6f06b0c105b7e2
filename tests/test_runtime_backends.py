"""runtime.backends: registry dispatch, missing engines, ONNX Runtime devices, OpenVINO parity and extensions."""
import sys

import numpy as np
import pytest

from runtime import Detector
from runtime.backends import BACKENDS, ArtifactError, BackendUnavailableError, load_backend
from runtime.manifest import read_sidecar, write_sidecar
from runtime.testing import blob_reference, make_blob_artifact


def _scene():
    img = np.zeros((300, 500, 3), np.uint8)
    img[50:150, 100:200] = (0, 0, 255)
    img[200:280, 300:450] = (0, 255, 0)
    return img


def test_registry_by_suffix_and_name():
    assert BACKENDS.name_for("m.onnx") == "onnxruntime"
    assert BACKENDS.name_for("m.XML") == "openvino"
    assert BACKENDS.name_for("m.engine") == BACKENDS.name_for("m.plan") == "tensorrt"
    with pytest.raises(ValueError, match="known suffixes"):
        BACKENDS.name_for("m.tflite")
    with pytest.raises(ValueError, match="Did you mean 'openvino'"):
        BACKENDS.entry("openvin")


def test_tensorrt_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.delitem(sys.modules, "runtime.backends.tensorrt", raising=False)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edgedet\[tensorrt\]'"):
        load_backend(engine)


def test_openvino_missing_names_the_install(tmp_path, monkeypatch):
    xml = tmp_path / "m.xml"
    xml.write_text("<net/>")
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.delitem(sys.modules, "runtime.backends.openvino", raising=False)
    with pytest.raises(BackendUnavailableError, match="pip install openvino"):
        Detector(xml)


def test_onnxruntime_devices(tmp_path):
    path = make_blob_artifact(tmp_path)
    backend = load_backend(path, device="CPU", threads=1)
    assert backend.providers == ["CPUExecutionProvider"]
    assert [s.name for s in backend.input_specs] == ["images"] and backend.input_specs[0].shape == (1, 3, 96, 128)
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
            load_backend(path, device="cuda:0")
    with pytest.raises(ValueError, match="unknown device"):
        load_backend(path, device="tpu")


def _to_openvino(onnx_path, xml_path, embed=False):
    ov = pytest.importorskip("openvino")
    model = ov.convert_model(str(onnx_path))
    if embed:
        model.set_rt_info(read_sidecar(onnx_path).to_json(), ["edgedet", "manifest"])
    ov.save_model(model, str(xml_path), compress_to_fp16=False)  # the default stores fp16 constants
    return xml_path


@pytest.mark.parametrize("layout", ["postprocessed", "sigmoid"])
def test_openvino_matches_onnxruntime(tmp_path, layout):
    onnx_path = make_blob_artifact(tmp_path, layout)
    xml = _to_openvino(onnx_path, tmp_path / "blob.xml")
    write_sidecar(read_sidecar(onnx_path), xml)  # each artifact file has its own sidecar
    ort_det, ov_det = Detector(onnx_path), Detector(xml, device="cpu")
    assert ov_det.backend_name == "openvino"
    a, b = ort_det(_scene()), ov_det(_scene())
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, atol=1e-3)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_openvino_embedded_manifest_and_async(tmp_path):
    onnx_path = make_blob_artifact(tmp_path / "src", "sigmoid")
    det = Detector(_to_openvino(onnx_path, tmp_path / "emb.xml", embed=True))
    assert det.manifest.family == "blob-toy"
    x1, _ = det.preprocess(_scene())
    x2, _ = det.preprocess(np.zeros((50, 50, 3), np.uint8))
    h1, h2 = det.backend.infer_async({"images": x1}), det.backend.infer_async({"images": x2})
    with pytest.raises(RuntimeError, match="busy"):
        det.backend.infer_async({"images": x1})
    out2, out1 = det.backend.wait(h2), det.backend.wait(h1)
    np.testing.assert_allclose(out1["pred_logits"], blob_reference(x1, "sigmoid")["pred_logits"], atol=1e-5)
    np.testing.assert_allclose(out2["pred_logits"], blob_reference(x2, "sigmoid")["pred_logits"], atol=1e-5)


def test_openvino_missing_extension_says_what_to_do(tmp_path, monkeypatch):
    onnx_path = make_blob_artifact(tmp_path)
    xml = _to_openvino(onnx_path, tmp_path / "blob.xml")
    manifest = read_sidecar(onnx_path)
    manifest.custom_ops = {"openvino": "libedgedet_ov_msda.so"}
    write_sidecar(manifest, xml)
    monkeypatch.delenv("EDGEDET_OV_EXTENSION", raising=False)
    with pytest.raises(ArtifactError, match='msda="gather"'):
        Detector(xml)
    monkeypatch.setenv("EDGEDET_OV_EXTENSION", str(tmp_path / "nowhere"))
    with pytest.raises(ArtifactError, match="EDGEDET_OV_EXTENSION"):
        Detector(xml)


def test_openvino_truncated_model(tmp_path):
    xml = _to_openvino(make_blob_artifact(tmp_path), tmp_path / "blob.xml")
    text = xml.read_text()
    xml.write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        Detector(xml)
