"""edgedet runtime: torch-free detection for apps on Jetson and CPU boxes.

Imports numpy and OpenCV, plus the engine library of the chosen backend, lazily.
Never torch, edgedet or converters.

    from runtime import Detector, Pipeline, draw
    det = Detector("model.onnx")
    dets = det(frame_bgr)                       # Detections in frame pixels
    Pipeline(0, det, sinks=[ShowSink()]).run()  # camera 0, threaded, latest frame
"""
from runtime.capture import (
    CaptureSource,
    Frame,
    LiveIteratorSource,
    PacedVideoSource,
    SequentialSource,
    Source,
    jetson_csi_pipeline,
    open_source,
)
from runtime.detector import Detector
from runtime.draw import contact_sheet, draw, draw_fps, draw_prompts
from runtime.manifest import Manifest
from runtime.multistream import MultiStreamPipeline, StreamResult
from runtime.pipeline import Pipeline, Result, StopPipeline
from runtime.sinks import CallbackSink, JsonLinesSink, ShowSink, VideoSink
from runtime.types import Detections

__all__ = [
    "CallbackSink", "CaptureSource", "Detections", "Detector", "Frame", "JsonLinesSink", "LiveIteratorSource", "Manifest",
    "MultiStreamPipeline", "StreamResult",
    "PacedVideoSource", "Pipeline", "Result", "SequentialSource", "ShowSink", "Source", "StopPipeline", "VideoSink",
    "contact_sheet", "draw", "draw_fps", "draw_prompts", "jetson_csi_pipeline", "open_source",
]
