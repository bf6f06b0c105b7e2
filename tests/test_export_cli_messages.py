"""`edgedet export` says the right thing early: no TensorRT means no work at all; a dry run's ONNX is not called
an ONNX Runtime artifact."""
import pytest

from edgedet.cli import main
from export_helpers import SHARED

CKPT = SHARED / "fixtures" / "reference" / "deformable_detr" / "checkpoint.pth"


def test_tensorrt_export_without_tensorrt_stops_before_loading_the_model(tmp_path, monkeypatch, capsys):
    pytest.importorskip("converters")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    import converters.api

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before TensorRT was checked")

    monkeypatch.setattr(converters.api, "resolve_model", no_work)
    code = main(["export", "--model", str(tmp_path / "any.pth"), "--format", "tensorrt", "--output", str(tmp_path / "m.engine")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "TensorRT is not installed" in err and "--dry-run" in err
    assert not list(tmp_path.iterdir())


def test_dry_run_is_described_as_the_onnx_an_engine_is_built_from(tmp_path, capsys):
    if not CKPT.is_file():
        pytest.skip(f"{CKPT} is not present")
    out = tmp_path / "m.engine"
    assert main(["export", "--model", str(CKPT), "--format", "tensorrt", "--dry-run", "--msda", "fused", "--imgsz", "64", "96",
                 "--output", str(out), "--score-threshold", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert f"TensorRT dry run: wrote {out.with_suffix('.onnx')}" in printed
    assert "not runnable in ONNX Runtime" in printed and "onnxruntime fp32" not in printed
