"""What this Python offers the runtime: entry points across Python versions, and which OpenCV is in use.

The runtime supports Python 3.8 (JetPack 5) to the newest. On a Jetson the OpenCV that matters is
JetPack's (built with GStreamer, seen through a `--system-site-packages` venv); a pip wheel
(`opencv-python*`, built without GStreamer) installed into the venv hides it. `opencv_summary()`
says in one line which one `import cv2` found and whether it can open GStreamer pipelines.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

# The pip distributions that ship a `cv2` module (all built without GStreamer).
OPENCV_WHEELS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")


def entry_points_in(group: str) -> List[Any]:
    """The entry points of `group`: `entry_points(group=...)` exists from Python 3.10, a dict before."""
    found = importlib.metadata.entry_points()
    if hasattr(found, "select"):
        return list(found.select(group=group))
    return list(found.get(group, []))  # Python 3.8 / 3.9


@dataclass
class OpenCVInfo:
    """The `cv2` this process imports: version, file, the pip wheel it came from (None: not a wheel), GStreamer."""

    version: str
    path: str
    wheel: Optional[str]
    gstreamer: bool

    def summary(self) -> str:
        origin = f"pip wheel {self.wheel}" if self.wheel else "not a pip wheel"
        line = f"OpenCV {self.version} from {self.path} ({origin}), GStreamer: {'yes' if self.gstreamer else 'no'}"
        if not self.gstreamer and self.wheel:
            line += (f"; for GStreamer (Jetson CSI cameras) remove it ({sys.executable} -m pip uninstall {self.wheel}) "
                     "so the system OpenCV (JetPack's, or apt's python3-opencv) is found through --system-site-packages")
        return line


def build_has_gstreamer(build_information: str) -> bool:
    """True when cv2.getBuildInformation() lists GStreamer as built in ("GStreamer: YES (1.22.0)")."""
    for line in build_information.splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def _wheel_of(module_file: Path) -> Optional[str]:
    for name in OPENCV_WHEELS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        root = Path(str(dist.locate_file(""))).resolve()
        if root in module_file.resolve().parents:
            return name
    return None


def opencv_info() -> OpenCVInfo:
    """Facts about the imported `cv2` (imports it)."""
    import cv2

    module_file = Path(getattr(cv2, "__file__", None) or "cv2")
    # A wheel's cv2 is a package (cv2/__init__.py): name its folder, the part a user recognises.
    path = module_file.parent if module_file.name == "__init__.py" else module_file
    return OpenCVInfo(cv2.__version__, str(path), _wheel_of(module_file), build_has_gstreamer(cv2.getBuildInformation()))


def opencv_summary() -> str:
    """One line: which OpenCV this process uses, whether it has GStreamer, and what to do when a wheel hides the system one."""
    return opencv_info().summary()


def _engine_versions() -> str:
    import importlib.util

    found = []
    for module, label in (("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO"), ("tensorrt", "TensorRT")):
        if importlib.util.find_spec(module) is None:
            found.append(f"{label}: not installed")
            continue
        try:
            found.append(f"{label} {importlib.import_module(module).__version__}")
        except Exception as e:  # installed but broken (e.g. a CUDA library missing): say so, do not stop the check
            found.append(f"{label}: fails to import ({type(e).__name__}: {e})")
    return ", ".join(found)


def environment_report() -> str:
    """`edgedet run --check`: the Python, the OpenCV (one line) and the inference engines this process sees."""
    import platform

    return "\n".join([f"Python {platform.python_version()} at {sys.executable} ({platform.machine()})",
                      opencv_summary(), _engine_versions()])
