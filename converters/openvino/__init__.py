"""OpenVINO backend of the converters: IR conversion and the fused-MSDA C++ extension.

`converters.openvino.extension` builds/locates `libedgedet_ov_msda.so` (torch-free).
"""
