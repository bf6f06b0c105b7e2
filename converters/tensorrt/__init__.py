"""TensorRT engines: ONNX with the MSDA plugin node -> engine built with TensorRT's Python API.

- `engine.build_engine(model, request)`: the builder named in the format table.
- `builder`: network parsing, optimisation profiles, FP16/INT8, timing cache.
- `onnx_plugins`: rewrites fused MSDA nodes for our plugin or TensorRT's built-in one.
- `plugin`: finds or builds `libedgedet_trt_msda.so` (sources in `plugins/msda/`).
TensorRT itself is imported only when an engine is built.
"""
