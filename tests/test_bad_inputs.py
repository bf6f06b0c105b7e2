"""Issue #26, the bad-input table (fast cases, CI): the model's own files are never overwritten, exports are
atomic, manifests are checked when an artifact opens, and each bad input ends in one line that says what to do.

One test per case; each failed before its fix. Data-set parsing and the live view have their own tests.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from runtime.backends.base import ArtifactError
from runtime.cli import main as run_main
from runtime.detector import Detector
from runtime.manifest import ManifestError, read_sidecar, sidecar_path, write_sidecar
from runtime.safety import UnsafeOutputError, artifact_files, refuse_output_over_input
from runtime.testing import make_blob_artifact

from bad_input_helpers import _edit_sidecar, _images, artifact, one_line, sha  # noqa: F401 (artifact: a fixture)


# ---------------------------------------------------------------- data loss: outputs over the model's own files


def test_run_json_over_the_artifacts_sidecar_is_refused(tmp_path, artifact, capsys):
    before = sha(sidecar_path(artifact))
    code = run_main(["--model", str(artifact), "--source", str(_images(tmp_path / "in")), "--json",
                     str(sidecar_path(artifact)), "--quiet"])
    assert code == 2 and "a file of the model" in one_line(capsys.readouterr().err)
    assert sha(sidecar_path(artifact)) == before


def test_run_json_through_a_link_to_the_sidecar_is_refused(tmp_path, artifact, capsys):
    link = tmp_path / "dets.jsonl"
    link.symlink_to(sidecar_path(artifact))
    before = sha(sidecar_path(artifact))
    assert run_main(["--model", str(artifact), "--source", str(_images(tmp_path / "in")), "--json", str(link), "--quiet"]) == 2
    assert "a file of the model" in capsys.readouterr().err and sha(sidecar_path(artifact)) == before


def test_outputs_over_openvino_weights_and_custom_op_library_are_refused(tmp_path):
    xml = tmp_path / "m.xml"
    xml.write_text("<net/>")
    (tmp_path / "m.bin").write_bytes(b"\0" * 64)
    (tmp_path / "libedgedet_ov_msda.so").write_bytes(b"\x7fELF")
    (tmp_path / "libcustom.so").write_bytes(b"\x7fELF")
    write_sidecar(dataclasses.replace(read_sidecar(make_blob_artifact(tmp_path / "src")), custom_ops={"openvino": "libcustom.so"}), xml)
    files = {p.name for p in artifact_files(xml)}
    assert {"m.xml", "m.bin", "m.xml.edgedet.json", "libedgedet_ov_msda.so", "libcustom.so"} <= files
    for name in ("m.bin", "libedgedet_ov_msda.so", "libcustom.so", "m.xml.edgedet.json"):
        with pytest.raises(UnsafeOutputError, match="a file of the model"):
            refuse_output_over_input([tmp_path / name], ["clip.mp4", xml])


def test_several_streams_refuse_json_over_the_sidecar(tmp_path, artifact, capsys):
    before = sha(sidecar_path(artifact))
    code = run_main(["--model", str(artifact), "--source", str(_images(tmp_path / "a")), "--source", str(_images(tmp_path / "b")),
                     "--json", str(sidecar_path(artifact)), "--quiet"])
    assert code == 2 and "a file of the model" in capsys.readouterr().err and sha(sidecar_path(artifact)) == before


def test_prompt_file_saved_from_the_page_never_replaces_the_text_bank(tmp_path):
    from runtime.serve.prompts import LivePromptedDetector

    detector = make_blob_artifact(tmp_path / "art", name="detector")
    manifest = read_sidecar(detector)
    write_sidecar(dataclasses.replace(manifest, extra={"prompted": {"text_bank": "text_prompts.npz"}}), detector)
    bank = tmp_path / "art" / "text_prompts.npz"
    np.savez(bank, names=np.array(["a"]), embeddings=np.ones((1, 4), np.float32))
    before = sha(bank)

    class Saver:
        def save_prompts(self, path):
            Path(path).write_bytes(b"new")
            return Path(path)

    live = LivePromptedDetector(Saver(), tmp_path / "art", inputs=[detector])
    with pytest.raises(UnsafeOutputError, match="text_prompts.npz"):
        live.save("text_prompts", overwrite=True)
    assert sha(bank) == before
    assert live.save("shelf").name == "shelf.npz"  # any other name is fine


def test_train_into_the_folder_of_its_weights_is_refused(tmp_path):
    from _tiny_detector import TINY, TinyConfig
    from edgedet.config import ExperimentConfig, TrainConfig
    from edgedet.engine.trainer import train

    out = tmp_path / "run"
    out.mkdir()
    weights = out / "best.pth"
    weights.write_bytes(b"the user's fine-tuned weights")
    cfg = ExperimentConfig(model=TinyConfig(name=TINY, num_classes=3, weights=str(weights)),
                           train=TrainConfig(output_dir=str(out), epochs=1))
    with pytest.raises(UnsafeOutputError, match="best.pth"):
        train(cfg, progress=False, exist_ok=True)
    assert weights.read_bytes() == b"the user's fine-tuned weights"


# ---------------------------------------------------------------- data loss: atomic exports


def test_interrupted_onnx_save_leaves_the_previous_artifact(tmp_path, monkeypatch):
    import onnx

    from converters.onnx.export import finalize_onnx

    path = make_blob_artifact(tmp_path)
    before, side_before = sha(path), sha(sidecar_path(path))
    raw = tmp_path / "raw.onnx"
    shutil.copy(path, raw)

    def dying_save(proto, target, *a, **k):
        Path(target).write_bytes(b"half an ONNX file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", dying_save)
    with pytest.raises(OSError, match="No space"):
        finalize_onnx(path, read_sidecar(path), simplify=False, source=raw)
    assert sha(path) == before and sha(sidecar_path(path)) == side_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.onnx", "blob.onnx.edgedet.json"]  # no temp left


def test_interrupted_openvino_save_leaves_the_previous_xml_and_bin(tmp_path, monkeypatch):
    ov = pytest.importorskip("openvino")
    from converters.openvino.convert import convert_openvino

    onnx_path = make_blob_artifact(tmp_path / "src")
    out = tmp_path / "out" / "m.xml"
    convert_openvino(onnx_path, out, "fp32", read_sidecar(onnx_path))
    before = {p.name: sha(p) for p in out.parent.iterdir()}
    assert set(before) == {"m.xml", "m.bin", "m.xml.edgedet.json"}
    real = ov.save_model

    def dying_save(model, path, **kw):
        real(model, path, **kw)
        Path(path).with_suffix(".bin").write_bytes(b"cut")
        raise RuntimeError("power cut")

    monkeypatch.setattr(ov, "save_model", dying_save)
    with pytest.raises(RuntimeError, match="power cut"):
        convert_openvino(onnx_path, out, "fp32", read_sidecar(onnx_path))
    assert {p.name: sha(p) for p in out.parent.iterdir()} == before


def test_artifact_replaced_after_its_sidecar_was_written_is_refused(tmp_path):
    path = make_blob_artifact(tmp_path)
    assert json.loads(sidecar_path(path).read_text())["extra"]["artifact_files"] == {"blob.onnx": path.stat().st_size}
    other = make_blob_artifact(tmp_path / "other", size_hw=(64, 64), sidecar=False)
    os.replace(other, path)  # a re-export that died before writing its sidecar: the old sidecar stays
    with pytest.raises(ArtifactError, match="interrupted before its sidecar"):
        Detector(path)


def test_artifact_without_sidecar_is_named_in_a_warning(tmp_path, caplog):
    path = make_blob_artifact(tmp_path, embed=True, sidecar=False)
    with caplog.at_level(logging.WARNING):
        Detector(path).close()
    assert "has no sidecar" in caplog.text and "blob.onnx" in caplog.text


def test_export_beside_a_running_model_never_rewrites_its_library_in_place(tmp_path, monkeypatch):
    ov = pytest.importorskip("openvino")
    from converters.openvino import convert

    built = tmp_path / "build" / "libedgedet_ov_msda.so"
    built.parent.mkdir()
    built.write_bytes(b"new library")
    onnx_path = make_blob_artifact(tmp_path / "src")
    real_convert = ov.convert_model
    monkeypatch.setattr(convert, "fused_extension_path", lambda: built)
    monkeypatch.setattr(ov, "convert_model", lambda path, extension=None: real_convert(path))  # the blob has no fused op
    out = tmp_path / "deploy" / "m.xml"
    out.parent.mkdir()
    lib = out.parent / "libedgedet_ov_msda.so"
    lib.write_bytes(b"old library")
    manifest = dataclasses.replace(read_sidecar(onnx_path), msda="fused")
    with open(lib, "rb") as mapped:  # a running process holds the library it loaded
        convert.convert_openvino(onnx_path, out, "fp32", manifest)
        assert mapped.read() == b"old library"  # copy2 in place would have rewritten the file under it
    assert lib.read_bytes() == b"new library" and read_sidecar(out).custom_ops == {"openvino": lib.name}


# ---------------------------------------------------------------- manifests checked when the artifact opens


def test_class_names_count_other_than_the_models_is_refused(tmp_path):
    path = make_blob_artifact(tmp_path, embed=True)
    _edit_sidecar(path, class_names=["red", "green"])
    with pytest.raises(ManifestError, match="lists 2 class names but the model has 3 classes"):
        Detector(path)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_score_threshold_that_is_no_number_is_refused(tmp_path, value):
    path = make_blob_artifact(tmp_path)
    text = sidecar_path(path).read_text().replace('"score_threshold": 0.25', f'"score_threshold": {value}')
    sidecar_path(path).write_text(text)
    with pytest.raises(ManifestError, match="malformed manifest .*blob.onnx.edgedet.json.*score_threshold") as e:
        Detector(path)
    one_line(e.value)


@pytest.mark.parametrize("std", [[0.229, 0.0, 0.225], [0.229, float("nan"), 0.225]])
def test_normalisation_std_of_zero_or_nan_is_refused(tmp_path, std):
    path = make_blob_artifact(tmp_path)
    _edit_sidecar(path, preprocess__std=std)
    with pytest.raises(ManifestError, match="preprocess.std"):
        Detector(path)


def test_manifest_input_size_that_contradicts_the_graph_is_refused_at_open(tmp_path):
    path = make_blob_artifact(tmp_path, size_hw=(96, 128))
    _edit_sidecar(path, preprocess__size=[64, 64])
    with pytest.raises(ManifestError, match="says input 64x64 but the model takes 96x128"):
        Detector(path)


def test_malformed_manifest_is_named(tmp_path):
    path = make_blob_artifact(tmp_path)
    sidecar_path(path).write_text('{"family": "x", "preprocess": {"size": [96, 128]')  # cut short
    with pytest.raises(ManifestError, match="blob.onnx.edgedet.json") as e:
        Detector(path)
    one_line(e.value)


# ---------------------------------------------------------------- RT-DETRv2 sampling method


def test_discrete_rtdetr_checkpoint_takes_its_method_from_the_name(caplog):
    from edgedet.checkpoints.rtdetr_official import cross_attn_updates

    with caplog.at_level(logging.WARNING):
        assert cross_attn_updates("w/rtdetrv2_r18vd_dsp_3x_coco.pth", "rtdetrv2_r18vd", []) == [
            "RTDETRTransformerv2.cross_attn_method=discrete"]
    assert "discrete" in caplog.text and "rtdetrv2_r18vd_dsp_3x_coco" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cross_attn_updates("w/rtdetrv2_r18vd_120e_coco.pth", "rtdetrv2_r18vd", ["num_classes=5"]) == ["num_classes=5"]
    assert "sampling: default" in caplog.text  # said on load: the weights cannot tell
    explicit = ["RTDETRTransformerv2.cross_attn_method=default"]
    assert cross_attn_updates("x_dsp.pth", "rtdetrv2_r18vd", explicit) == explicit  # the user's word wins


def test_discrete_fixture_loads_as_discrete_without_the_update():
    from edgedet.checkpoints import load_official

    d = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "reference" / "rtdetrv2_discrete"
    if not (d / "checkpoint.pth").is_file():
        pytest.skip(f"{d} not available")
    updates = [u for u in json.loads((d / "meta.json").read_text())["config_updates"] if "cross_attn_method" not in u]
    assert load_official(d / "checkpoint.pth", config="rtdetrv2_r18vd", updates=updates).config.cross_attn_method == "discrete"


# ---------------------------------------------------------------- truncated JPEG


def test_truncated_jpeg_is_named_and_counted(tmp_path, artifact, capsys, caplog):
    folder = _images(tmp_path / "in", 3)
    jpg = folder / "img_1.jpg"
    cv2.imwrite(str(jpg), np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])  # header intact, body cut
    assert cv2.imread(str(jpg)) is not None  # OpenCV alone decodes it without naming it
    out = tmp_path / "dets.jsonl"
    with caplog.at_level(logging.WARNING):
        assert run_main(["--model", str(artifact), "--source", str(folder), "--json", str(out), "--quiet"]) == 0
    assert "img_1.jpg is truncated" in caplog.text
    assert "1 truncated" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 3  # processed (as far as it decodes), not dropped


def test_truncated_jpeg_warning_is_the_only_line(tmp_path, capfd, caplog):
    """libjpeg's own "Premature end of JPEG file" (no file named) is held back: our warning says it, naming it."""
    from runtime.image_io import read_image

    jpg = tmp_path / "cut.jpg"
    cv2.imwrite(str(jpg), np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        image, truncated = read_image(jpg)
    assert truncated and image.shape == (96, 128, 3) and "cut.jpg is truncated" in caplog.text
    assert "Premature end" not in capfd.readouterr().err
    os.write(2, b"native stderr restored\n")
    assert "native stderr restored" in capfd.readouterr().err


def test_json_output_folder_is_made_as_saves_is(tmp_path, artifact):
    out = tmp_path / "new" / "deeper" / "dets.jsonl"
    assert run_main(["--model", str(artifact), "--source", str(_images(tmp_path / "in", 2)), "--json", str(out), "--quiet"]) == 0
    assert len(out.read_text().splitlines()) == 2


# ---------------------------------------------------------------- one line, not a traceback


def _evil_pickle(path: Path, legacy: bool = False) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo never",))

    torch.save({"x": Evil()}, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_backbone_weights_that_run_code_are_refused_in_one_line(tmp_path):
    from edgedet.nn.backbone import load_torchvision_weights
    from edgedet.registry import BACKBONES

    with pytest.raises(ValueError, match="posix.system|os.system") as e:
        load_torchvision_weights(BACKBONES.get("resnet10_slim")(), _evil_pickle(tmp_path / "evil.pth"))
    one_line(e.value)


def test_truncated_backbone_weights_are_refused_in_one_line(tmp_path):
    from edgedet.nn.backbone import load_torchvision_weights
    from edgedet.registry import BACKBONES

    resnet = BACKBONES.get("resnet10_slim")()
    path = tmp_path / "r.pth"
    torch.save(resnet.state_dict(), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="is truncated: 300 bytes on disk") as e:
        load_torchvision_weights(resnet, path)
    one_line(e.value)


def test_imagenet_weights_of_another_depth_are_one_line(tmp_path):
    from edgedet.nn.backbone import load_torchvision_weights
    from edgedet.registry import BACKBONES

    path = tmp_path / "resnet18.pth"
    torch.save(BACKBONES.get("resnet18")(frozen_bn=False).state_dict(), path)
    with pytest.raises(ValueError, match=r"tensors have another shape \(e.g. ") as e:
        load_torchvision_weights(BACKBONES.get("resnet10_slim")(), path)
    one_line(e.value)


def test_truncated_prompt_file_is_one_line(tmp_path):
    from runtime.prompted import PromptedDetector

    path = tmp_path / "shelf.npz"
    np.savez(path, names=np.array(["a"]), sums=np.ones((1, 4), np.float32), counts=np.ones(1, np.float32))
    path.write_bytes(path.read_bytes()[:100])
    fake = PromptedDetector.__new__(PromptedDetector)
    fake.dim = 4
    with pytest.raises(ValueError, match="shelf.npz is not a readable prompt file") as e:
        fake.load_prompts(path)
    one_line(e.value)


def test_empty_checkpoint_says_empty(tmp_path):
    from edgedet.engine.checkpoint import CheckpointError, load_checkpoint

    (tmp_path / "last.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)") as e:
        load_checkpoint(tmp_path / "last.pth")
    assert "EOFError" not in one_line(e.value)


@pytest.mark.parametrize("legacy", [False, True])
def test_code_running_checkpoint_names_the_global_not_corrupt(tmp_path, legacy):
    from edgedet.checkpoints.safe_load import safe_torch_load
    from edgedet.engine.checkpoint import CheckpointError, load_checkpoint

    path = _evil_pickle(tmp_path / "ckpt.pth", legacy)
    with pytest.raises(CheckpointError, match="needs the global") as e:
        load_checkpoint(path)
    assert "corrupt" not in one_line(e.value)
    with pytest.raises(ValueError, match="needs the global"):
        safe_torch_load(path)


def test_edgedet_checkpoint_given_to_load_official_says_what_it_is(tmp_path):
    from edgedet.checkpoints import load_official
    from edgedet.checkpoints.official_spec import OfficialCheckpointError

    path = tmp_path / "ours.pth"
    torch.save({"format": "edgedet-checkpoint-v1", "model": {"w": torch.zeros(1)}, "config": {}}, path)
    with pytest.raises(OfficialCheckpointError, match="is an edgedet checkpoint, not an official one") as e:
        load_official(path)
    one_line(e.value)


def test_edgedet_checkpoint_without_config_is_named(tmp_path):
    from edgedet.engine.checkpoint import CheckpointError, load_model

    path = tmp_path / "best.pth"
    torch.save({"format": "edgedet-checkpoint-v1", "model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="lacks its 'config' entry"):
        load_model(path)


def test_scalar_yaml_config_is_refused_in_one_line(tmp_path):
    from edgedet.config import ConfigError, load_experiment

    path = tmp_path / "exp.yaml"
    path.write_text("hello\n")
    with pytest.raises(ConfigError, match="holds a YAML str, not a config") as e:
        load_experiment(path)
    assert "'h'" not in one_line(e.value)


@pytest.mark.parametrize("frame", [np.zeros((0, 0), np.uint8), np.zeros((0, 4, 1), np.uint8), np.zeros(0, np.uint8)])
def test_empty_array_to_the_detector_is_one_line(artifact, frame):
    with Detector(artifact) as det, pytest.raises(ValueError, match="frame is empty") as e:
        det(frame)
    assert "OpenCV" not in one_line(e.value)


def test_truncated_jpegs_read_at_once_from_threads_leave_stderr_working(tmp_path, capfd):
    """Overlapping hold-backs of libjpeg's line must not leave file descriptor 2 pointing at /dev/null."""
    from concurrent.futures import ThreadPoolExecutor

    from runtime.image_io import read_image

    paths = []
    for i in range(8):
        jpg = tmp_path / f"cut{i}.jpg"
        cv2.imwrite(str(jpg), np.random.default_rng(i).integers(0, 255, (240, 320, 3), dtype=np.uint8))
        jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
        paths.append(jpg)
    with ThreadPoolExecutor(4) as pool:
        assert all(truncated for _, truncated in pool.map(read_image, paths * 4))
    capfd.readouterr()
    os.write(2, b"still here\n")
    assert "still here" in capfd.readouterr().err
