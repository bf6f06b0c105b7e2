"""ONNX Runtime specific steps: INT8 static QDQ quantization (`quantize.py`)."""
