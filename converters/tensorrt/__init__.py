"""TensorRT engines (built by the TensorRT task); this entry point only checks that TensorRT exists.

`build_engine(model, request)` is the builder named in the format table. Until the engine
builder lands, it stops with a clear message on machines without TensorRT and with a
clear message that engine building is not available yet on machines with it.
"""
from __future__ import annotations

from converters.formats import ExportError


def build_engine(model, request):
    """Check for TensorRT; engines are built by the TensorRT builder (see module docstring)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        raise ExportError(
            "TensorRT is not installed; build engines on the target (Jetson/NVIDIA GPU) with TensorRT, "
            f"or export format='onnx' with msda='{request.msda or 'fused'}' and build the engine there"
        ) from e
    raise ExportError("this edgedet build has no TensorRT engine builder yet; export format='onnx' and use trtexec")
