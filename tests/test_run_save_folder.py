"""`edgedet run --save` into folders: created when missing, never over existing files, outputs and JSON lines
named after their input files (also when an unreadable file is skipped before them)."""
import json

import cv2
import numpy as np

from edgedet.cli import main
from runtime.testing import BLOB_BGR, make_blob_artifact


def _images(folder, n=3):
    folder.mkdir(parents=True)
    (folder / "a_broken.jpg").write_bytes(b"not an image")  # sorts first: skipped, shifts frame indices
    for i in range(n):
        img = np.zeros((120, 160, 3), np.uint8)
        img[20:60, 30 + 10 * i:90 + 10 * i] = BLOB_BGR[0]
        cv2.imwrite(str(folder / f"img{i}.png"), img)
    return folder


def test_save_folder_is_created_and_outputs_and_json_lines_name_their_files(tmp_path):
    model = make_blob_artifact(tmp_path / "m")
    src = _images(tmp_path / "in")
    out = tmp_path / "not" / "yet" / "there"
    assert main(["run", "--model", str(model), "--source", str(src), "--save", str(out), "--json",
                 str(tmp_path / "d.jsonl"), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == ["img0.png", "img1.png", "img2.png"]
    # each output is its own input's picture: the box drawn where that image's rectangle is
    for i, r in enumerate(records):
        assert np.allclose(r["detections"][0]["box_xyxy"], [30 + 10 * i, 20, 90 + 10 * i, 60], atol=1)
    assert main(["run", "--model", str(model), "--source", str(src / "img1.png"), "--save",
                 str(tmp_path / "new" / "one.jpg"), "--quiet"]) == 0
    assert (tmp_path / "new" / "one.jpg").is_file()


def test_save_folder_never_overwrites_an_existing_file(tmp_path, capsys):
    model = make_blob_artifact(tmp_path / "m")
    src = _images(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "img1.png").write_bytes(b"the user's own file")
    assert main(["run", "--model", str(model), "--source", str(src), "--save", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 or all("skipping" in line for line in err[:-1])
    assert "would overwrite" in err[-1] and "img1.png" in err[-1] and "choose an empty or new --save folder" in err[-1]
    assert (out / "img1.png").read_bytes() == b"the user's own file" and not (out / "img0.png").exists()
