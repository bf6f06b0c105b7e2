"""`edgedet val`/`benchmark` read exactly the data YAML `edgedet train` reads, through the same parser
(runtime.annotations), with the same rules: per-box split CSVs, COCO id clashes, Ultralytics `names`,
bad YOLO label lines and broken YAML give one-line errors naming the fix, in train and val alike."""
import dataclasses
import json

import cv2
import numpy as np
import pytest

from edgedet.cli import main
from edgedet.commands._data_arg import parse_data_arg
from edgedet.config import DataConfig
from edgedet.data import build_dataset
from runtime.annotations.spec import TRAINING_KEYS, DataSpec
from runtime.annotations.splits import read_split_ids
from runtime.datasets import DatasetError, load_dataset
from runtime.testing import make_blob_artifact, make_blob_dataset

_OBJ = ("<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        "<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


def _blob_voc_with_kaggle_csvs(tmp_path, n=10):
    """The toy detector's blob images as VOC (folders renamed) with one split CSV per split holding one
    row per box (`filename,width,height,class,xmin,ymin,xmax,ymax`) -> (root, {split: stems}, boxes per stem)."""
    ann = json.loads(make_blob_dataset(tmp_path / "coco", n=n, seed=3).read_text())
    names = {7: "red", 8: "green", 9: "blue"}
    root = tmp_path / "voc"
    for sub in ("xml", "images", "splits"):
        (root / sub).mkdir(parents=True)
    rows = {"train": [], "val": [], "test": []}
    splits, boxes = {"train": [], "val": [], "test": []}, {}
    for i, im in enumerate(ann["images"]):
        stem = f"cell_{i:03d}"
        split = "test" if i < 4 else "val" if i < 6 else "train"
        splits[split].append(stem)
        cv2.imwrite(str(root / "images" / f"{stem}.png"), cv2.imread(str(tmp_path / "coco" / im["file_name"])))
        objs = [a for a in ann["annotations"] if a["image_id"] == im["id"]]
        boxes[stem] = sorted((names[a["category_id"]], *a["bbox"]) for a in objs)
        xml = "".join(_OBJ.format(name=names[a["category_id"]], x0=a["bbox"][0] + 1, y0=a["bbox"][1] + 1,
                                  x1=a["bbox"][0] + a["bbox"][2], y1=a["bbox"][1] + a["bbox"][3]) for a in objs)
        (root / "xml" / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.png</filename>{xml}</annotation>")
        for a in objs:
            x, y, w, h = a["bbox"]
            rows[split].append(f"{stem}.png,{im['width']},{im['height']},{names[a['category_id']]},{x + 1},{y + 1},{x + w},{y + h}")
    for split, lines in rows.items():
        (root / "splits" / f"{split}.csv").write_text("filename,width,height,class,xmin,ymin,xmax,ymax\n" + "\n".join(lines) + "\n")
    return root, splits, boxes


def _same_records(a, b):
    assert [r.path for r in a] == [r.path for r in b]
    for x, y in zip(a, b):
        assert (x.image_id, x.width, x.height) == (y.image_id, y.width, y.height)
        np.testing.assert_array_equal(x.boxes_xyxy, y.boxes_xyxy)
        np.testing.assert_array_equal(x.labels, y.labels)


def test_val_scores_the_training_yaml_voc_renamed_folders_and_per_box_csv_splits(tmp_path, capsys):
    root, splits, boxes = _blob_voc_with_kaggle_csvs(tmp_path)
    assert sum(len(b) for s in splits["test"] for b in [boxes[s]]) > len(splits["test"])  # some image has several boxes
    yml = tmp_path / "cells.yaml"
    yml.write_text("data:\n  format: voc\n  root: voc\n  voc_annotations: xml\n  voc_images: images\n  voc_splits: splits\n"
                   "  class_names: [red, green, blue]\n  max_size: 256\n")
    train_side = build_dataset(parse_data_arg(str(yml)), "test")
    val_side = load_dataset(yml, "test")
    # One image per file name (the CSV has a row per box), in the CSV's order; the same records both ways.
    assert [r.path.stem for r in val_side.records] == splits["test"]
    _same_records(train_side.records, val_side.records)
    assert val_side.class_names == train_side.class_names == ["red", "green", "blue"]
    r0 = val_side.records[0]
    got = sorted((val_side.class_names[k], x0, y0, x1 - x0, y1 - y0) for k, (x0, y0, x1, y1) in zip(r0.labels, r0.boxes_xyxy.tolist()))
    assert got == boxes[r0.path.stem]  # VOC's 1-based corners map back to the COCO pixels
    model = make_blob_artifact(tmp_path / "m")
    assert main(["val", "--model", str(model), "--data", str(yml), "--split", "test", "--project", str(tmp_path / "runs"),
                 "--no-plots", "--quiet"]) == 0
    m = json.loads((tmp_path / "runs" / "val" / "1" / "metrics.json").read_text())
    assert m["images"] == 4 and m["instances"] == sum(len(boxes[s]) for s in splits["test"]) and m["mAP50"] == pytest.approx(1.0)
    capsys.readouterr()


def test_split_csv_with_a_row_per_box_lists_each_image_once(tmp_path):
    csv = tmp_path / "test.csv"
    csv.write_text("filename,width,height,class,xmin,ymin,xmax,ymax\n"
                   "b.jpg,64,48,cat,1,1,9,9\nb.jpg,64,48,dog,2,2,9,9\na.jpg,64,48,cat,1,1,9,9\nb.jpg,64,48,cat,3,3,9,9\n")
    assert read_split_ids(csv) == ["b", "a"]
    both = tmp_path / "splits.csv"
    both.write_text("image,split\nx.jpg,val\nx.jpg,val\ny.jpg,train\nz.jpg,val\n")
    assert read_split_ids(both, "val") == ["x", "z"] and read_split_ids(both, "train") == ["y"]


def test_val_fraction_hold_out_is_the_one_train_uses(tmp_path, capsys):
    root, _, _ = _blob_voc_with_kaggle_csvs(tmp_path)
    yml = tmp_path / "holdout.yaml"
    yml.write_text(f"format: voc\nroot: {root}\nvoc_annotations: xml\nvoc_images: images\nvoc_splits: none\n"
                   "val_fraction: 0.3\nsplit_seed: 5\nclass_names: [red, green, blue]\n")
    for split in ("train", "val"):
        _same_records(build_dataset(parse_data_arg(str(yml)), split).records, load_dataset(yml, split).records)
    assert len(load_dataset(yml, "val")) == 3
    model = make_blob_artifact(tmp_path / "m")
    assert main(["val", "--model", str(model), "--data", str(yml), "--split", "test", "--project", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "val_fraction the splits are 'train' and 'val', not 'test'" in err


def test_val_knows_every_data_config_key_with_the_same_defaults(tmp_path):
    config = {f.name: f for f in dataclasses.fields(DataConfig)}
    spec = {f.name: f for f in dataclasses.fields(DataSpec)}
    assert set(spec) | TRAINING_KEYS == set(config) and not set(spec) & TRAINING_KEYS
    for name, f in spec.items():
        spec_default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        cfg = config[name]
        cfg_default = cfg.default if cfg.default is not dataclasses.MISSING else cfg.default_factory()
        assert spec_default == cfg_default, name
    # What train refuses, val refuses: a misspelt key is named, not ignored.
    yml = tmp_path / "typo.yaml"
    yml.write_text("format: voc\nroot: .\nvoc_split: splits\n")
    with pytest.raises(ValueError, match="unknown config key 'data.voc_split'"):
        parse_data_arg(str(yml))
    with pytest.raises(DatasetError, match="unknown config key '.*data.voc_split'"):
        load_dataset(yml, "val")


def _yolo_set(tmp_path, names_yaml, labels=("0 0.5 0.5 0.25 0.5",), splits=("train", "val", "test")):
    ds = tmp_path / "yolo"
    for split in splits:
        (ds / "images" / split).mkdir(parents=True)
        (ds / "labels" / split).mkdir(parents=True)
        cv2.imwrite(str(ds / "images" / split / "0.jpg"), np.zeros((40, 80, 3), np.uint8))
        (ds / "labels" / split / "0.txt").write_text("\n".join(labels) + "\n")
    yml = tmp_path / "data.yaml"
    yml.write_text(f"path: yolo\ntrain: images/train\nval: images/val\ntest: images/test\n{names_yaml}\n")
    return yml


def test_ultralytics_data_yaml_test_split_reads_the_same_both_ways(tmp_path):
    yml = _yolo_set(tmp_path, "names:\n  0: cat\n  1: bird")
    cfg = parse_data_arg(str(yml))
    assert cfg.test_ann == "images/test"
    _same_records(build_dataset(cfg, "test").records, load_dataset(yml, "test").records)
    np.testing.assert_allclose(load_dataset(yml, "test").records[0].boxes_xyxy, [[30, 10, 50, 30]])
    _same_records(build_dataset(cfg, "val").records, load_dataset(yml, "val").records)


@pytest.mark.parametrize("names, message", [
    ("names:\n  0: cat\n  2: bird", r"'names' ids \[0, 2\] are not 0..1.*placeholder"),
    ("names: cat", r"'names' is the single string 'cat'.*names: \[cat\]"),
    ("nc: 3\nnames: [cat, bird]", r"'nc' is 3 but 'names' has 2"),
])
def test_ultralytics_names_that_would_shift_classes_are_refused_in_train_and_val(tmp_path, capsys, names, message):
    yml = _yolo_set(tmp_path, names)
    with pytest.raises(ValueError, match=message):
        parse_data_arg(str(yml))
    with pytest.raises(DatasetError, match=message):
        load_dataset(yml, "val")
    model = make_blob_artifact(tmp_path / "m")
    for argv in (["train", "--model", "detr", "--data", str(yml)],
                 ["val", "--model", str(model), "--data", str(yml), "--project", str(tmp_path / "r")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(yml) in err, err


@pytest.mark.parametrize("line, message", [
    ("0 0.5 1.7 0.25 0.5", r"0\.txt:2: coordinates must be normalised to \[0, 1\]"),
    ("5 0.5 0.5 0.25 0.5", r"0\.txt:2: class 5 outside 0..1"),
    ("0 0.5 0.5", r"0\.txt:2: expected 'class cx cy w h', got 3 values"),
])
def test_bad_yolo_label_lines_get_the_same_one_line_error_in_train_and_val(tmp_path, capsys, line, message):
    yml = _yolo_set(tmp_path, "names: [cat, bird]", labels=("1 0.5 0.5 0.25 0.5", line))
    with pytest.raises(ValueError, match=message):
        build_dataset(parse_data_arg(str(yml)), "val")
    with pytest.raises(DatasetError, match=message):
        load_dataset(yml, "val")
    model = make_blob_artifact(tmp_path / "m")
    assert main(["val", "--model", str(model), "--data", str(yml), "--project", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "labels/val/0.txt:2" in err


def test_val_on_a_data_yaml_with_a_syntax_error_is_one_line(tmp_path, capsys):
    yml = tmp_path / "data.yaml"
    yml.write_text("path: yolo\ntrain: images/train\nnames: [cat, bird\n")
    model = make_blob_artifact(tmp_path / "m")
    for argv in (["val", "--model", str(model), "--data", str(yml)],
                 ["benchmark", "--model", str(model), "--data", str(yml)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{yml} is not valid YAML" in err and "line 4" in err, err


def _coco_with(tmp_path, images, annotations):
    folder = tmp_path / "coco"
    folder.mkdir(exist_ok=True)
    for im in images:
        cv2.imwrite(str(folder / im["file_name"]), np.zeros((30, 40, 3), np.uint8))
    ann = folder / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cat"}]}))
    return ann


def _im(i, name):
    return {"id": i, "file_name": name, "width": 40, "height": 30}


def _box(i, image_id):
    return {"id": i, "image_id": image_id, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0}


@pytest.mark.parametrize("images, annotations, message", [
    ([_im(1, "a.png"), _im(1, "b.png")], [_box(1, 1)], r"image id 1 is given to 2 images \(a.png, b.png\)"),
    ([_im(1, "a.png"), _im(2, "a.png")], [_box(1, 1)], r"file a.png is listed under image ids 1, 2"),
    ([_im(1, "a.png")], [_box(1, 1), _box(2, 9), _box(3, 9)], r"2 annotation\(s\) point at image id\(s\) not in 'images' \(e.g. 9\)"),
])
def test_coco_id_clashes_are_refused_in_train_and_val(tmp_path, images, annotations, message):
    ann = _coco_with(tmp_path, images, annotations)
    cfg = DataConfig(format="coco", root=str(ann.parent), val_ann=str(ann))
    with pytest.raises(ValueError, match=message):
        build_dataset(cfg, "val")
    with pytest.raises(DatasetError, match=message):
        load_dataset(ann, "val")


def test_coco_test_split_from_test_ann(tmp_path):
    ann = _coco_with(tmp_path, [_im(1, "a.png"), _im(2, "b.png")], [_box(1, 1)])
    yml = tmp_path / "coco.yaml"
    yml.write_text(f"format: coco\nroot: coco\ntrain_ann: {ann}\ntest_ann: coco/instances.json\n")
    _same_records(build_dataset(parse_data_arg(str(yml)), "test").records, load_dataset(yml, "test").records)
    with pytest.raises(FileNotFoundError, match="set data.val_ann"):
        load_dataset(yml, "val")


def test_bccd_with_kaggle_per_box_csv_splits_reads_as_its_txt_splits(tmp_path, shared):
    """BCCD's own test split written as the per-box CSV Kaggle/Roboflow export: the same 72 images, not one per box."""
    import xml.etree.ElementTree as ET

    bccd = shared / "data" / "bccd"
    stems = (bccd / "ImageSets" / "Main" / "test.txt").read_text().split()
    rows = ["filename,width,height,class,xmin,ymin,xmax,ymax"]
    for stem in stems:
        for obj in ET.parse(bccd / "Annotations" / f"{stem}.xml").getroot().iter("object"):
            b = obj.find("bndbox")
            rows.append(",".join([f"{stem}.jpg", "640", "480", obj.findtext("name").strip()]
                                 + [b.findtext(k).strip() for k in ("xmin", "ymin", "xmax", "ymax")]))
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "test.csv").write_text("\n".join(rows) + "\n")
    yml = tmp_path / "bccd.yaml"
    yml.write_text(f"format: voc\nroot: {bccd}\nvoc_splits: {tmp_path / 'splits'}\n")
    from_csv = load_dataset(yml, "test")
    from_txt = load_dataset(bccd, "test")
    assert len(rows) - 1 > 10 * len(stems) and len(from_csv) == len(stems) == 72
    _same_records(from_csv.records, from_txt.records)
    _same_records(build_dataset(parse_data_arg(str(yml)), "test").records, from_csv.records)


def test_yolo_folder_and_format_less_yaml(tmp_path):
    yml = _yolo_set(tmp_path, "names: [cat, bird]")
    (tmp_path / "yolo" / "data.yaml").write_text("names: [cat, bird]\n")  # a folder whose data.yaml only names classes
    folder = load_dataset(tmp_path / "yolo", "test")
    _same_records(folder.records, load_dataset(yml, "test").records)
    assert folder.class_names == ["cat", "bird"]
    bare = tmp_path / "bare.yaml"
    bare.write_text("root: yolo\n")
    with pytest.raises(DatasetError, match="names no data format: add 'format: coco', 'voc' or 'yolo'"):
        load_dataset(bare, "val")


def test_the_shared_parsers_import_without_torch_edgedet_or_pillow(tmp_path):
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    yml = _yolo_set(tmp_path, "names: [cat, bird]", labels=("1 0.5 0.5 0.25 0.5",))
    script = textwrap.dedent(f"""
        import sys
        for name in ("torch", "edgedet", "converters", "PIL"):
            sys.modules[name] = None  # any import of them now raises ImportError
        from runtime.datasets import load_dataset
        ds = load_dataset({str(yml)!r}, "test")
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "edgedet", "converters") and sys.modules[m] is not None)
        print(len(ds), ds.records[0].boxes_xyxy.tolist(), ds.records[0].labels.tolist(), leaked)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1 [[30.0, 10.0, 50.0, 30.0]] [1] []"
