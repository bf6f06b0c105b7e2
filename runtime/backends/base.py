"""The `Backend` contract and the registry that picks one by name or artifact suffix.

A backend wraps one inference engine (ONNX Runtime, OpenVINO, TensorRT) behind
`load` / `infer` / `close`. Engine libraries are imported only inside their own backend
module, and that module is imported only when the backend is chosen, so a box with just
onnxruntime never needs openvino or tensorrt.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from runtime.manifest import Manifest

Feeds = Dict[str, np.ndarray]


class BackendUnavailableError(RuntimeError):
    """The engine library of a backend is not installed (the message names the extra)."""


class ArtifactError(RuntimeError):
    """An artifact that cannot be loaded: missing, truncated, corrupt or lacking its custom ops."""


class InputError(ValueError):
    """Feeds that do not match the artifact's inputs."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input: name, shape with None for dynamic dims, numpy dtype."""

    name: str
    shape: Tuple[Optional[int], ...]
    dtype: np.dtype


class Backend:
    """Base class of the engine wrappers.

    Subclasses implement `_load`, `_infer`, `input_specs`, `output_names`, `close`; the base
    class validates feeds and gives a synchronous `infer_async`/`wait` that engines with real
    asynchronous requests (OpenVINO) override.
    """

    name = "base"

    def __init__(self) -> None:
        self.path: Optional[Path] = None
        self.device = ""

    def load(self, path: Union[str, Path], manifest: Optional[Manifest] = None, device: str = "CPU", **options: Any) -> "Backend":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model artifact not found: {path}")
        self.path, self.device = path, device
        self._load(path, manifest, device, **options)
        return self

    def _load(self, path: Path, manifest: Optional[Manifest], device: str, **options: Any) -> None:
        raise NotImplementedError

    @property
    def input_specs(self) -> List[TensorSpec]:
        raise NotImplementedError

    @property
    def output_names(self) -> List[str]:
        raise NotImplementedError

    def output_shapes(self) -> Dict[str, Tuple[Optional[int], ...]]:
        """Output name -> shape (None = dynamic) where the engine says; {} when it cannot."""
        return {}

    def embedded_manifest(self) -> Optional[Manifest]:
        """The manifest stored inside the artifact, when the format can hold one."""
        return None

    def infer(self, feeds: Feeds) -> Dict[str, np.ndarray]:
        """feeds: input name -> array (shapes per `input_specs`) -> output name -> array."""
        return self._infer(self.check_feeds(feeds))

    def _infer(self, feeds: Feeds) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def infer_async(self, feeds: Feeds) -> Any:
        """Start inference and return a handle for `wait`; synchronous unless the engine has async requests."""
        return self.infer(feeds)

    def wait(self, handle: Any) -> Dict[str, np.ndarray]:
        return handle

    @property
    def max_in_flight(self) -> int:
        """How many `infer_async` handles may be outstanding (not yet passed to `wait`) at once."""
        return 1

    def close(self) -> None:
        """Free the engine's resources; the backend cannot be used afterwards."""

    def check_feeds(self, feeds: Feeds) -> Feeds:
        """Check names and static dims, cast dtypes; raise InputError saying what was expected."""
        specs = {s.name: s for s in self.input_specs}
        missing = sorted(set(specs) - set(feeds))
        extra = sorted(set(feeds) - set(specs))
        if missing or extra:
            raise InputError(f"inputs {sorted(feeds)} do not match the model's inputs {sorted(specs)}")
        out = {}
        for name, value in feeds.items():
            spec = specs[name]
            arr = np.asarray(value)
            bad_rank = len(spec.shape) != arr.ndim
            if bad_rank or any(d is not None and d != a for d, a in zip(spec.shape, arr.shape)):
                want = "x".join("?" if d is None else str(d) for d in spec.shape)
                raise InputError(f"input '{name}' has shape {list(arr.shape)}, the model expects [{want}]")
            out[name] = np.ascontiguousarray(arr, dtype=spec.dtype)
        return out

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class BackendEntry:
    name: str
    target: str  # "module:Class", imported when the backend is chosen
    suffixes: Tuple[str, ...]
    install: str  # what to install when the engine library is missing


class BackendRegistry:
    """Backend name -> lazily imported class, plus artifact suffix -> name."""

    def __init__(self) -> None:
        self._entries: Dict[str, BackendEntry] = {}

    def register(self, name: str, target: str, suffixes: Tuple[str, ...], install: str) -> None:
        if name in self._entries:
            raise ValueError(f"backend '{name}' is registered twice")
        self._entries[name] = BackendEntry(name, target, tuple(s.lower() for s in suffixes), install)

    def names(self) -> List[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> BackendEntry:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown backend '{name}'.{hint} Valid names: auto, {', '.join(self.names())}")
        return self._entries[name]

    def name_for(self, artifact: Union[str, Path]) -> str:
        """The backend that reads this artifact, by file suffix."""
        suffix = Path(artifact).suffix.lower()
        for entry in self._entries.values():
            if suffix in entry.suffixes:
                return entry.name
        known = ", ".join(f"{s} ({e.name})" for e in self._entries.values() for s in e.suffixes)
        raise ValueError(f"cannot tell the backend of '{artifact}' from its suffix; known suffixes: {known}; or pass backend=NAME")

    def get_class(self, name: str) -> type:
        entry = self.entry(name)
        module_name, cls_name = entry.target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise BackendUnavailableError(f"backend '{name}' is unavailable ({e}); install it with: {entry.install}") from e
        return getattr(module, cls_name)

    def create(self, name: str) -> Backend:
        return self.get_class(name)()


BACKENDS = BackendRegistry()
BACKENDS.register("onnxruntime", "runtime.backends.onnxruntime:OnnxRuntimeBackend", (".onnx", ".ort"), "pip install onnxruntime (or onnxruntime-gpu)")
BACKENDS.register("openvino", "runtime.backends.openvino:OpenVINOBackend", (".xml",), "pip install openvino (or 'edgedet[convert]')")
BACKENDS.register("tensorrt", "runtime.backends.tensorrt:TensorRTBackend", (".engine", ".plan"), "pip install 'edgedet[tensorrt]'")


def load_backend(artifact: Union[str, Path], backend: str = "auto", manifest: Optional[Manifest] = None, device: str = "CPU", **options: Any) -> Backend:
    """Create and load the backend for `artifact` ("auto": chosen by file suffix)."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise FileNotFoundError(f"model artifact not found: {artifact} (export one with `edgedet export`)")
    name = BACKENDS.name_for(artifact) if backend == "auto" else backend
    return BACKENDS.create(name).load(artifact, manifest, device, **options)
