"""Issue #12, export side: an export never overwrites what it did not create, nor its own input."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from converters import ExportError, export
from converters.cli import main as export_main
from export_helpers import build_tiny
from runtime.manifest import read_sidecar, sidecar_path
from runtime.safety import UnsafeOutputError

HW = (64, 64)


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("tiny_msda")


def test_tensorrt_dry_run_does_not_replace_an_onnx_runtime_export(tiny, tmp_path):
    onnx_path = export(tiny, "onnx", tmp_path / "model.onnx", imgsz=HW, msda="gather")
    before, side_before = sha(onnx_path), sha(sidecar_path(onnx_path))
    with pytest.raises(UnsafeOutputError, match="model.onnx already exists.*--exist-ok"):
        export(tiny, "tensorrt", tmp_path / "model.engine", imgsz=HW, msda="gather", dry_run=True)
    assert sha(onnx_path) == before and sha(sidecar_path(onnx_path)) == side_before
    assert read_sidecar(onnx_path).backend == "onnxruntime"


def test_export_over_an_existing_artifact_needs_overwrite(tiny, tmp_path):
    path = export(tiny, "onnx", tmp_path / "m.onnx", imgsz=HW, msda="gather")
    before = sha(path)
    with pytest.raises(UnsafeOutputError, match="already exists"):
        export(tiny, "onnx", tmp_path / "m.onnx", imgsz=HW, msda="grid_sample")
    assert sha(path) == before
    export(tiny, "onnx", tmp_path / "m.onnx", imgsz=HW, msda="grid_sample", overwrite=True)
    assert sha(path) != before and read_sidecar(path).msda == "grid_sample"


def test_onnx_and_openvino_exports_of_one_stem_keep_their_own_manifests(tiny, tmp_path):
    pytest.importorskip("openvino")
    onnx_path = export(tiny, "onnx", tmp_path / "m.onnx", imgsz=HW, msda="gather")
    xml = export(tiny, "openvino", tmp_path / "m.xml", imgsz=HW, msda="gather")
    assert read_sidecar(onnx_path).backend == "onnxruntime" and read_sidecar(xml).backend == "openvino"
    assert sidecar_path(onnx_path) != sidecar_path(xml)


def test_export_cli_refuses_output_over_its_checkpoint_and_read_only_folders(tmp_path, capsys):
    ckpt = tmp_path / "weights.onnx"  # a checkpoint under a name the format would write
    ckpt.write_bytes(b"precious checkpoint bytes")
    before = sha(ckpt)
    with pytest.raises(UnsafeOutputError, match="is the input"):
        export_main(["--model", str(ckpt), "--output", str(ckpt)])
    assert sha(ckpt) == before
    with pytest.raises(PermissionError, match="choose a writable folder"):
        export(build_tiny("tiny_msda"), "onnx", "/proc/edgedet/m.onnx", imgsz=HW, msda="gather")


def test_onnx_with_fused_msda_is_refused_with_the_runtimes_that_can_run_it(tiny, tmp_path):
    with pytest.raises(ExportError, match="ONNX Runtime has no kernel.*format='openvino'.*format='tensorrt'"):
        export(tiny, "onnx", tmp_path / "f.onnx", imgsz=HW, msda="fused")
    assert not (tmp_path / "f.onnx").exists()
