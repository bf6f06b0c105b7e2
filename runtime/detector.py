"""`Detector`: an exported artifact + its manifest + a backend, as one callable on BGR frames.

    det = Detector("model.onnx")            # backend chosen by suffix, manifest from the sidecar
    dets = det(frame_bgr)                   # Detections in frame pixels, with timings_ms
    x, infos = det.preprocess(frames)
    raw = det.infer(det.feeds(x, infos))    # raw engine outputs, for any artifact
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from runtime.backends.base import ArtifactError, Backend, load_backend
from runtime.defaults import DEDUP_OFF, defaults_note, resolve_conf, resolve_dedup_iou
from runtime.manifest import MASK_FAMILIES, Manifest, ManifestError, read_sidecar, sidecar_mismatch, sidecar_path
from runtime.postprocess import Postprocessor, checked_dedup_iou
from runtime.preprocess import LetterboxInfo, Preprocessor, check_valid_region, valid_region
from runtime.types import Detections

log = logging.getLogger(__name__)


def _embedded(backend: Backend, required: bool) -> Optional[Manifest]:
    """The manifest inside the artifact; an unreadable one matters only when there is no sidecar."""
    try:
        return backend.embedded_manifest()
    except ArtifactError:
        if required:
            raise
        return None


class Detector:
    """Runs one artifact on BGR uint8 frames.

    artifact: .onnx / .xml / .engine file. backend: "auto" (by suffix) or a backend name.
    device: "CPU", "cuda", "cuda:N", "tensorrt" (onnxruntime); "CPU", "GPU", "NPU" (openvino).
    conf: minimum score kept; None = the manifest's recommended threshold (chosen at export on validation
    data, `manifest.outputs.score_threshold`); classes: label ids kept (None = all). manifest: overrides the one
    stored with the artifact. dedup_iou: drop a box overlapping a higher-scoring one of its class by more
    than this (class-wise NMS); None = the manifest's recommendation (`outputs.dedup_iou`, absent = off, the
    DETR way), 0 = off. backend_options: passed to the backend (threads, ...).
    """

    def __init__(self, artifact: Union[str, Path], backend: str = "auto", device: str = "CPU", conf: Optional[float] = None,
                 classes: Optional[Iterable[int]] = None, manifest: Optional[Manifest] = None,
                 dedup_iou: Optional[float] = None, **backend_options: Any):
        if dedup_iou is not None and dedup_iou != DEDUP_OFF:
            checked_dedup_iou(dedup_iou)  # before the backend opens: a bad value leaves nothing open
        self.artifact = Path(artifact)
        if not self.artifact.is_file():
            raise FileNotFoundError(f"model artifact not found: {self.artifact} (export one with `edgedet export`)")
        sidecar = manifest or read_sidecar(self.artifact)
        if manifest is None and sidecar is not None:
            stale = sidecar_mismatch(sidecar, self.artifact)
            if stale:
                raise ArtifactError(f"{self.artifact}: {stale}: truncated or corrupt, or replaced by an export that was "
                                    "interrupted before its sidecar was written; re-export it")
        self.backend: Backend = load_backend(self.artifact, backend, sidecar, device, **backend_options)
        try:
            embedded = _embedded(self.backend, required=sidecar is None)
            self.manifest = sidecar or embedded
            if self.manifest is None:
                raise ManifestError(
                    f"{self.artifact} carries no edgedet manifest (no {sidecar_path(self.artifact).name} beside it, none embedded); "
                    "re-export it with `edgedet export`, or pass manifest=Manifest(...)"
                )
            if sidecar is None:
                log.warning("%s has no sidecar %s (an export interrupted before writing it leaves none): using the "
                            "manifest embedded in the model; re-export if in doubt", self.artifact.name,
                            sidecar_path(self.artifact).name)
            self._check_against_model(embedded if manifest is None else None)
        except BaseException:
            self.backend.close()
            raise
        self.preprocessor = Preprocessor(self.manifest.preprocess)
        self.conf = resolve_conf(conf, self.manifest)
        self.defaults_note = defaults_note(conf, dedup_iou, self.manifest)  # what a command prints once
        self.postprocessor = Postprocessor(self.manifest.outputs, self.manifest.preprocess.size, self.manifest.class_names,
                                           self.conf, classes, resolve_dedup_iou(dedup_iou, self.manifest),
                                           boxes_in_valid_region=bool(self.manifest.valid_input))
        spec = next(s for s in self.backend.input_specs if s.name == self.manifest.input_name)
        self.max_batch = spec.shape[0] if spec.shape and spec.shape[0] else 0  # 0 = dynamic
        # A dynamic batch may still be bounded (a TensorRT optimisation profile): preprocess and run at most that many.
        limits = getattr(self.backend, "batch_limits", None)
        self.chunk = self.max_batch or (int(limits[1]) if limits and limits[1] and limits[1] > 0 else 0)

    def _check_inputs(self) -> None:
        """The graph's inputs are exactly what the manifest says it feeds: the image, plus the valid region for
        families trained with a padding mask. An older artifact of such a family (no valid-region input) still
        runs, seeing the letterbox padding as image content as it did when exported; say so once."""
        names = {s.name for s in self.backend.input_specs}
        fed = [self.manifest.input_name] + ([self.manifest.valid_input] if self.manifest.valid_input else [])
        missing, unfed = sorted(set(fed) - names), sorted(names - set(fed))
        if missing or unfed:
            raise ManifestError(f"{self.artifact.name}: the manifest feeds {fed} but the graph's inputs are {sorted(names)}; "
                                "the manifest belongs to another export: re-export the model or pass the right manifest")
        if not self.manifest.valid_input and self.manifest.family in MASK_FAMILIES and self.manifest.preprocess.resize == "letterbox":
            log.warning("%s predates the valid-region input: this %s model was trained with a padding mask but the "
                        "engine sees the letterbox padding as image content (lower accuracy on non-%dx%d images); "
                        "re-export it with `edgedet export` for training-exact results",
                        self.artifact.name, self.manifest.family, *self.manifest.preprocess.size)

    def feeds(self, x: np.ndarray, infos: Sequence[LetterboxInfo]) -> Dict[str, np.ndarray]:
        """The engine's inputs for a preprocessed batch: the image, and each image's valid region where the graph
        takes one (the padding mask the model was trained with is rebuilt from it inside the graph)."""
        out = {self.manifest.input_name: x}
        if self.manifest.valid_input:
            out[self.manifest.valid_input] = valid_region(infos, self.manifest.preprocess.size)
        return out

    def _check_against_model(self, embedded: Optional[Manifest]) -> None:
        """When the artifact opens, not on the first frame: the manifest must agree with the graph it describes."""
        names = {s.name for s in self.backend.input_specs}
        if self.manifest.input_name not in names:
            raise ManifestError(f"manifest input_name '{self.manifest.input_name}' is not an input of {self.artifact.name} ({sorted(names)})")
        self._check_inputs()
        spec = next(s for s in self.backend.input_specs if s.name == self.manifest.input_name)
        nhwc = self.manifest.preprocess.input_format == "uint8_nhwc"
        graph_hw = (tuple(spec.shape[1:3]) if nhwc else tuple(spec.shape[-2:])) if spec.shape and len(spec.shape) == 4 else ()
        size = tuple(self.manifest.preprocess.size)
        if graph_hw and all(isinstance(s, int) and s > 0 for s in graph_hw) and graph_hw != size:
            raise ManifestError(f"the manifest of {self.artifact.name} says input {size[0]}x{size[1]} but the model takes "
                                f"{graph_hw[0]}x{graph_hw[1]}; fix preprocess.size in the sidecar or re-export")
        self._check_class_count(embedded)

    def _check_class_count(self, embedded: Optional[Manifest]) -> None:
        """Refuse a manifest whose names would label the wrong classes (a detection called '2'): raw outputs
        tell the class count; otherwise the model's own record (its embedded manifest, its config) does."""
        out = self.manifest.outputs
        names = self.manifest.class_names
        if not names:
            return
        fix = "fix class_names in the sidecar or re-export"
        shape = self.backend.output_shapes().get(out.names[0] if out.names else "", ()) if not out.postprocess else ()
        if shape and shape[-1] is not None:
            expected = len(names) + (1 if out.score_activation == "softmax" else 0)  # softmax: + no-object
            if shape[-1] != expected:
                raise ManifestError(f"{self.artifact.name} predicts {shape[-1]} scores per query but its manifest lists "
                                    f"{len(names)} class names (expected {expected}); {fix}")
            return
        own = len(embedded.class_names) if embedded is not None and embedded.class_names else None
        if own is None:
            n = self.manifest.model_config.get("num_classes") if isinstance(self.manifest.model_config, dict) else None
            own = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
        if own is not None and own != len(names):
            raise ManifestError(f"the manifest of {self.artifact.name} lists {len(names)} class names but the model has "
                                f"{own} classes; {fix}")

    @property
    def class_names(self) -> Tuple[str, ...]:
        return tuple(self.manifest.class_names)

    @property
    def input_size(self) -> Tuple[int, int]:
        """Network input (H, W)."""
        return tuple(self.manifest.preprocess.size)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def preprocess(self, frames: Union[np.ndarray, Sequence[np.ndarray]]) -> Tuple[np.ndarray, List[LetterboxInfo]]:
        """BGR frame(s) -> (x [B, 3, H, W] float32, mapping of each back to its frame)."""
        return self.preprocessor(frames)

    def infer(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Raw engine call: input name -> array, to output name -> array (`feeds(x, infos)` builds them)."""
        valid = self.manifest.valid_input
        if valid and valid in feeds:
            feeds = dict(feeds)
            feeds[valid] = check_valid_region(feeds[valid], self.manifest.preprocess.size)
        elif valid:
            raise ValueError(f"{self.artifact.name} also takes '{valid}' (each image's height and width inside the "
                             f"letterboxed input, int32 [B, 2]); build the inputs with Detector.feeds(x, infos)")
        return self.backend.infer(feeds)

    def postprocess(self, outputs: Dict[str, np.ndarray], infos: Sequence[LetterboxInfo]) -> List[Detections]:
        return self.postprocessor(outputs, infos)

    def __call__(self, frame_bgr: np.ndarray) -> Detections:
        """One uint8 BGR frame [H, W, 3] (grayscale accepted) -> Detections in its pixels, with timings_ms."""
        return self.batch([frame_bgr])[0]

    def batch(self, frames: Sequence[np.ndarray]) -> List[Detections]:
        """Several frames -> one Detections each; fed in chunks the artifact's batch size allows."""
        frames = list(frames)
        step = self.chunk or len(frames) or 1
        out: List[Detections] = []
        for start in range(0, len(frames), step):
            chunk = frames[start:start + step]
            out.extend(self._run(self.pad(chunk))[: len(chunk)])
        return out

    def _run(self, frames: List[np.ndarray]) -> List[Detections]:
        t0 = time.perf_counter()
        feeds, infos = self.prepare(frames)
        t1 = time.perf_counter()
        outputs = self.backend.infer(feeds)
        t2 = time.perf_counter()
        dets = self.finish(outputs, infos, len(frames))
        t3 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3}
        for d in dets:
            d.timings_ms.update(timings)
        return dets

    # -- stages, for a pipeline that overlaps them on separate threads (same results as `batch`) --
    def prepare(self, frames: Sequence[np.ndarray]) -> Tuple[Dict[str, np.ndarray], List[LetterboxInfo]]:
        """BGR frames of one engine call -> (the engine's feeds, mapping of each frame back)."""
        x, infos = self.preprocessor(frames)
        return self.feeds(x, infos), infos

    def pad(self, frames: Sequence[np.ndarray]) -> List[np.ndarray]:
        """A static-batch artifact takes exactly `max_batch` frames: pad with copies of the last (drop their results)."""
        frames = list(frames)
        return frames + [frames[-1]] * (self.max_batch - len(frames)) if self.max_batch and len(frames) < self.max_batch else frames

    def submit(self, feeds: Dict[str, np.ndarray]) -> Any:
        """Start the engine on `prepare`'s feeds; `collect(handle)` returns its outputs. At most
        `max_in_flight` submissions may be uncollected at a time."""
        return self.backend.infer_async(feeds)

    def collect(self, handle: Any) -> Dict[str, np.ndarray]:
        return self.backend.wait(handle)

    def finish(self, outputs: Dict[str, np.ndarray], infos: Sequence[LetterboxInfo], count: int) -> List[Detections]:
        """Engine outputs -> Detections of the first `count` frames (the rest were `pad`'s copies)."""
        return self.postprocessor(outputs, infos)[:count]

    @property
    def max_in_flight(self) -> int:
        """Engine calls that may run at once (OpenVINO: its infer requests; others: 1)."""
        return max(1, int(getattr(self.backend, "max_in_flight", 1)))

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Detector({self.artifact.name}, backend={self.backend.name}, device={self.backend.device}, "
                f"family={self.manifest.family or '?'}, input={self.input_size}, classes={len(self.class_names)}, conf={self.conf:.3g}"
                f"{'' if self.postprocessor.dedup_iou is None else f', dedup_iou={self.postprocessor.dedup_iou:g}'})")
