"""The Ultralytics venv of `benches/peers.py`: built once outside the repository, never a dependency of edgedet.

Ultralytics is AGPL-3.0, so it lives in its own venv (default ~/.cache/edgedet/peers-venv-KEY, EDGEDET_CACHE
moves it) and only exports OpenVINO IR there (`_peers_ultralytics.py`); edgedet's process reads the IR files.
torch is the CPU build this interpreter runs; Ultralytics is installed without its dependencies (they would pull
a CUDA torch and torchvision) and its needs are listed here. Its `torchvision` import is satisfied by a stand-in
distribution: Ultralytics reads torchvision's version at import and imports the package in NMS and dataset code,
but building a YOLO from yaml and exporting it to OpenVINO calls nothing from it; any use raises a clear error.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

ULTRALYTICS = "ultralytics==8.4.190"
# what Ultralytics imports to build, trace and export a detector (its own list less torchvision, the full OpenCV,
# nvidia-ml-py and ultralytics-platform, which export never touches), plus the OpenVINO / NNCF of its INT8 path
NEEDS = ["numpy", "matplotlib", "opencv-python-headless", "pillow", "pyyaml", "requests", "psutil", "polars",
         "ultralytics-thop", "packaging"]
EXPORTER = Path(__file__).with_name("_peers_ultralytics.py")

STANDIN_INIT = '''"""torchvision stand-in of edgedet's benches/peers.py: only the version, for Ultralytics' import checks."""
__version__ = "{version}"


def __getattr__(name):
    raise AttributeError(f"torchvision.{{name}}: this is edgedet's export-only torchvision stand-in "
                         "(benches/_peers_venv.py); building and exporting a YOLO does not use torchvision")
'''


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEDET_CACHE", Path.home() / ".cache" / "edgedet"))


def torch_spec() -> str:
    """The torch this interpreter runs (a CPU wheel), so the venv gets the same one and no CUDA build."""
    from importlib import metadata

    return os.environ.get("PEERS_TORCH_SPEC") or f"torch=={metadata.version('torch')}"


def pinned(name: str) -> str:
    from importlib import metadata

    try:
        return f"{name}=={metadata.version(name)}"  # the OpenVINO / NNCF edgedet runs, so both sides match
    except metadata.PackageNotFoundError:
        return name


def requirements() -> List[str]:
    return [torch_spec(), ULTRALYTICS, pinned("openvino"), pinned("nncf")] + NEEDS


def standin_version(torch_version: str) -> str:
    """The torchvision release that pairs with `torch_version` (2.x -> 0.(x + 15)), marked as the stand-in,
    so Ultralytics' torch/torchvision compatibility check passes without a warning."""
    major, minor = (int(v) for v in torch_version.split("+")[0].split(".")[:2])
    paired = minor + 1 if major == 1 else min(minor + 15, 29)
    return f"0.{paired}.0+edgedet.standin"


def venv_key() -> str:
    digest = hashlib.sha256(json.dumps([sys.version, requirements(), STANDIN_INIT]).encode())
    return digest.hexdigest()[:12]


def venv_path() -> Path:
    return cache_dir() / f"peers-venv-{venv_key()}"


def venv_python(build: bool) -> Optional[Path]:
    """The venv's python: built when missing and `build`, else None when it is not there yet."""
    venv = venv_path()
    py, done = venv / "bin" / "python", venv / ".edgedet-built"
    if done.exists() and py.exists():
        return py
    if not build:
        return None
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f"{venv.name}.lock", "w") as lock:  # one builder at a time; the others reuse it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists() and py.exists():
            return py
        print(f"building the Ultralytics venv in {venv} (once; a few minutes)", file=sys.stderr)
        _check([sys.executable, "-m", "venv", "--clear", str(venv)])
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        reqs = requirements()
        _check(pip + [reqs[0]])  # torch first: the CPU build, before anything could ask for another
        _check(pip + ["--no-deps", reqs[1]])
        _check(pip + reqs[2:])
        cuda = [line for line in _check([str(py), "-m", "pip", "list", "--format=freeze"]).splitlines()
                if line.lower().startswith(("nvidia-", "torchvision", "triton"))]
        if cuda:
            raise RuntimeError(f"the peers venv pulled {', '.join(cuda)}: remove {venv} and set PEERS_TORCH_SPEC to a CPU torch")
        _install_standin(py)
        done.touch()
    return py


def _install_standin(py: Path) -> None:
    site = Path(_check([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    torch_version = _check([str(py), "-c", "from importlib import metadata; print(metadata.version('torch'))"]).strip()
    version = standin_version(torch_version)
    pkg = site / "torchvision"
    info = site / f"torchvision-{version}.dist-info"
    pkg.mkdir(exist_ok=True)
    info.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text(STANDIN_INIT.format(version=version))
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torchvision\nVersion: {version}\n"
                                   "Summary: export-only stand-in written by edgedet benches/peers.py\n")
    (info / "INSTALLER").write_text("edgedet-peers\n")
    (info / "RECORD").write_text(f"torchvision/__init__.py,,\n{info.name}/METADATA,,\n{info.name}/INSTALLER,,\n{info.name}/RECORD,,\n")


def export_yolos(py: Path, models: List[str], imgsz: int, calib: List[Path], int8: bool = True) -> Dict[str, dict]:
    """OpenVINO IRs of `models` (fp32, and int8 calibrated on `calib`), cached under the venv by what they are
    built from -> {model: {"fp32": xml, "int8": xml, "params_m", "nms_free"}}."""
    key = hashlib.sha256(json.dumps([models, imgsz, [p.name for p in calib], int8,
                                     EXPORTER.read_text()]).encode()).hexdigest()[:12]
    out = py.parent.parent / "exports" / key
    done = out / "exported.json"
    if done.exists():
        return json.loads(done.read_text())
    images = out / "calib" / "images"  # links to the images: Ultralytics writes its label cache beside them
    images.mkdir(parents=True, exist_ok=True)
    for p in calib:
        link = images / p.name
        if not link.exists():
            link.symlink_to(p.resolve())
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(out / "config"), YOLO_VERBOSE="False")
    cmd = [str(py), str(EXPORTER), "--out", str(out), "--calib-dir", str(images), "--models", ",".join(models),
           "--imgsz", str(imgsz)] + (["--int8"] if int8 else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out)
    if proc.returncode != 0:
        raise RuntimeError(f"Ultralytics export failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    done.write_text(json.dumps(result))
    return result


def _check(cmd: List[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout
