"""edgedet converters: export detectors to ONNX / OpenVINO / TensorRT, quantize, verify parity.

    from converters import export, verify, list_formats
    path = export(model, format="openvino", precision="int8", calib="images/", imgsz=(640, 640))
    report = verify(path, model, images="images/")

Sits above `edgedet` and `runtime` in the dependency order (imports both, neither imports it).
"""
from converters.formats import ExportError, list_formats
from converters.verify import verify  # imports torch only when called (and must shadow the submodule)

__all__ = ["export", "verify", "list_formats", "ExportError"]


def __getattr__(name):
    # Lazy: export imports torch, which the CLI's --help must not wait for (PEP 562).
    if name == "export":
        from converters.api import export

        return export
    raise AttributeError(f"module 'converters' has no attribute {name!r}")
