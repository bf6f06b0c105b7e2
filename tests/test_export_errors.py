"""Bad export requests fail early with one clear line that says what to do."""
from __future__ import annotations

import pytest

from converters import ExportError, export, list_formats
from converters.formats import FORMATS, validate_request
from export_helpers import TinyUnexportable, build_tiny, write_images

HW = (64, 64)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("tiny_msda")


def test_unknown_format_suggests(tiny, tmp_path):
    with pytest.raises(ExportError, match=r"unknown export format 'onxx'\. Did you mean 'onnx'\? Valid: onnx, openvino, tensorrt"):
        export(tiny, "onxx", tmp_path / "m.onnx", imgsz=HW)


def test_unknown_precision_and_msda(tiny, tmp_path):
    with pytest.raises(ExportError, match="Did you mean 'int8'"):
        export(tiny, "onnx", tmp_path / "m.onnx", precision="int9", imgsz=HW)
    with pytest.raises(ExportError, match="Did you mean 'gather'"):
        export(tiny, "onnx", tmp_path / "m.onnx", msda="gathr", imgsz=HW)


def test_int8_without_calibration(tiny, tmp_path):
    for fmt in ("onnx", "openvino"):
        with pytest.raises(ExportError, match="needs calibration images.*--calib"):
            export(tiny, fmt, tmp_path / f"m{FORMATS[fmt].suffix}", precision="int8", msda="gather", imgsz=HW)


def test_fp16_onnxruntime_is_refused_with_alternative(tiny, tmp_path):
    with pytest.raises(ExportError, match="precision 'fp16' is not supported for format 'onnx'.*format='openvino'"):
        export(tiny, "onnx", tmp_path / "m.onnx", precision="fp16", imgsz=HW)


def test_fused_int8_for_onnxruntime_is_refused(tiny, tmp_path):
    with pytest.raises(ExportError, match="msda form 'fused' is not supported for format 'onnx'.*gather"):
        export(tiny, "onnx", tmp_path / "m.onnx", precision="int8", msda="fused", calib=tmp_path, imgsz=HW)


def test_unexportable_op_is_named(tmp_path):
    with pytest.raises(ExportError, match=r"ONNX export failed: the model uses an operation that cannot be exported.*fft"):
        export(TinyUnexportable(), "onnx", tmp_path / "bad.onnx", imgsz=HW, simplify=False)


def test_tensorrt_absent_is_clear(tiny, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(ExportError, match="TensorRT is not installed"):
        export(tiny, "tensorrt", tmp_path / "m.engine", imgsz=HW)


def test_output_suffix_and_imgsz_and_source(tiny, tmp_path):
    with pytest.raises(ExportError, match=r"format 'openvino' writes '\.xml' files"):
        export(tiny, "openvino", tmp_path / "m.onnx", imgsz=HW)
    with pytest.raises(ExportError, match=r"imgsz must be \(H, W\)"):
        export(tiny, "onnx", tmp_path / "m.onnx", imgsz=(640,))
    with pytest.raises(ExportError, match="neither a checkpoint file nor a model name; models:"):
        export(tmp_path / "missing.pt", "onnx", tmp_path / "m.onnx", imgsz=HW)


def test_calibration_folder_without_images(tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no images"):
        export(tiny, "onnx", tmp_path / "m.onnx", precision="int8", msda="gather", calib=tmp_path / "empty", imgsz=HW,
               simplify=False)


def test_models_without_msda_ignore_the_form():
    fmt, form = validate_request("openvino", "fp16", None, has_msda=False, has_calibration=False)
    assert fmt.name == "openvino" and form == ""


def test_format_table_rows():
    rows = {r["format"]: r for r in list_formats()}
    assert rows["onnx"]["precisions"] == ["fp32", "int8"] and rows["openvino"]["cpu"] and not rows["tensorrt"]["cpu"]
    portable = {"fused", "gather", "grid_sample"}
    assert set(rows["openvino"]["msda"]) == portable
    assert set(rows["onnx"]["msda"]) == portable - {"fused"}  # only what ONNX Runtime can run
    assert set(rows["tensorrt"]["msda"]) == portable | {"trt_builtin"}  # TensorRT's own plugin


def test_cli_reports_one_line(tmp_path, capsys):
    from edgedet.cli import main

    images = write_images(tmp_path / "imgs", n=1)
    code = main(["export", "--model", "dino", "--format", "openvn", "--calib", str(images)])
    err = capsys.readouterr().err
    assert code == 2 and "Did you mean 'openvino'" in err and len(err.strip().splitlines()) == 1
