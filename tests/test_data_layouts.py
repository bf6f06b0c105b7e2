"""Dataset layouts a new user already has: Ultralytics data.yaml, VOC with other folder names and no
split files, split lists as CSV; and `--data experiment.yaml` refused with a pointer to --config."""
import logging

import cv2
import numpy as np
import pytest

from edgedet.commands._data_arg import parse_data_arg
from edgedet.config import DataConfig
from edgedet.data import build_dataset

_XML = ("<annotation><size><width>64</width><height>48</height></size><object><name>{name}</name>"
        "<bndbox><xmin>5</xmin><ymin>6</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>")


def _voc(root, n=10, ann="Annotations", img="JPEGImages"):
    (root / ann).mkdir(parents=True)
    (root / img).mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(root / img / f"im{i:02d}.jpg"), np.full((48, 64, 3), 100, np.uint8))
        (root / ann / f"im{i:02d}.xml").write_text(_XML.format(name="cell" if i % 2 else "dot"))
    return root


def test_ultralytics_data_yaml_is_read_as_yolo(tmp_path):
    ds = tmp_path / "coco8"
    for split in ("train", "val"):
        (ds / "images" / split).mkdir(parents=True)
        (ds / "labels" / split).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(ds / "images" / split / f"{i}.jpg"), np.zeros((40, 80, 3), np.uint8))
            (ds / "labels" / split / f"{i}.txt").write_text("1 0.5 0.5 0.25 0.5\n")
    yml = tmp_path / "data.yaml"
    yml.write_text("path: coco8\ntrain: images/train\nval: images/val\nnames:\n  0: person\n  1: bicycle\n")
    cfg = parse_data_arg(str(yml))
    assert cfg.format == "yolo" and cfg.class_names == ["person", "bicycle"]
    val = build_dataset(cfg, "val")
    assert len(val) == 2 and val.class_names == ["person", "bicycle"]
    np.testing.assert_allclose(val.records[0].boxes_xyxy, [[30, 10, 50, 30]])
    assert val.records[0].labels.tolist() == [1]


def test_experiment_yaml_as_data_is_refused_with_a_pointer(tmp_path):
    yml = tmp_path / "exp.yaml"
    yml.write_text("model:\n  name: dino\ndata:\n  format: synthetic\ntrain:\n  epochs: 3\n")
    with pytest.raises(ValueError, match=r"--config .*exp.yaml"):
        parse_data_arg(str(yml))
    assert parse_data_arg(str(yml), allow_sections=True).format == "synthetic"  # eval: the checkpoint fixes the rest


def test_voc_folder_names_and_val_fraction(tmp_path, caplog):
    root = _voc(tmp_path / "voc", n=10, ann="xml", img="images")
    cfg = DataConfig(format="voc", root=str(root), voc_annotations="xml", voc_images="images", val_fraction=0.2, split_seed=1)
    with caplog.at_level(logging.INFO):
        train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val)) == (8, 2)
    assert not {r.path.name for r in train.records} & {r.path.name for r in val.records}
    assert "voc:val: 2 images" in caplog.text  # split sizes are printed
    again = build_dataset(cfg, "val")  # the same seed gives the same split (train and eval agree)
    assert [r.path.name for r in again.records] == [r.path.name for r in val.records]
    with pytest.raises(FileNotFoundError, match="val_fraction"):
        build_dataset(DataConfig(format="voc", root=str(root), voc_annotations="xml", voc_images="images"), "val")
    with pytest.raises(FileNotFoundError, match="voc_images"):
        build_dataset(DataConfig(format="voc", root=str(root), voc_annotations="xml"), "val")


def test_voc_splits_from_csv(tmp_path):
    root = _voc(tmp_path / "voc", n=6)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    rows = ["image,split"] + [f"im{i:02d}.jpg,{'val' if i < 2 else 'train'}" for i in range(6)]
    (root / "ImageSets" / "Main" / "splits.csv").write_text("\n".join(rows) + "\n")
    cfg = DataConfig(format="voc", root=str(root))
    assert [r.path.name for r in build_dataset(cfg, "val").records] == ["im00.jpg", "im01.jpg"]
    assert len(build_dataset(cfg, "train")) == 4
