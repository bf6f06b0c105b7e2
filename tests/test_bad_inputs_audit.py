"""Issue #26's bad-input table, second part (fast cases, CI): the cases an audit of the issue found without a
fixture-free test or still misbehaving (folder options on files, example scripts' outputs, fsynced saves,
incomplete checkpoints given to export/predict, TensorRT caches). Shared helpers: tests/bad_input_helpers.py.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.manifest import read_sidecar, sidecar_path, write_sidecar
from runtime.safety import UnsafeOutputError, refuse_output_over_input
from runtime.testing import make_blob_artifact

from bad_input_helpers import _edit_sidecar, _images, artifact, one_line, sha  # noqa: F401 (artifact: a fixture)


# ---------------------------------------------------------------- audit gap-fill: cases named by the issue, fixture-free


def test_prompt_file_and_sidecar_saves_are_fsynced_before_the_rename_and_interruptions_keep_the_old_file(tmp_path, monkeypatch):
    from converters.prompted import write_prompt_bank

    bank = write_prompt_bank(tmp_path / "bank.npz", ["a"], np.ones((1, 4), np.float32))
    before = sha(bank)
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", Path(b).name)), real_replace(a, b))[1])
    path = make_blob_artifact(tmp_path / "m")
    write_sidecar(read_sidecar(path), path)
    assert events.index("fsync") < events.index(("replace", "blob.onnx.edgedet.json"))

    def dying_savez(f, **arrays):
        f.write(b"PK half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", dying_savez)
    with pytest.raises(OSError, match="No space"):
        write_prompt_bank(bank, ["b"], np.ones((1, 4), np.float32))
    assert sha(bank) == before and sorted(p.name for p in tmp_path.iterdir()) == ["bank.npz", "m"]  # no temp left


def test_load_report_is_written_atomically(tmp_path, monkeypatch):
    from edgedet.engine.finetune import LoadReport
    from runtime import atomic

    fields = {f.name: ([] if "list" in str(f.type).lower() or "List" in str(f.type) else "x")
              for f in dataclasses.fields(LoadReport) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    try:
        report = LoadReport(**fields)
    except TypeError:
        pytest.skip("LoadReport's fields changed; the atomic write is covered by runtime.atomic's tests")
    (tmp_path / "load_report.json").write_text("the previous report")
    monkeypatch.setattr(atomic, "_fsync_file", lambda p: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):
        report.save(tmp_path)
    assert (tmp_path / "load_report.json").read_text() == "the previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["load_report.json"]


@pytest.mark.parametrize("command", ["predict", "val", "benchmark"])
def test_project_that_is_a_file_is_one_line_naming_it(tmp_path, artifact, capsys, command):
    from edgedet.cli import main

    before = sha(artifact)
    from runtime.testing import BLOB_CLASSES

    if command == "predict":
        source = ["--source", str(_images(tmp_path / "in"))]
    else:  # a YOLO set with the model's classes, so only --project is wrong
        _images(tmp_path / "yolo" / "images" / "val", 1)
        (tmp_path / "yolo" / "labels" / "val").mkdir(parents=True)
        (tmp_path / "yolo" / "labels" / "val" / "img_0.txt").write_text("0 0.5 0.5 0.25 0.5\n")
        (tmp_path / "yolo" / "data.yaml").write_text(f"path: {tmp_path / 'yolo'}\nval: images/val\nnames: {list(BLOB_CLASSES)}\n")
        source = ["--data", str(tmp_path / "yolo" / "data.yaml")]
    assert main([command, "--model", str(artifact), *source, "--project", str(artifact)]) == 2
    err = one_line(capsys.readouterr().err.strip().splitlines()[-1])
    assert f"{artifact} is a file, not a folder" in err and "Errno" not in err
    assert sha(artifact) == before


def test_making_a_folder_where_a_file_stands_is_one_line(tmp_path):
    from runtime.paths import folder_error_line

    (tmp_path / "ck.pth").write_bytes(b"weights")
    for target in (tmp_path / "ck.pth", tmp_path / "ck.pth" / "sub"):
        with pytest.raises(OSError) as e:
            target.mkdir(parents=True, exist_ok=True)
        assert folder_error_line(e.value).endswith(f"{tmp_path / 'ck.pth'} is a file, not a folder; pass a folder path instead")


def test_update_that_is_not_yaml_is_one_line_without_a_parser_error(capsys, tmp_path):
    from edgedet.cli import main

    assert main(["train", "--config", "rtdetrv2_r18vd", "--update", "RTDETRTransformerv2.num_points=[4,3",
                 "--data", "synthetic", "--output", str(tmp_path / "o")]) == 2
    err = one_line(capsys.readouterr().err.strip().splitlines()[-1])
    assert "--update RTDETRTransformerv2.num_points=[4,3" in err and "not valid YAML" in err and "ParserError" not in err
    assert not (tmp_path / "o").exists()


def test_updates_given_as_one_string_are_one_line():
    from edgedet.checkpoints.official_spec import OfficialCheckpointError
    from edgedet.checkpoints.rtdetr_official import parse_updates

    with pytest.raises(OfficialCheckpointError, match=r"list of KEY=VALUE strings.*not the string 'num_classes=5'") as e:
        parse_updates("num_classes=5")
    one_line(e.value)
    assert parse_updates(["num_classes=5", "A.b=[4,3]"]) == {"num_classes": 5, "A.b": [4, 3]}


def test_discrete_method_from_a_dsp_config_name_is_said_on_load(caplog):
    from edgedet.checkpoints.rtdetr_official import cross_attn_updates, resolve_config

    with caplog.at_level(logging.WARNING):
        assert cross_attn_updates("w/best.pth", "rtdetrv2_r18vd_dsp", []) == []
    assert "sampling: discrete (from config rtdetrv2_r18vd_dsp" in caplog.text
    assert resolve_config("rtdetrv2_r18vd_dsp", [])["RTDETRTransformerv2"]["cross_attn_method"] == "discrete"


@pytest.mark.parametrize("script, flag", [("camera_demo.py", "--save"), ("jetson_csi.py", "--json")])
def test_example_outputs_over_the_models_sidecar_are_refused(tmp_path, artifact, capsys, monkeypatch, script, flag):
    import sys

    from script_loader import load_script

    link = tmp_path / "out.jsonl"
    link.symlink_to(sidecar_path(artifact))
    before = sha(sidecar_path(artifact))
    module = load_script(Path(__file__).resolve().parents[1] / "examples" / script, script[:-3])
    monkeypatch.setattr(module, "Detector", lambda *a, **k: pytest.fail("the model opened before the outputs were checked"))
    monkeypatch.setattr(sys, "argv", [script, "--model", str(artifact), flag, str(link)])
    with pytest.raises(SystemExit) as e:
        module.main()
    assert e.value.code == 2 and "a file of the model" in one_line(capsys.readouterr().err.strip().splitlines()[-1])
    assert sha(sidecar_path(artifact)) == before


def test_missing_relative_coco_annotation_names_both_places_looked(tmp_path, monkeypatch):
    from edgedet.config import DataConfig
    from edgedet.data import build_dataset

    root = tmp_path / "coco"
    root.mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(format="coco", root=str(root), train_ann="coco/annotations/instances_train.json")
    with pytest.raises(FileNotFoundError) as e:
        build_dataset(cfg, "train")
    err = one_line(e.value)
    assert f"is neither {tmp_path / 'coco/annotations/instances_train.json'} (from the current folder)" in err
    assert f"nor {root / 'coco/annotations/instances_train.json'} (under data.root); fix data.train_ann" in err


def test_visual_prompt_example_refuses_saving_prompts_over_the_text_bank_in_one_line(tmp_path, capsys, monkeypatch):
    import sys

    from script_loader import load_script

    detector = make_blob_artifact(tmp_path / "art", name="trex-detector")
    write_sidecar(dataclasses.replace(read_sidecar(detector), extra={"prompted": {"text_bank": "text_prompts.npz"}}), detector)
    bank = tmp_path / "art" / "text_prompts.npz"
    np.savez(bank, names=np.array(["a"]), embeddings=np.ones((1, 4), np.float32))
    link = tmp_path / "mine.npz"
    link.symlink_to(bank)
    before = sha(bank)
    module = load_script(Path(__file__).resolve().parents[1] / "examples" / "visual_prompt.py", "visual_prompt")
    monkeypatch.setattr(sys, "argv", ["visual_prompt.py", "run", "--artifacts", str(tmp_path / "art"),
                                      "--load-prompts", str(tmp_path / "old.npz"), "--save-prompts", str(link)])
    with pytest.raises(SystemExit) as e:
        module.main()
    assert e.value.code == 1 and "text_prompts.npz" in one_line(capsys.readouterr().err.strip())
    assert sha(bank) == before


def test_eval_json_through_a_link_to_the_checkpoint_is_refused_before_loading(tmp_path, capsys):
    from edgedet.cli import main

    ckpt = tmp_path / "best.pth"
    ckpt.write_bytes(b"the user's weights")
    link = tmp_path / "metrics.json"
    link.symlink_to(ckpt)
    assert main(["eval", "--checkpoint", str(ckpt), "--data", "synthetic", "--json", str(link)]) == 2
    assert f"is the input {ckpt}" in one_line(capsys.readouterr().err.strip())
    assert ckpt.read_bytes() == b"the user's weights"


@pytest.mark.parametrize("command", ["export", "predict"])
def test_edgedet_checkpoint_without_config_is_named_by_export_and_predict(tmp_path, capsys, command):
    from edgedet.cli import main

    path = tmp_path / "best.pth"
    torch.save({"format": "edgedet-checkpoint-v1", "model": {"w": torch.zeros(1)}}, path)
    tail = ["--output", str(tmp_path / "x.onnx")] if command == "export" else ["--source", str(_images(tmp_path / "in"))]
    assert main([command, "--model", str(path), *tail]) == 2
    err = one_line(capsys.readouterr().err.strip().splitlines()[-1])
    assert "lacks its 'config' entry" in err and "not an official one" not in err  # was: "use it as it is"


def test_outputs_over_tensorrt_caches_and_plugin_library_are_refused(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    for name in ("m.timing.cache", "m.calib.cache", "libedgedet_trt_msda.so", "m.engine.edgedet.json"):
        (tmp_path / name).write_bytes(b"x")
        link = tmp_path / f"link-{name}"
        link.symlink_to(tmp_path / name)
        for out in (tmp_path / name, link):
            with pytest.raises(UnsafeOutputError, match="a file of the model"):
                refuse_output_over_input([out], [engine])
