"""Build and locate the fused-MSDA OpenVINO extension `libedgedet_ov_msda.so`.

The C++ sources live in `csrc/` (op `MultiScaleDeformableAttention`, version "edgedet1", plus the
ONNX frontend mapping for domain `edgedet`). `build()` compiles them with CMake against the
installed `openvino` wheel into `lib/` next to this file (ignored by git). Load the library with
`ov.Core().add_extension(str(library_path()))` or `ov.convert_model(..., extension=...)`.
Deliberately torch-free: runtime-side code only needs the file.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

LIBRARY_NAME = "libedgedet_ov_msda.so"
SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
LIB_DIR = Path(__file__).resolve().parent / "lib"
_SOURCES = ("CMakeLists.txt", "msda_kernel.hpp", "msda_kernel.cpp", "msda_op.hpp", "msda_op.cpp", "ov_extension.cpp")
BUILD_HINT = (
    "build it with `python -m converters.openvino.extension` or `scripts/build_ov_extension.sh` "
    "(needs cmake and a C++17 compiler); without it, export with msda impl 'pytorch' (GridSample) "
    "or 'gather', which OpenVINO runs natively"
)

log = logging.getLogger(__name__)


class ExtensionBuildError(RuntimeError):
    """The extension could not be compiled (missing toolchain or a compiler error)."""


def _built_library() -> Path:
    return LIB_DIR / LIBRARY_NAME


def _is_stale(lib: Path) -> bool:
    built = lib.stat().st_mtime
    return any((SOURCE_DIR / name).stat().st_mtime > built for name in _SOURCES)


def openvino_cmake_dir() -> Path:
    """OpenVINO_DIR of the installed `openvino` Python package."""
    try:
        import openvino.utils as ov_utils
    except ImportError as exc:
        raise ExtensionBuildError("the `openvino` package is not installed; pip install 'edgedet[convert]'") from exc
    return Path(ov_utils.get_cmake_path())


def _run(cmd: list, cwd: Path) -> None:
    log.info("running %s", " ".join(str(c) for c in cmd))
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise ExtensionBuildError(f"`{' '.join(str(c) for c in cmd)}` failed (exit {proc.returncode}):\n{tail}")


def build(force: bool = False) -> Path:
    """Compile the extension into `lib/` (skipped when up to date unless `force`); returns its path."""
    lib = _built_library()
    if lib.exists() and not force and not _is_stale(lib):
        return lib
    missing = [] if shutil.which("cmake") else ["cmake"]
    if shutil.which("c++") is None and shutil.which("g++") is None and shutil.which("clang++") is None:
        missing.append("a C++ compiler (g++ or clang++)")
    if missing:
        raise ExtensionBuildError(f"cannot build {LIBRARY_NAME}: missing {', '.join(missing)}; " + BUILD_HINT)
    cmake_dir = LIB_DIR / "cmake-build"
    if force and cmake_dir.exists():
        shutil.rmtree(cmake_dir)
    cmake_dir.mkdir(parents=True, exist_ok=True)
    _run(
        [
            "cmake", "-S", SOURCE_DIR, "-B", cmake_dir, "-DCMAKE_BUILD_TYPE=Release",
            f"-DOpenVINO_DIR={openvino_cmake_dir()}", f"-DEDGEDET_OUTPUT_DIR={LIB_DIR}",
        ],
        cwd=LIB_DIR,
    )
    _run(["cmake", "--build", cmake_dir, "--parallel", str(os.cpu_count() or 1)], cwd=LIB_DIR)
    if not lib.exists():
        raise ExtensionBuildError(f"the build finished but {lib} is missing")
    lib.touch()  # newer than every source even when make decided nothing changed
    log.info("built %s", lib)
    return lib


def library_path(build_if_missing: bool = False) -> Path:
    """Path of the compiled library; builds it first when asked, else raises FileNotFoundError."""
    lib = _built_library()
    if lib.exists():
        return lib
    if build_if_missing:
        return build()
    raise FileNotFoundError(f"{LIBRARY_NAME} is not built ({lib}); " + BUILD_HINT)


def is_available() -> bool:
    """True when the compiled library exists (does not try to build it)."""
    return _built_library().exists()


def main(argv: "list[str] | None" = None) -> int:
    """`python -m converters.openvino.extension [--force]`: build and print the library path."""
    import argparse

    parser = argparse.ArgumentParser(description=f"Build {LIBRARY_NAME} (fused MSDA for OpenVINO).")
    parser.add_argument("--force", action="store_true", help="rebuild from scratch")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = build(force=args.force)
    except ExtensionBuildError as exc:
        log.error("%s", exc)
        return 1
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
