"""ONNX export: deploy wrapper with fixed I/O names (`export.py`) and the MSDA export forms (`msda_forms.py`)."""
