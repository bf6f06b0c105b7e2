"""Loading TensorRT plugin libraries once per process, with their creators registered once.

The engine builder (converters) and the TensorRT backend (runtime) both need our MSDA plugin
(`libedgedet_trt_msda.so`), often from two paths (the build folder and a copy beside the
engine). Loading both, or one twice, would register the creator twice (TensorRT logs an error
and may keep either). Here a library is skipped when a creator of its name and version is
already registered, and each resolved path is loaded at most once. TensorRT 10 loads it with
`IPluginRegistry.load_library` (which registers what the library's `getCreators` returns);
TensorRT 8.x with a plain dlopen (the V2 library registers its creator while loading).
Takes the `tensorrt` module as an argument, so it imports nothing heavy itself.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any, Dict

log = logging.getLogger(__name__)

MSDA_PLUGIN_NAME = "MultiScaleDeformableAttention"
MSDA_PLUGIN_VERSION = "1"

_LOCK = threading.Lock()
_LOADED: Dict[str, Any] = {}  # resolved path -> library handle
_INITIALISED_BUILTINS = False


def init_builtin_plugins(trt: Any, logger: Any) -> None:
    """TensorRT's own plugins (MultiscaleDeformableAttnPlugin_TRT among them), once per process."""
    global _INITIALISED_BUILTINS
    with _LOCK:
        if not _INITIALISED_BUILTINS:
            trt.init_libnvinfer_plugins(logger, "")
            _INITIALISED_BUILTINS = True


def creator_registered(trt: Any, name: str = MSDA_PLUGIN_NAME, version: str = MSDA_PLUGIN_VERSION) -> bool:
    registry = trt.get_plugin_registry()
    getter = getattr(registry, "get_creator", None) or registry.get_plugin_creator
    try:
        return getter(name, version, "") is not None
    except Exception:  # noqa: BLE001 (some versions raise instead of returning None)
        return False


def load_plugin_library(trt: Any, path: Path, name: str = MSDA_PLUGIN_NAME, version: str = MSDA_PLUGIN_VERSION) -> bool:
    """Load `path` unless it or a creator `name`/`version` is already there; True if loaded now."""
    resolved = str(Path(path).resolve())
    with _LOCK:
        if resolved in _LOADED:
            return False
        if creator_registered(trt, name, version):
            log.info("TensorRT plugin %s v%s already registered; not loading %s", name, version, path)
            _LOADED[resolved] = None
            return False
        registry = trt.get_plugin_registry()
        if int(str(trt.__version__).split(".")[0]) >= 10 and hasattr(registry, "load_library"):
            handle = registry.load_library(resolved)
            if handle is None:
                raise RuntimeError(f"TensorRT could not load the plugin library {path}")
        else:  # TensorRT 8.x: the library's static initialiser registers the creator
            handle = ctypes.CDLL(resolved, mode=ctypes.RTLD_GLOBAL)
        _LOADED[resolved] = handle
        log.info("loaded TensorRT plugin library %s", path)
        return True
