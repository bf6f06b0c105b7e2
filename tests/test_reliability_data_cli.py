"""Issue #12: bad data and bad arguments to `edgedet` give one line that says what to do, never a silent result."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgedet.cli import main as edgedet_main
from edgedet.config import DataConfig
from edgedet.data import build_dataset
from edgedet.data.io import DataFormatError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _one_line_error(capsys, argv, match: str) -> str:
    assert edgedet_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert "Traceback" not in err
    return err


def _voc(root: Path, n: int = 12, names=("cat", "dog")) -> Path:
    """n JPEG images with one object each; class names cycle through `names`."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for i in range(n):
        img = np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "JPEGImages" / f"im{i}.jpg"), img)
        name = names[i % len(names)]
        (root / "Annotations" / f"im{i}.xml").write_text(
            f"<annotation><filename>im{i}.jpg</filename><object><name>{name}</name><difficult>0</difficult>"
            "<bndbox><xmin>5</xmin><ymin>5</ymin><xmax>40</xmax><ymax>30</ymax></bndbox></object></annotation>")
    split = root / "ImageSets" / "Main"
    split.mkdir(parents=True)
    (split / "train.txt").write_text("".join(f"im{i}\n" for i in range(n)))
    return root


# ---------------------------------------------------------------- corrupt data: truncated JPEG bodies


def test_truncated_jpeg_body_is_named_never_trained_as_grey(tmp_path, caplog):
    root = _voc(tmp_path / "voc")
    jpg = root / "JPEGImages" / "im3.jpg"
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])  # header intact, body cut
    assert cv2.imread(str(jpg)) is not None  # OpenCV alone would decode it (partly grey) without a word
    ds = build_dataset(DataConfig(format="voc", root=str(root)), "train")
    with pytest.raises(DataFormatError, match="im3.jpg is truncated"):
        ds[3]
    with caplog.at_level(logging.WARNING):
        skipping = build_dataset(DataConfig(format="voc", root=str(root), skip_corrupt=True), "train")
    assert len(skipping) == 11 and "im3.jpg" in caplog.text
    assert all(r.path != jpg for r in skipping.records)
    skipping[3]  # the next images load


# ---------------------------------------------------------------- silent results: splits and classes


def test_unknown_split_of_synthetic_data_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="splits 'train' and 'val', not 'bogus'"):
        build_dataset(DataConfig(format="synthetic", synthetic_val_images=2), "bogus")
    assert not (tmp_path / "synthetic" / "bogus").exists() and not list(tmp_path.rglob("*bogus*"))


def test_misspelt_class_in_one_annotation_file_is_reported(tmp_path, caplog):
    root = _voc(tmp_path / "voc")
    xml = root / "Annotations" / "im5.xml"
    xml.write_text(xml.read_text().replace("<name>dog</name>", "<name>dgo</name>"))
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(DataConfig(format="voc", root=str(root)), "train")
    assert ds.class_names == ["cat", "dgo", "dog"]  # what the files say ...
    assert "class 'dgo' appears only in" in caplog.text and "im5.xml" in caplog.text  # ... and where it is odd
    with pytest.raises(DataFormatError, match="class 'dgo' is not one of"):  # with class_names given: refused
        build_dataset(DataConfig(format="voc", root=str(root), class_names=["cat", "dog"]), "train")


def test_classes_present_in_only_one_split_are_reported(caplog):
    from edgedet.data.checks import report_split_classes

    class DS:
        def __init__(self, labels):
            self.class_names = ["a", "b", "c"]
            self.records = [type("R", (), {"labels": np.array(ls, np.int64)})() for ls in labels]

    train, val = DS([[0, 1]] * 30), DS([[0, 2]] * 5)
    with caplog.at_level(logging.WARNING):
        notes = report_split_classes(train, val)
    assert any("'b' has 30 objects in train but none in val" in n for n in notes)
    assert any("'c' has 5 objects in val but none in train" in n for n in notes)
    assert "'b'" in caplog.text


def test_coco_file_without_categories_is_one_line(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": []}))
    data = tmp_path / "data.yaml"
    data.write_text(f"format: coco\nroot: {tmp_path / 'images'}\ntrain_ann: {ann}\nval_ann: {ann}\n")
    with pytest.raises(DataFormatError, match="lists no categories"):
        build_dataset(DataConfig(format="coco", root=str(tmp_path / "images"), train_ann=str(ann)), "train")
    _one_line_error(capsys, ["train", "--model", "detr", "--data", str(data), "--output", str(tmp_path / "run"),
                             "--no-progress"], "lists no categories")
    assert not (tmp_path / "run" / "last.pth").exists()


# ---------------------------------------------------------------- tracebacks -> one line


def test_yaml_syntax_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "exp.yaml"
    bad.write_text("model:\n  name: detr\n   num_queries: [10\n")
    err = _one_line_error(capsys, ["train", "--config", str(bad)], "is not valid YAML")
    assert "exp.yaml" in err and "line" in err
    _one_line_error(capsys, ["train", "--model", "detr", "--data", str(bad)], "is not valid YAML")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only PyTorch")
def test_cuda_device_on_cpu_only_torch_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path))
    _one_line_error(capsys, ["train", "--model", "detr", "--device", "cuda", "--output", str(tmp_path / "r"),
                             "--set", "data.synthetic_train_images=2", "--set", "data.synthetic_val_images=2"],
                    "sees no CUDA GPU")
    _one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "x.pth"), "--device", "cuda"], "sees no CUDA GPU")


def test_read_only_train_output_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path))
    _one_line_error(capsys, ["train", "--model", "detr", "--output", "/proc/edgedet-run", "--epochs", "1",
                             "--set", "data.synthetic_train_images=2", "--set", "data.synthetic_val_images=2"],
                    "choose a writable folder")


# ---------------------------------------------------------------- official checkpoints: no guessing, no overwriting


def test_bare_official_state_dict_needs_nheads_and_convert_never_replaces_its_source(tmp_path, capsys):
    from edgedet.checkpoints import load_official

    src = SHARED / "fixtures" / "reference" / "dab_detr" / "checkpoint.pth"
    if not src.is_file():
        pytest.skip("reference fixtures not available")
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(src, map_location="cpu", weights_only=True)["model"], bare)
    with pytest.raises(ValueError, match="attention heads is not visible.*--set nheads=N"):
        load_official(bare)
    before = sha(bare)
    _one_line_error(capsys, ["convert-checkpoint", str(bare), "-o", str(bare), "--set", "nheads=4"], "is the input")
    link = tmp_path / "link.pth"
    link.symlink_to(bare)
    _one_line_error(capsys, ["convert-checkpoint", str(bare), "-o", str(link), "--set", "nheads=4"], "is the input")
    assert sha(bare) == before
