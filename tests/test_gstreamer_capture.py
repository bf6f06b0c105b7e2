"""GStreamer capture for real, set up as on a Jetson (issue #31).

A venv made by Debian's `/usr/bin/python3 -m venv --system-site-packages` sees Debian's
`python3-opencv` (built with GStreamer) and `python3-gi`, as a Jetson's venv sees JetPack's. The
docs/jetson.md's steps install edgedet into it (`requirements/jetson.txt`, then `--no-deps -e .`);
built once (then cached), then `edgedet-run` and the runtime API read `videotestsrc` and
`filesrc ! decodebin` pipelines in it, and `jetson_csi_pipeline()` is checked element by element
against the GStreamer registry with the Jetson-only elements swapped for stand-ins.

Needs Debian's python3-opencv, python3-gi, gir1.2-gstreamer-1.0, gstreamer1.0-plugins-base/-good
and gstreamer1.0-libav (scripts/test.sh installs them); skips, saying which, without them.
"""
from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
DEBIAN_PACKAGES = ("python3-opencv python3-gi gir1.2-gstreamer-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
                   "gstreamer1.0-libav python3-venv")
_SYSTEM_PROBE = """
import cv2, gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
line = [l for l in cv2.getBuildInformation().splitlines() if l.strip().startswith("GStreamer:")]
assert line and "YES" in line[0], "this OpenCV has no GStreamer"
missing = [e for e in ("videotestsrc", "videoconvert", "videoscale", "videoflip", "appsink", "filesrc", "decodebin",
                       "avidemux", "jpegdec", "qtdemux", "avdec_h264") if Gst.ElementFactory.find(e) is None]
assert not missing, "GStreamer elements missing: " + ", ".join(missing)
print(cv2.__version__)
"""


def _run(cmd: List[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _venv_key() -> str:
    """What the venv depends on: the install files, this checkout's path (the editable install points at it), the system OpenCV."""
    import hashlib

    digest = hashlib.sha256(str(ROOT).encode())
    for f in (ROOT / "requirements" / "jetson.txt", ROOT / "setup.py", Path("/usr/lib/python3/dist-packages")):
        digest.update(f.read_bytes() if f.is_file() else str(sorted(p.name for p in f.glob("cv2*"))).encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def jetson_venv() -> Path:
    """The venv after the Jetson install steps of docs/jetson.md, over the system's GStreamer OpenCV: its python.

    Built once, then kept in ~/.cache/edgedet (EDGEDET_CACHE) under a key of what it was built from.
    """
    import fcntl
    import os

    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"{SYSTEM_PYTHON} not found (a Debian/Ubuntu system Python is needed)")
    probe = _run([SYSTEM_PYTHON, "-c", _SYSTEM_PROBE], timeout=60)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"system OpenCV with GStreamer not usable ({reason}); apt-get install {DEBIAN_PACKAGES}")
    cache = Path(os.environ.get("EDGEDET_CACHE", Path.home() / ".cache" / "edgedet"))
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / f"jetson-venv-{_venv_key()}"
    py, done = venv / "bin" / "python", venv / ".edgedet-built"
    with open(cache / f"{venv.name}.lock", "w") as lock:  # one builder at a time; others wait, then reuse
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists() and py.exists():
            return py
        made = _run([SYSTEM_PYTHON, "-m", "venv", "--clear", "--system-site-packages", str(venv)], timeout=120)
        if made.returncode != 0:
            pytest.skip(f"cannot make a venv with {SYSTEM_PYTHON} ({made.stderr.strip()[-200:]}); apt-get install python3-venv")
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        # README, Jetson, step 1: the base dependencies without the OpenCV wheel, then edgedet without dependencies.
        for step in (pip + ["-r", str(ROOT / "requirements" / "jetson.txt")], pip + ["--no-deps", "-e", str(ROOT)]):
            out = _run(step, cwd=ROOT)
            assert out.returncode == 0, f"{' '.join(step)} failed:\n{out.stderr[-3000:]}"
        done.touch()
    return py


def _python(py: Path, code: str, cwd: Path, timeout: float = 120) -> dict:
    """Run `code` in the venv (outside the repository, so the installed edgedet is what imports); its last line is JSON."""
    out = _run([str(py), "-c", textwrap.dedent(code)], timeout=timeout, cwd=cwd)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_jetson_install_keeps_the_system_opencv_with_gstreamer(jetson_venv, tmp_path):
    # The shadowing of issue #31: after the Jetson install, `import cv2` is still the system's,
    # with GStreamer, and a pipeline opens; no OpenCV wheel came with the install.
    got = _python(jetson_venv, """
        import json, cv2
        from importlib import metadata
        from runtime import open_source
        from runtime.environment import opencv_info, opencv_summary
        wheels = [d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"].lower().startswith("opencv")]
        info = opencv_info()
        with open_source("videotestsrc num-buffers=3 ! video/x-raw, width=64, height=48 ! videoconvert ! appsink") as src:
            frame = src.read(timeout=10)
        print(json.dumps({"file": cv2.__file__, "gstreamer": info.gstreamer, "wheel": info.wheel, "wheels": wheels,
                          "summary": opencv_summary(), "shape": list(frame.image.shape)}))
    """, tmp_path)
    assert got["file"].startswith("/usr/lib/python3/dist-packages/"), got
    assert got["gstreamer"] and got["wheel"] is None and got["wheels"] == [], got
    assert got["summary"].endswith("(not a pip wheel), GStreamer: yes"), got["summary"]
    assert got["shape"] == [48, 64, 3]
    check = _run([str(jetson_venv.parent / "edgedet-run"), "--check"], timeout=60, cwd=tmp_path)
    assert check.returncode == 0 and "GStreamer: yes" in check.stdout, check.stdout + check.stderr
    assert check.stdout.startswith("Python 3.") and f"{jetson_venv.parent.parent}/bin/python" in check.stdout.splitlines()[0]


def test_videotestsrc_frames_through_the_python_api(jetson_venv, tmp_path):
    # A finite pipeline (num-buffers) ends the source at its end: no reconnect, no error.
    got = _python(jetson_venv, """
        import json, logging
        from runtime import open_source
        logging.basicConfig(level=logging.WARNING)
        pipeline = ("videotestsrc num-buffers=12 pattern=red ! video/x-raw, width=320, height=240, framerate=30/1 ! "
                    "videoconvert ! appsink sync=false")
        with open_source(pipeline) as src:
            frames = list(src)
        print(json.dumps({"live": src.is_live, "n": len(frames), "indices": [f.index for f in frames],
                          "shape": list(frames[-1].image.shape),
                          "bgr": frames[-1].image.reshape(-1, 3).mean(0).round(1).tolist()}))
    """, tmp_path)
    assert got["live"] and 1 <= got["n"] <= 12 and got["indices"][-1] <= 11, got
    assert got["shape"] == [240, 320, 3]
    b, g, r = got["bgr"]
    assert r > 250 and b < 5 and g < 5, got["bgr"]  # pattern=red, through videoconvert to BGR


def test_edgedet_run_detects_through_a_filesrc_decodebin_pipeline(jetson_venv, tmp_path):
    from runtime.testing import make_blob_artifact, make_blob_video

    artifact = make_blob_artifact(tmp_path)  # written here: ONNX needs the onnx package
    clip = make_blob_video(tmp_path / "clip.avi", frames=20)
    pipeline = f"filesrc location={clip} ! decodebin ! videoconvert ! appsink sync=false max-buffers=64"
    out = _run([str(jetson_venv.parent / "edgedet-run"), "--model", str(artifact), "--source", pipeline,
                "--json", str(tmp_path / "out.jsonl")], timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    # The start-up line names the OpenCV (GStreamer's own warnings may come before it on stderr).
    opencv_lines = [ln for ln in out.stderr.splitlines() if ln.startswith("OpenCV ")]
    assert len(opencv_lines) == 1 and opencv_lines[0].endswith("(not a pip wheel), GStreamer: yes"), out.stderr[:800]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    # A GStreamer source is live (the newest frame wins, so frames may be dropped); the file's end ends the run.
    assert records and records[-1]["frame"] == 19, [r["frame"] for r in records]
    assert "frames " in out.stdout and "lost source" not in out.stderr
    text = json.dumps(records)
    assert '"red"' in text, records[0]  # the moving red square is detected in the decoded frames


def test_edgedet_run_reads_a_videotestsrc_pipeline_to_its_end(jetson_venv, tmp_path):
    from runtime.testing import make_blob_artifact

    artifact = make_blob_artifact(tmp_path)
    pipeline = "videotestsrc num-buffers=15 ! video/x-raw, width=160, height=120 ! videoconvert ! appsink max-buffers=32"
    out = _run([str(jetson_venv.parent / "edgedet"), "run", "--model", str(artifact), "--source", pipeline,
                "--json", str(tmp_path / "out.jsonl"), "--quiet"], timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert records and records[-1]["frame"] == 14 and records[-1]["image_size"] == [120, 160], records[-1:]
    assert "lost source" not in out.stderr and "reconnecting" not in out.stderr


def test_filesrc_decodebin_matches_ffmpeg_on_an_h264_video(jetson_venv, tmp_path, shared):
    video = shared / "data" / "videos" / "car-detection.mp4"
    if not video.exists():
        pytest.skip(f"{video} is not present")
    got = _python(jetson_venv, f"""
        import json, cv2, numpy as np
        from runtime import open_source
        pipeline = "filesrc location={video} ! decodebin ! videoconvert ! video/x-raw, format=BGR ! appsink sync=false"
        with open_source(pipeline) as src:
            frame = src.read(timeout=30)
        cap = cv2.VideoCapture("{video}", cv2.CAP_FFMPEG)  # the same frame decoded without GStreamer
        for _ in range(frame.index + 1):
            ok, ref = cap.read()
        cap.release()
        diff = np.abs(frame.image.astype(np.int16) - ref.astype(np.int16))
        print(json.dumps({{"index": frame.index, "shape": list(frame.image.shape), "ref": list(ref.shape),
                          "mean": float(diff.mean()), "p99": float(np.percentile(diff, 99))}}))
    """, tmp_path)
    assert got["shape"] == got["ref"] and got["shape"][2] == 3, got
    # Both decode with libavcodec; only the YUV->BGR conversion differs (videoconvert vs swscale).
    assert got["mean"] < 3.0 and got["p99"] < 20, got


_CSI_CHECK = r"""
import json, re, numpy as np
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
from runtime import jetson_csi_pipeline, open_source
Gst.init(None)
JETSON_ONLY = {"nvarguscamerasrc", "nvvidconv"}
report = {"elements": [], "caps": [], "jetson_only": []}
csi = jetson_csi_pipeline(sensor_id=0, width=1280, height=720, fps=30, flip=FLIP, output_width=320, output_height=180)
for part in (p.strip() for p in csi.split("!")):
    if part.startswith("video/"):
        caps = Gst.Caps.from_string(part)
        assert caps is not None and caps.get_size() == 1, part
        report["caps"].append(caps.get_features(0).to_string() + " " + caps.get_structure(0).get_name())
        continue
    name, *props = part.split()
    if name in JETSON_ONLY:
        report["jetson_only"].append(name)
        continue
    factory = Gst.ElementFactory.find(name)
    assert factory is not None, f"{name}: not in the GStreamer registry"
    element = factory.create(None)
    for prop in props:
        key, value = prop.split("=", 1)
        spec = element.find_property(key)
        assert spec is not None, f"{name} has no property {key}"
        Gst.util_set_object_arg(element, key, value)
        got = element.get_property(key)
        assert str(got).lower() == value.lower(), (name, key, value, got)
    report["elements"].append(part)
# The Jetson-only parts swapped for stand-ins that produce and transform the same caps:
# the camera -> videotestsrc (NV12 like the ISP), NVMM memory -> system memory, nvvidconv (flip,
# scale, NV12 -> BGRx) -> videoflip (video-direction: its deprecated `method` is ignored in 1.22) + videoscale + videoconvert (flip-method 2 = rotate-180 in both).
swapped = re.sub(r"^nvarguscamerasrc sensor-id=\d+", "videotestsrc num-buffers=3 pattern=smpte", csi)
swapped = swapped.replace("video/x-raw(memory:NVMM), ", "video/x-raw, format=(string)NV12, ")
swapped = re.sub(r"nvvidconv flip-method=(\d)", r"videoflip video-direction=\1 ! videoscale ! videoconvert", swapped)
assert not any(e in swapped for e in JETSON_ONLY) and "NVMM" not in swapped, swapped
Gst.parse_launch(swapped)  # the registry accepts the whole swapped pipeline
with open_source(swapped) as src:
    frame = src.read(timeout=20)
np.save("frame.npy", frame.image)
report["shape"] = list(frame.image.shape)
print(json.dumps(report))
"""


def test_jetson_csi_pipeline_against_the_gstreamer_registry(jetson_venv, tmp_path):
    reports = {}
    for flip in (0, 2):
        (tmp_path / str(flip)).mkdir()
        reports[flip] = _python(jetson_venv, _CSI_CHECK.replace("FLIP", str(flip)), tmp_path / str(flip))
    rep = reports[2]
    assert rep["jetson_only"] == ["nvarguscamerasrc", "nvvidconv"], rep
    assert rep["caps"] == ["memory:NVMM video/x-raw", "memory:SystemMemory video/x-raw", "memory:SystemMemory video/x-raw"], rep
    assert [e.split()[0] for e in rep["elements"]] == ["videoconvert", "appsink"], rep
    assert rep["shape"] == [180, 320, 3]  # output_width / output_height reached the appsink
    import numpy as np

    upright, turned = (np.load(tmp_path / str(f) / "frame.npy").astype(np.int16) for f in (0, 2))
    # flip=2 turns the picture half round (the SMPTE bars are not symmetric, so this can fail).
    # (a pixel's shift at the bar edges: the stand-in flips before scaling; 3.4 measured, 108 unturned)
    assert np.abs(turned - upright[::-1, ::-1]).mean() < 8.0
    assert np.abs(turned - upright).mean() > 40.0


@pytest.mark.slow
def test_plain_pip_install_shadows_the_system_opencv(tmp_path):
    # The bug the Jetson steps avoid: `pip install -e .` in the same kind of venv brings the OpenCV
    # wheel, which hides the system's; a GStreamer pipeline then fails with one line naming the wheel.
    probe = _run([SYSTEM_PYTHON, "-c", _SYSTEM_PROBE], timeout=60) if Path(SYSTEM_PYTHON).exists() else None
    if probe is None or probe.returncode != 0:
        pytest.skip(f"system OpenCV with GStreamer not usable; apt-get install {DEBIAN_PACKAGES}")
    venv = tmp_path / "venv"
    assert _run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)]).returncode == 0
    out = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", str(ROOT)],
               cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    got = _python(venv / "bin" / "python", """
        import json
        from runtime import open_source
        from runtime.environment import opencv_info
        try:
            open_source("videotestsrc num-buffers=3 ! videoconvert ! appsink")
            error = None
        except RuntimeError as e:
            error = str(e)
        print(json.dumps({"wheel": opencv_info().wheel, "error": error}))
    """, tmp_path)
    assert got["wheel"] == "opencv-python-headless", got
    assert got["error"] and "\n" not in got["error"] and "pip uninstall opencv-python-headless" in got["error"], got
