"""Data readers: COCO, VOC and YOLO agree on the same boxes, bad files are named or counted,
the real BCCD set loads; batching pads with a mask; loader order is reproducible.
Transforms and synthetic data are tested in test_data_transforms.py / test_data_synthetic.py."""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgedet.config import DataConfig
from edgedet.data import (
    DataFormatError,
    DetectionDataset,
    ImageRecord,
    build_dataloader,
    build_dataset,
    build_transforms,
    collate_fn,
)
from edgedet.registry import UnknownNameError

BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd"
NAMES = ["apple", "banana", "cherry"]  # already sorted, so VOC's sorted names give the same labels
COCO_IDS = [3, 7, 9]  # deliberately not contiguous
# (width, height, [(x0, y0, x1, y1, label)]) in continuous pixel coordinates
IMAGES = [
    (64, 48, [(4, 6, 30, 40, 0), (32, 10, 60, 20, 2)]),
    (80, 60, [(0, 0, 80, 60, 1)]),
    (50, 70, []),
    (40, 40, [(10, 12, 20, 30, 2), (1, 1, 39, 9, 0), (20, 20, 38, 38, 1)]),
]


def _write_images(folder: Path) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h, _) in enumerate(IMAGES):
        img = np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
        p = folder / f"img{i}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def make_coco(root: Path) -> Path:
    _write_images(root / "images")
    images, anns = [], []
    for i, (w, h, boxes) in enumerate(IMAGES):
        images.append({"id": i + 1, "file_name": f"img{i}.png", "width": w, "height": h})
        for x0, y0, x1, y1, lab in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": COCO_IDS[lab],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    # a crowd region and a zero-width box: both must be dropped
    anns.append({"id": 100, "image_id": 1, "category_id": 3, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 1})
    anns.append({"id": 101, "image_id": 2, "category_id": 7, "bbox": [5, 5, 0, 10], "area": 0, "iscrowd": 0})
    cats = [{"id": c, "name": n} for c, n in zip(COCO_IDS, NAMES)]
    ann = root / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann


def make_voc(root: Path) -> Path:
    paths = _write_images(root / "JPEGImages")
    (root / "Annotations").mkdir(parents=True)
    for i, ((w, h, boxes), p) in enumerate(zip(IMAGES, paths)):
        objs = "".join(
            f"<object><name>{NAMES[lab]}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin>"
            f"<ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for x0, y0, x1, y1, lab in boxes
        )
        xml = f"<annotation><filename>{p.name}</filename><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>"
        (root / "Annotations" / f"img{i}.xml").write_text(xml)
    split = root / "ImageSets" / "Main" / "train.txt"
    split.parent.mkdir(parents=True)
    split.write_text("".join(f"img{i}\n" for i in range(len(IMAGES))))
    return split


def make_yolo(root: Path) -> Path:
    _write_images(root / "images" / "train")
    (root / "labels" / "train").mkdir(parents=True)
    for i, (w, h, boxes) in enumerate(IMAGES):
        lines = [f"{lab} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
                 for x0, y0, x1, y1, lab in boxes]
        if lines:  # an image without a label file is a background image
            (root / "labels" / "train" / f"img{i}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return root


def _expected(i):
    boxes = np.array([b[:4] for b in IMAGES[i][2]], np.float32).reshape(-1, 4)
    return boxes, np.array([b[4] for b in IMAGES[i][2]], np.int64)


def _datasets(tmp_path):
    ann = make_coco(tmp_path / "coco")
    make_voc(tmp_path / "voc")
    make_yolo(tmp_path / "yolo")
    return {
        "coco": build_dataset(DataConfig(format="coco", root=str(tmp_path / "coco" / "images"), train_ann=str(ann)), "train"),
        "voc": build_dataset(DataConfig(format="voc", root=str(tmp_path / "voc")), "train"),
        "yolo": build_dataset(DataConfig(format="yolo", root=str(tmp_path / "yolo")), "train"),
    }


# ---------------------------------------------------------------- readers


def test_three_formats_give_the_same_records(tmp_path):
    datasets = _datasets(tmp_path)
    for fmt, ds in datasets.items():
        assert ds.class_names == NAMES, fmt
        assert len(ds) == len(IMAGES), fmt
        for i, r in enumerate(ds.records):
            boxes, labels = _expected(i)
            assert (r.width, r.height) == IMAGES[i][:2] and r.image_id == i + 1, fmt
            assert r.boxes_xyxy.dtype == np.float32 and r.labels.dtype == np.int64
            np.testing.assert_array_equal(r.labels, labels, err_msg=fmt)
            np.testing.assert_allclose(r.boxes_xyxy, boxes, atol=1e-3, err_msg=fmt)
    assert datasets["coco"].category_ids == COCO_IDS
    assert datasets["voc"].category_ids == datasets["yolo"].category_ids == [1, 2, 3]


def test_coco_gt_scores_itself_perfectly(tmp_path):
    from pycocotools.cocoeval import COCOeval

    ds = _datasets(tmp_path)["coco"]
    gt = ds.coco_gt()
    assert len(gt.getAnnIds()) == sum(len(b) for _, _, b in IMAGES)
    assert sorted(gt.getCatIds()) == COCO_IDS
    ann = gt.loadAnns(gt.getAnnIds(imgIds=[1]))[0]
    assert ann["iscrowd"] == 0 and ann["area"] == pytest.approx(26 * 34) and ann["bbox"] == pytest.approx([4, 6, 26, 34])
    results = [dict(a, score=1.0) for a in gt.loadAnns(gt.getAnnIds())]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_dataset_item_follows_the_target_format(tmp_path):
    ds = _datasets(tmp_path)["voc"]
    ds.transforms = build_transforms(DataConfig(), train=False)
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape[0] == 3
    assert tuple(target["size"].tolist()) == tuple(image.shape[1:])
    assert target["orig_size"].tolist() == [48, 64] and target["image_id"] == 1
    assert target["labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float32
    # val transform: shorter side 48 -> 256, so normalised boxes are unchanged by the resize
    x0, y0, x1, y1 = 4, 6, 30, 40
    expect = torch.tensor([(x0 + x1) / 2 / 64, (y0 + y1) / 2 / 48, (x1 - x0) / 64, (y1 - y0) / 48])
    torch.testing.assert_close(target["boxes"][0], expect, atol=2e-3, rtol=0)
    empty_image, empty = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_malformed_coco_annotation(tmp_path, caplog):
    ann = make_coco(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = ["x", 1, 2]
    ann.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match="instances.json"):
        build_dataset(DataConfig(format="coco", root=str(tmp_path / "images"), train_ann=str(ann)), "train")
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(DataConfig(format="coco", root=str(tmp_path / "images"), train_ann=str(ann), skip_corrupt=True), "train")
    assert len(ds) == len(IMAGES) - 1 and ds.records[0].image_id == 2
    assert "skipped 1 corrupt" in caplog.text


def test_malformed_voc_xml(tmp_path, caplog):
    make_voc(tmp_path)
    bad = tmp_path / "Annotations" / "img1.xml"
    bad.write_text("<annotation><object><name>apple</name><bndbox><xmin>1</xmin></bndbox></object>")
    with pytest.raises(DataFormatError, match="img1.xml"):
        build_dataset(DataConfig(format="voc", root=str(tmp_path)), "train")
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(DataConfig(format="voc", root=str(tmp_path), skip_corrupt=True), "train")
    assert [r.image_id for r in ds.records] == [1, 3, 4]
    assert "skipped 1 corrupt" in caplog.text


def test_malformed_yolo_line_names_file_and_line(tmp_path, caplog):
    make_yolo(tmp_path)
    (tmp_path / "labels" / "train" / "img3.txt").write_text("2 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.2\n")
    with pytest.raises(DataFormatError, match=r"img3\.txt:2"):
        build_dataset(DataConfig(format="yolo", root=str(tmp_path)), "train")
    (tmp_path / "labels" / "train" / "img0.txt").write_text("7 0.5 0.5 0.1 0.1\n")  # class out of range
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(DataConfig(format="yolo", root=str(tmp_path), skip_corrupt=True), "train")
    assert [r.image_id for r in ds.records] == [2, 3]
    assert "skipped 2 corrupt" in caplog.text


def test_yolo_names_and_split_from_data_yaml(tmp_path):
    make_yolo(tmp_path)
    (tmp_path / "classes.txt").unlink()
    (tmp_path / "data.yaml").write_text("names: {0: apple, 1: banana, 2: cherry}\nval: images/train\n")
    ds = build_dataset(DataConfig(format="yolo", root=str(tmp_path)), "val")
    assert ds.class_names == NAMES and len(ds) == len(IMAGES)
    np.testing.assert_allclose(ds.records[3].boxes_xyxy, _expected(3)[0], atol=1e-3)


def test_corrupt_image(tmp_path, caplog):
    make_voc(tmp_path)
    (tmp_path / "JPEGImages" / "img0.png").write_bytes(b"\x89PNG\r\n this is not an image")
    with pytest.raises(DataFormatError, match="img0.png"):
        build_dataset(DataConfig(format="voc", root=str(tmp_path)), "train")
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(DataConfig(format="voc", root=str(tmp_path), skip_corrupt=True), "train")
    assert len(ds) == len(IMAGES) - 1 and "skipped 1 corrupt" in caplog.text


def test_missing_paths_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        build_dataset(DataConfig(format="voc", root=str(tmp_path / "nope")), "train")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(FileNotFoundError, match="split file"):
        build_dataset(DataConfig(format="voc", root=str(tmp_path)), "val")
    with pytest.raises(FileNotFoundError, match="COCO annotation file"):
        build_dataset(DataConfig(format="coco", root=str(tmp_path), train_ann="missing.json"), "train")
    with pytest.raises(FileNotFoundError, match="class names"):
        build_dataset(DataConfig(format="yolo", root=str(tmp_path)), "train")
    with pytest.raises(UnknownNameError, match="coco, synthetic, voc, yolo"):
        build_dataset(DataConfig(format="kitti"), "train")


def test_voc_difficult_flag_and_given_class_order(tmp_path):
    make_voc(tmp_path)
    xml = tmp_path / "Annotations" / "img0.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    dropped = build_dataset(DataConfig(format="voc", root=str(tmp_path)), "train")
    kept = build_dataset(DataConfig(format="voc", root=str(tmp_path), keep_difficult=True,
                                    class_names=["cherry", "banana", "apple"]), "train")
    assert dropped.records[0].labels.tolist() == [2]
    assert kept.class_names == ["cherry", "banana", "apple"] and kept.records[0].labels.tolist() == [2, 0]


@pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd not present")
def test_bccd_real_dataset(caplog):
    cfg = DataConfig(format="voc", root=str(BCCD))
    with caplog.at_level(logging.WARNING):
        splits = {s: build_dataset(cfg, s) for s in ("train", "val", "test")}
    assert sum(len(d) for d in splits.values()) == 364
    assert {len(d) for d in splits.values()} == {205, 87, 72}
    for ds in splits.values():
        assert sorted(ds.class_names) == sorted(["RBC", "WBC", "Platelets"])
        for r in ds.records:
            assert (r.width, r.height) == (640, 480)
            b = r.boxes_xyxy
            assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 640).all() and (b[:, 3] <= 480).all()
            assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
    # 4888 boxes, minus the two zero-size RBC boxes (in 00338 and 00343) the README lists
    assert sum(len(r.labels) for d in splits.values() for r in d.records) == 4886
    assert caplog.text.count("dropped 1 degenerate") == 2


# ---------------------------------------------------------------- batching


def test_collate_pads_and_masks():
    a, b = torch.randn(3, 20, 30), torch.randn(3, 25, 10)
    images, mask, targets = collate_fn([(a, {"image_id": 1}), (b, {"image_id": 2})])
    assert images.shape == (2, 3, 25, 30) and mask.shape == (2, 25, 30) and mask.dtype == torch.bool
    torch.testing.assert_close(images[0, :, :20, :30], a)
    torch.testing.assert_close(images[1, :, :25, :10], b)
    assert not mask[0, :20, :30].any() and mask[0, 20:].all()
    assert not mask[1, :, :10].any() and mask[1, :, 10:].all()
    assert (images[0, :, 20:] == 0).all() and (images[1, :, :, 10:] == 0).all()
    assert [t["image_id"] for t in targets] == [1, 2]


def test_dataloader_order_is_reproducible(tmp_path):
    ds = _datasets(tmp_path)["yolo"]
    ds.transforms = build_transforms(DataConfig(val_size=32, max_size=64), train=False)

    def order(seed):
        return [t["image_id"] for _, _, ts in build_dataloader(ds, 2, shuffle=True, seed=seed) for t in ts]

    assert order(3) == order(3)
    assert sorted(order(3)) == [1, 2, 3, 4]
    images, mask, targets = next(iter(build_dataloader(ds, 4, shuffle=False)))
    assert images.shape[0] == 4 and [t["image_id"] for t in targets] == [1, 2, 3, 4]
    for i, t in enumerate(targets):  # the unpadded region of every image is exactly its `size`
        h, w = t["size"].tolist()
        assert not mask[i, :h, :w].any() and mask[i].sum() == mask.shape[1] * mask.shape[2] - h * w


def test_distributed_loader_uses_a_distributed_sampler(tmp_path):
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    if dist.is_initialized():
        pytest.skip("a process group is already running in this session")
    ds = _datasets(tmp_path)["yolo"]
    ds.transforms = build_transforms(DataConfig(val_size=32, max_size=64), train=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = build_dataloader(ds, 2, shuffle=True, distributed=True, seed=1)
        assert isinstance(loader.sampler, DistributedSampler)
        loader.sampler.set_epoch(0)
        first = [t["image_id"] for _, _, ts in loader for t in ts]
        loader.sampler.set_epoch(0)
        assert [t["image_id"] for _, _, ts in loader for t in ts] == first and sorted(first) == [1, 2, 3, 4]
    finally:
        dist.destroy_process_group()


def test_image_record_validates_lengths(tmp_path):
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        ImageRecord(1, tmp_path / "x.jpg", 10, 10, np.zeros((2, 4)), np.zeros(1))
    ds = DetectionDataset([ImageRecord(1, tmp_path / "x.jpg", 10, 10)], ["a"], transforms=None)
    assert ds.category_ids == [1] and ds.num_classes == 1
