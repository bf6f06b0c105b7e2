"""Quiet by default: known library noise written to the process's stderr goes to the debug log."""
import logging
import os

from converters.quiet import filtered_stderr


def test_known_cpp_warnings_are_dropped_and_the_rest_kept(capfd, caplog):
    with caplog.at_level(logging.INFO), filtered_stderr():
        os.write(2, b"[W1202 shape_type_inference.cpp:1994] Warning: The shape inference of edgedet::Foo is missing\n")
        os.write(2, b"something the user must see\n")
    err = capfd.readouterr().err
    assert "something the user must see" in err
    assert "shape inference" not in err


def test_verbose_shows_everything(capfd, caplog):
    with caplog.at_level(logging.DEBUG):
        logging.getLogger().setLevel(logging.DEBUG)
        try:
            with filtered_stderr():
                os.write(2, b"The shape inference of edgedet::Foo\n")
        finally:
            logging.getLogger().setLevel(logging.WARNING)
    assert "The shape inference of edgedet::Foo" in capfd.readouterr().err


def test_the_fused_export_prints_no_shape_inference_warning(capfd, tmp_path):
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from export_helpers import TinyMSDADetector

    from converters.onnx.export import export_onnx
    from runtime.manifest import Manifest

    export_onnx(TinyMSDADetector(), tmp_path / "m.onnx", (64, 64), Manifest(msda="fused"), "fused", simplify=False)
    err = capfd.readouterr().err
    assert "shape inference" not in err and "tmp" not in err, err


def test_nncf_progress_bars_are_not_drawn_unless_verbose(capfd):
    """NNCF draws rich progress bars ("Statistics collection ━━━ 100%") whatever its log level: quiet_nncf turns
    them off for the block, and only for it."""
    from nncf.common.logging.track_progress import track

    from converters.quiet import quiet_nncf

    with quiet_nncf():
        bar = track(range(3), description="Statistics collection")
        assert list(bar) == [0, 1, 2]
        assert bar.progress.disable
    assert "Statistics collection" not in capfd.readouterr().out + capfd.readouterr().err
    assert not track(range(3), description="after").progress.disable  # restored
