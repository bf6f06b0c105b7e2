"""The TensorRT MSDA plugins' non-GPU methods as a host program against public TensorRT headers.

`tests/csrc/trt_plugin_host.cpp` includes a plugin source (IPluginV2DynamicExt for TensorRT 8.x and
10.x, IPluginV3 for 10.x and 11.x) and checks, without TensorRT's library or a GPU: the creator's
fields and attribute parsing, output types and shapes, format combinations (FP32 locations and
weights in FP16 engines too), configurePlugin / enqueue shape checks, serialisation round trips,
and what enqueue hands the kernel launcher (played by a host loop over the shared per-sample
arithmetic). The plugin sources also compile with nvcc against the same headers.

TensorRT's headers are not on any registry this project installs from (PyPI's tensorrt wheels hold
libraries only; Debian has no TensorRT), so these tests run where TENSORRT_INCLUDE_DIR names one or
more include folders (os.pathsep-separated) or a TensorRT install is in a standard place, and skip
otherwise. On a JetPack device the headers are in /usr/include/aarch64-linux-gnu.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest

from host_build import KERNEL_DIR, PLUGIN_DIR, TEST_CSRC, cached_build, cuda_home, files_under

STANDARD_PLACES = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/local/TensorRT/include",
                   "/usr/include")


def tensorrt_version(include: Path) -> Tuple[int, int]:
    text = (include / "NvInferVersion.h").read_text()
    found = {}
    for key in ("MAJOR", "MINOR"):
        m = re.search(rf"#define (?:NV_TENSORRT_{key}|TRT_{key}_ENTERPRISE) (\d+)", text)
        found[key] = int(m.group(1)) if m else -1
    return found["MAJOR"], found["MINOR"]


def tensorrt_includes() -> List[Path]:
    places = [p for p in os.environ.get("TENSORRT_INCLUDE_DIR", "").split(os.pathsep) if p] + list(STANDARD_PLACES)
    found = []
    for p in places:
        path = Path(p).resolve()
        if (path / "NvInferRuntime.h").is_file() and (path / "NvInferVersion.h").is_file() and path not in found:
            found.append(path)
    return found


def plugin_apis(major: int) -> List[str]:
    """V2 is built for TensorRT 8.x (JetPack 5) and still compiles on 10.x; 11 dropped its registry calls."""
    return (["v2"] if major <= 10 else []) + (["v3"] if major >= 10 else [])


CASES = [(inc, api) for inc in tensorrt_includes() for api in plugin_apis(tensorrt_version(inc)[0])]
NO_HEADERS = ("no TensorRT headers (NvInferRuntime.h): set TENSORRT_INCLUDE_DIR to TensorRT's include folder(s); "
              "none of the package registries we install from ships them")


def _id(case) -> str:
    inc, api = case
    major, minor = tensorrt_version(inc)
    return f"trt{major}.{minor}-{api}"


@pytest.mark.parametrize("include,api", CASES or [pytest.param(None, None, marks=pytest.mark.skip(reason=NO_HEADERS))],
                         ids=[_id(c) for c in CASES] or ["no-headers"])
def test_plugin_host_program(include, api):
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    home = cuda_home()
    if home is None:
        pytest.skip("needs the CUDA headers (cuda_runtime.h, cuda_fp16.h): set CUDA_HOME")
    major, minor = tensorrt_version(include)
    command = ["g++", "-std=c++17", "-O1", "-Wall", "-Wno-deprecated-declarations", "-Wno-unused-parameter",
               f"-I{PLUGIN_DIR}", f"-I{KERNEL_DIR}", f"-I{include}", f"-I{home / 'include'}",
               *(["-DEDGEDET_TRT_PLUGIN_V3"] if api == "v3" else []), str(TEST_CSRC / "trt_plugin_host.cpp"),
               "-o", "{out}"]
    inputs = files_under(KERNEL_DIR, PLUGIN_DIR, TEST_CSRC) + sorted(include.glob("NvInfer*.h"))
    program = cached_build(f"trt-plugin-host-{major}.{minor}-{api}", command, inputs)
    run = subprocess.run([str(program)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    checks = re.search(r"(\d+) checks, 0 failures", run.stdout)
    assert checks and int(checks.group(1)) > 150, run.stdout[-2000:]


@pytest.mark.parametrize("include,api", CASES or [pytest.param(None, None, marks=pytest.mark.skip(reason=NO_HEADERS))],
                         ids=[_id(c) for c in CASES] or ["no-headers"])
def test_plugin_sources_compile_with_nvcc(include, api):
    """What the Makefile does on a Jetson (nvcc -x cu on the plugin source)."""
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc")
    major, minor = tensorrt_version(include)
    command = ["nvcc", "-std=c++17", "-x", "cu", "-Xcompiler", "-fPIC", "-Xcompiler", "-Wno-deprecated-declarations",
               f"-I{KERNEL_DIR}", f"-I{include}", "-c", str(PLUGIN_DIR / f"msda_plugin_{api}.cpp"), "-o", "{out}"]
    inputs = files_under(KERNEL_DIR, PLUGIN_DIR) + sorted(include.glob("NvInfer*.h"))
    plugin = cached_build(f"trt-plugin-{major}.{minor}-{api}.o", command, inputs)
    kernel = cached_build("msda-kernel.o", ["nvcc", "-std=c++17", "-c", str(KERNEL_DIR / "msda_kernel.cu"), "-o",
                                            "{out}"], files_under(KERNEL_DIR))
    if shutil.which("nm") is None:
        pytest.skip("nm not installed")
    # every launcher the plugin calls is one the kernel file instantiates (the library links)
    needed = {s.split()[-1] for s in _nm(plugin, "-u") if "msda_forward" in s}
    defined = {s.split()[-1] for s in _nm(kernel, "--defined-only") if "msda_forward" in s}
    assert needed and needed <= defined, needed - defined


def _nm(path: Path, flag: str) -> List[str]:
    return subprocess.run(["nm", flag, str(path)], capture_output=True, text=True, check=True).stdout.splitlines()
