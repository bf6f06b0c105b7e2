"""edgedet runtime: torch-free detection for apps on Jetson and CPU boxes.

Imports numpy and OpenCV, plus the engine library of the chosen backend, lazily.
Never torch, edgedet or converters.
"""
from runtime.types import Detections

__all__ = ["Detections"]
