"""edgedet converters: export detectors to ONNX / OpenVINO / TensorRT, quantize, verify parity.

    from converters import export, verify, list_formats
    path = export(model, format="openvino", precision="int8", calib="images/", imgsz=(640, 640))
    report = verify(path, model, images="images/")

Sits above `edgedet` and `runtime` in the dependency order (imports both, neither imports it).
"""
from converters.api import export
from converters.formats import ExportError, list_formats
from converters.verify import verify

__all__ = ["export", "verify", "list_formats", "ExportError"]
