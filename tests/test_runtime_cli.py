"""runtime.cli: `edgedet-run` end to end on a video, and one-line errors."""
import json
import threading

import cv2
import numpy as np

from runtime.cli import RUN_COMMAND, main
from runtime.testing import make_blob_artifact


def _video(path, n=15):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for i in range(n):
        frame = np.zeros((120, 160, 3), np.uint8)
        frame[20:60, 10 + 4 * i:50 + 4 * i] = (0, 0, 255)
        writer.write(frame)
    writer.release()
    return path


def test_run_writes_json_and_video(tmp_path, capsys):
    model = make_blob_artifact(tmp_path)
    video = _video(tmp_path / "in.avi")
    rc = main(["--model", str(model), "--source", str(video), "--json", str(tmp_path / "o.jsonl"),
               "--save", str(tmp_path / "o.avi"), "--quiet"])
    assert rc == 0
    records = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(records) == 15 and all(r["detections"][0]["name"] == "red" for r in records)
    assert "frames 15  dropped 0" in capsys.readouterr().out
    cap = cv2.VideoCapture(str(tmp_path / "o.avi"))
    assert cap.isOpened()
    cap.release()
    assert not [t for t in threading.enumerate() if t.name.startswith("edgedet-")]


def test_max_frames_and_errors(tmp_path, capsys):
    model = make_blob_artifact(tmp_path)
    video = _video(tmp_path / "in.avi", n=30)
    assert main(["--model", str(model), "--source", str(video), "--max-frames", "5", "--quiet"]) == 0
    assert main(["--model", str(tmp_path / "nope.onnx"), "--source", str(video)]) == 2
    assert "model artifact not found" in capsys.readouterr().err
    assert main(["--model", str(model), "--source", "91"]) == 2
    assert "could not open camera 91" in capsys.readouterr().err
    assert RUN_COMMAND.name == "run" and callable(RUN_COMMAND.run)
