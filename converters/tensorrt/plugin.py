"""Locating and building the TensorRT MSDA plugin library (`libedgedet_trt_msda.so`).

The plugin is compiled on the machine that runs TensorRT (a Jetson builds on the device):
`bash converters/tensorrt/plugins/msda/build.sh` or `make` in that folder.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

LIBRARY_NAME = "libedgedet_trt_msda.so"
PLUGIN_DIR = Path(__file__).parent / "plugins" / "msda"
ENV_VAR = "EDGEDET_TRT_PLUGIN"


def find_library() -> Optional[Path]:
    """$EDGEDET_TRT_PLUGIN, then the CMake and Makefile build outputs; None when unbuilt."""
    candidates = [os.environ.get(ENV_VAR, ""), PLUGIN_DIR / "build" / LIBRARY_NAME, PLUGIN_DIR / LIBRARY_NAME]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def library_path(build_if_missing: bool = False) -> Path:
    lib = find_library()
    if lib is None and build_if_missing:
        lib = build()
    if lib is None:
        raise FileNotFoundError(
            f"TensorRT MSDA plugin {LIBRARY_NAME} is not built: run `bash {PLUGIN_DIR / 'build.sh'}` on the machine "
            f"with TensorRT (or set ${ENV_VAR}), or export with msda='trt_builtin' to use TensorRT's own plugin"
        )
    return lib


def build(tensorrt_root: Optional[str] = None) -> Path:
    """Configure and build the plugin with CMake (needs nvcc and TensorRT headers/libraries)."""
    if shutil.which("cmake") is None or shutil.which("nvcc") is None:
        raise RuntimeError("building the TensorRT plugin needs cmake and nvcc (CUDA toolkit) on PATH")
    cmd = ["bash", str(PLUGIN_DIR / "build.sh")] + ([tensorrt_root] if tensorrt_root else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"TensorRT plugin build failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return PLUGIN_DIR / "build" / LIBRARY_NAME
