"""Issue #12, runtime side: nothing the user owns is lost, nothing bad is loaded, bad input says what to do.

Torch-free: each test drives `edgedet-run` (runtime.cli.main) or the runtime API on a tiny ONNX artifact.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.capture import open_source
from runtime.cli import main as run_main
from runtime.detector import Detector
from runtime.manifest import legacy_sidecar_path, read_sidecar, sidecar_path, write_sidecar
from runtime.safety import UnsafeOutputError, check_writable_file, custom_op_library, refuse_output_over_input
from runtime.testing import make_blob_artifact

READ_ONLY = Path("/proc")  # no file can be created there, even by root (chmod does not stop root)


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _video(path: Path, frames: int = 6) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    assert path.stat().st_size > 0
    return path


@pytest.fixture()
def artifact(tmp_path):
    return make_blob_artifact(tmp_path / "model")


# ---------------------------------------------------------------- data loss 1: output over input


def test_run_refuses_to_save_over_its_source_video(tmp_path, artifact, capsys):
    video = _video(tmp_path / "clip.mp4")
    before = sha(video)
    assert run_main(["--model", str(artifact), "--source", str(video), "--save", str(video), "--quiet"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert sha(video) == before


def test_run_refuses_output_that_links_to_an_input(tmp_path, artifact, capsys):
    video = _video(tmp_path / "clip.mp4")
    link = tmp_path / "out.mp4"
    link.symlink_to(video)
    before, model_before = sha(video), sha(artifact)
    assert run_main(["--model", str(artifact), "--source", str(video), "--save", str(link), "--quiet"]) == 2
    assert run_main(["--model", str(artifact), "--source", str(video), "--json", str(artifact), "--quiet"]) == 2
    assert sha(video) == before and sha(artifact) == model_before
    assert capsys.readouterr().err.count("is the input") == 2


def test_output_over_input_helper_for_other_commands(tmp_path):
    src = tmp_path / "a.jpg"
    src.write_bytes(b"x")
    os.link(src, tmp_path / "hard.jpg")  # (Path.hardlink_to is Python 3.10+; the runtime tests also run on 3.8)
    with pytest.raises(UnsafeOutputError, match="is the input"):
        refuse_output_over_input([tmp_path / "hard.jpg"], [src])
    with pytest.raises(UnsafeOutputError):
        refuse_output_over_input([str(tmp_path / "." / "a.jpg")], [0, None, src])
    refuse_output_over_input([tmp_path / "b.jpg", None], [0, "rtsp://cam", src])  # different paths: fine


# ---------------------------------------------------------------- data loss 2: one sidecar per artifact


def test_each_artifact_file_has_its_own_sidecar_and_legacy_names_still_load(tmp_path, artifact):
    manifest = read_sidecar(artifact)
    assert sidecar_path(artifact).name == "blob.onnx.edgedet.json"
    write_sidecar(dataclasses.replace(manifest, backend="openvino"), tmp_path / "model" / "blob.xml")
    assert read_sidecar(artifact).backend == "onnxruntime"  # not replaced by the .xml's manifest
    assert read_sidecar(tmp_path / "model" / "blob.xml").backend == "openvino"
    # an artifact exported by an earlier version: `blob.edgedet.json` beside `blob.onnx`
    old = make_blob_artifact(tmp_path / "old", sidecar=False)
    legacy_sidecar_path(old).write_text(manifest.to_json())
    assert legacy_sidecar_path(old).name == "blob.edgedet.json"
    assert Detector(old).class_names == tuple(manifest.class_names)


# ---------------------------------------------------------------- data loss 5: corrupt inputs are skipped


def test_folder_with_a_corrupt_image_keeps_every_good_result(tmp_path, artifact, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"img_{i}.jpg"), np.full((48, 64, 3), 60 * i, np.uint8))
    (folder / "img_1.jpg").write_bytes((folder / "img_1.jpg").read_bytes()[:40])  # header only
    out = tmp_path / "dets.jsonl"
    assert run_main(["--model", str(artifact), "--source", str(folder), "--json", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert len(out.read_text().splitlines()) == 3
    assert "skipped 1 unreadable" in captured.out
    source = open_source(folder)
    assert len(list(source)) == 3 and source.skipped == [str(folder / "img_1.jpg")]


# ---------------------------------------------------------------- tracebacks -> one line


def test_read_only_outputs_fail_in_one_line_before_loading(tmp_path, artifact, capsys):
    video = _video(tmp_path / "clip.mp4")
    for flag in ("--json", "--save"):
        assert run_main(["--model", str(artifact), "--source", str(video), flag, str(READ_ONLY / "out.mp4"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not writable" in err and "codec" not in err
    with pytest.raises(PermissionError, match="choose a writable location"):
        check_writable_file(READ_ONLY / "sub" / "x.jsonl")


def test_an_existing_path_wins_over_camera_index_and_pipeline(tmp_path, artifact, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _video(tmp_path / "v.mp4", frames=3).rename(tmp_path / "2024")
    _video(tmp_path / "party!.mp4", frames=4)
    assert len(list(open_source("2024"))) == 3
    assert len(list(open_source("party!.mp4"))) == 4
    out = tmp_path / "dets.jsonl"
    assert run_main(["--model", str(artifact), "--source", "2024", "--json", str(out), "--quiet"]) == 0
    assert len(out.read_text().splitlines()) == 3


# ---------------------------------------------------------------- security: custom-op library paths


def _marker_library(tmp_path: Path) -> tuple:
    """A shared library whose constructor writes a marker file when it is loaded."""
    marker = tmp_path / "LOADED"
    src = tmp_path / "evil.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void hit(void) {\n'
                   f'  FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("loaded", f); fclose(f); }}\n}}\n')
    lib = tmp_path / "elsewhere" / "libevil.so"
    lib.parent.mkdir()
    try:
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no C compiler to build the marker library ({e})")
    return lib, marker


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_manifest_cannot_make_the_runtime_load_a_library_outside_the_artifact_folder(tmp_path, artifact, backend):
    lib, marker = _marker_library(tmp_path)
    # the control: loading this library really does write the marker
    probe = subprocess.run(["python3", "-c", f"import ctypes; ctypes.CDLL({str(lib)!r})"], timeout=60)
    assert probe.returncode == 0 and marker.read_text() == "loaded"
    marker.unlink()
    if backend == "openvino":
        pytest.importorskip("openvino")
        import openvino as ov

        target = artifact.with_suffix(".xml")
        ov.save_model(ov.convert_model(str(artifact)), str(target))
    else:
        target = artifact
    manifest = read_sidecar(artifact)
    relative = os.path.relpath(lib, target.parent)
    for name in (str(lib), relative, "../elsewhere/libevil.so"):
        write_sidecar(dataclasses.replace(manifest, backend=backend, custom_ops={backend: name}), target)
        with pytest.raises(UnsafeOutputError, match="only a bare file name"):
            Detector(target, backend=backend)
        assert not marker.exists(), f"{name} was loaded"
    # a link beside the artifact that points outside its folder is refused as well
    (target.parent / "libevil.so").symlink_to(lib)
    write_sidecar(dataclasses.replace(manifest, backend=backend, custom_ops={backend: "libevil.so"}), target)
    with pytest.raises(UnsafeOutputError, match="links outside"):
        Detector(target, backend=backend)
    assert not marker.exists()


def test_custom_op_library_accepts_a_bare_name_in_the_artifact_or_configured_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "ext").mkdir()
    (tmp_path / "a" / "libop.so").write_bytes(b"\x7fELF")
    (tmp_path / "ext" / "libother.so").write_bytes(b"\x7fELF")
    artifact = tmp_path / "a" / "m.onnx"
    assert custom_op_library("libop.so", artifact) == tmp_path / "a" / "libop.so"
    assert custom_op_library("libother.so", artifact, [tmp_path / "ext"]) == tmp_path / "ext" / "libother.so"
    assert custom_op_library("libmissing.so", artifact) is None
    with pytest.raises(UnsafeOutputError):
        custom_op_library("..", artifact)


# ---------------------------------------------------------------- silent wrong result: class names vs outputs


def test_manifest_class_names_that_do_not_match_the_outputs_are_refused(tmp_path):
    path = make_blob_artifact(tmp_path, layout="sigmoid")
    manifest = read_sidecar(path)
    write_sidecar(dataclasses.replace(manifest, class_names=manifest.class_names + ["extra"]), path)
    with pytest.raises(ValueError, match="class names"):
        Detector(path)
    json.loads(sidecar_path(path).read_text())  # the user's sidecar is untouched, still valid JSON


# ---------------------------------------------------------------- benches/soak.py (its arithmetic and output, briefly)


def test_soak_bench_reports_rss_and_latency_drift(tmp_path, artifact, capsys):
    from script_loader import load_script

    soak = load_script(Path(__file__).resolve().parents[1] / "benches" / "soak.py", "soak_bench")
    video = _video(tmp_path / "loop.mp4", frames=5)
    code = soak.main(["--model", str(artifact), "--video", str(video), "--minutes", "0.05", "--no-progress"])
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["frames"] > 5  # the video looped
    assert result["rss_baseline_mb"] > 0 and result["p95_first_ms"] > 0 and result["window_s"] > 0
    assert result["load_mean"] >= 0 and result["cpu"]  # figures come with the machine and its load
    assert code == (0 if result["rss_ok"] and result["latency_ok"] else 1)
    assert any(line.startswith("RSS") for line in lines) and any(line.startswith("latency p95") for line in lines)


def test_soak_sample_log_is_resident_from_the_start_and_thins_when_full():
    """The soak's per-frame bookkeeping must not grow during the run (it would read as a leak)."""
    from script_loader import load_script

    samples = load_script(Path(__file__).resolve().parents[1] / "benches" / "_samples.py", "soak_samples")
    log = samples.SampleLog(("t_s", "ms"), capacity=4)
    for t, ms in [(0.5, 10.0), (1.0, 20.0), (5.0, 99.0)]:
        log.append(t, ms)
    assert log.window_p95("ms", 0.0, 2.0) == pytest.approx(19.5)
    buffer = log._data
    for k in range(3, 10):  # beyond the capacity: every other row is kept, in order, in the same buffer
        log.append(float(k + 3), float(k))
    assert log._data is buffer and log.thinned and log.seen == 10
    times = log.column("t_s")
    assert list(times) == sorted(times) and len(log) <= 4 and times[0] == 0.5
    with pytest.raises(ValueError, match="capacity"):
        samples.SampleLog(("t_s",), capacity=1)
