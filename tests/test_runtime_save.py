"""`edgedet run --save PATH`: the output kind follows the path, and no frame is dropped silently."""
import cv2
import numpy as np
import pytest

from runtime.cli import main
from runtime.testing import make_blob_artifact


def _image(path, h, w):
    frame = np.zeros((h, w, 3), np.uint8)
    frame[h // 4: h // 2, w // 4: w // 2] = (0, 0, 255)
    cv2.imwrite(str(path), frame)
    return path


def _frames_in(video):
    cap = cv2.VideoCapture(str(video))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_image_suffix_writes_an_image(tmp_path):
    model = make_blob_artifact(tmp_path)
    src = _image(tmp_path / "img.jpg", 120, 160)
    assert main(["--model", str(model), "--source", str(src), "--save", str(tmp_path / "pred.jpg"), "--quiet"]) == 0
    out = cv2.imread(str(tmp_path / "pred.jpg"))
    assert out is not None and out.shape == (120, 160, 3)  # a JPEG, not an MPEG-4 stream under a .jpg name
    assert (tmp_path / "pred.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_folder_gets_one_image_per_input_and_video_keeps_every_frame(tmp_path, capsys):
    model = make_blob_artifact(tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    sizes = [(120, 160), (200, 100), (90, 90), (240, 320), (101, 203)]
    for i, (h, w) in enumerate(sizes):
        _image(inputs / f"im{i}.png", h, w)
    assert main(["--model", str(model), "--source", str(inputs), "--save", str(tmp_path / "out") + "/", "--quiet"]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [f"im{i}.png" for i in range(5)]
    assert cv2.imread(str(tmp_path / "out" / "im1.png")).shape == (200, 100, 3)
    # differently sized images into one video: every frame kept (letterboxed to the first frame's size)
    assert main(["--model", str(model), "--source", str(inputs), "--save", str(tmp_path / "all.avi"), "--quiet"]) == 0
    assert _frames_in(tmp_path / "all.avi") == 5
    assert "frames 5  dropped 0" in capsys.readouterr().out


def test_bad_save_paths_fail_before_work(tmp_path, capsys):
    model = make_blob_artifact(tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    _image(inputs / "a.png", 64, 64)
    _image(inputs / "b.png", 64, 64)
    for save, needle in ((tmp_path / "x.docx", "unknown output kind"), (tmp_path / "one.jpg", "is one image"),
                         (inputs, "would be overwritten")):
        assert main(["--model", str(model), "--source", str(inputs), "--save", str(save), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    assert sorted(p.name for p in inputs.iterdir()) == ["a.png", "b.png"]


def test_image_sink_refuses_a_second_frame(tmp_path):
    from runtime.capture import Frame
    from runtime.pipeline import Result
    from runtime.save import ImageSink
    from runtime.types import Detections

    sink = ImageSink(tmp_path / "p.png")
    res = Result(Frame(np.zeros((8, 8, 3), np.uint8), 0, 0.0), Detections.empty(), 0.0)
    sink(res)
    with pytest.raises(ValueError, match="more than one frame"):
        sink(res)
