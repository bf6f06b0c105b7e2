"""`PromptedDetector`: find objects like the prompted ones, with two exported artifacts (torch-free).

    det = PromptedDetector("trex-prompt-encoder.onnx", "trex-detector.onnx")
    det.set_prompts(image_bgr, boxes=[[x0, y0, x1, y1]], names="bolt")   # exemplars, image pixels
    det.add_prompt_image(other_bgr, points=[[x, y]], names="bolt")        # averaged into "bolt"
    det.add_texts(["nut"])                    # text bank, or any text with the exported text encoder
    det.save_prompts("prompts.npz")
    dets = det(frame_bgr)                                                 # Detections, names = prompt names

Prompts are encoded once (the encoder artifact runs per prompt image); every frame runs only
the detector artifact. Per name the prompt is the re-normalised mean of its sources' unit
embeddings (images, texts), as `edgedet.nn.prompt_encoder.average_prompts` computes it.
"""
from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from runtime.atomic import atomic_write
from runtime.backends.base import Backend, load_backend
from runtime.manifest import Manifest, ManifestError, read_sidecar
from runtime.defaults import DEDUP_OFF, defaults_note, resolve_conf, resolve_dedup_iou
from runtime.postprocess import Postprocessor, checked_dedup_iou
from runtime.preprocess import LetterboxInfo, Preprocessor, valid_region
from runtime.types import Detections

Names = Union[str, Sequence[str], None]

# Prompted artifacts store no tuned threshold (scores depend on the prompts); the prompted demo and the
# live prompted view draw at this one, with near-copies of a box (IoU >= PROMPTED_DEDUP_IOU) dropped.
PROMPTED_CONF = 0.4
PROMPTED_DEDUP_IOU = 0.7


def _load(artifact: Union[str, Path], role: str, backend: str, device: str, options: Dict[str, Any]) -> Tuple[Backend, Manifest]:
    path = Path(artifact)
    if not path.is_file():
        raise FileNotFoundError(f"{role} artifact not found: {path} (export it with converters.prompted.export_prompted)")
    manifest = read_sidecar(path)
    engine = load_backend(path, backend, manifest, device, **options)
    manifest = manifest or engine.embedded_manifest()
    info = (manifest.extra.get("prompted") if manifest else None) or {}
    if info.get("role") != role:
        engine.close()
        raise ManifestError(f"{path.name} is not a prompted-detector {role} (manifest role {info.get('role')!r}); "
                            "pass the files written by export_prompted")
    return engine, manifest


def _per_box_names(names: Names, count: int) -> List[str]:
    if names is None:
        return ["object"] * count
    if isinstance(names, str):
        return [names] * count
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"got {len(names)} names for {count} prompts; give one name per box/point or a single name")
    return names



def _read_npz(path: Path, keys: Sequence[str], what: str = "prompt file") -> List[np.ndarray]:
    """The arrays `keys` of an .npz; one line naming the file when it is truncated, corrupt or lacks one."""
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):  # a bare .npy array
            raise ValueError("one array, not an .npz archive")
        with data:
            return [np.asarray(data[k]) for k in keys]
    except KeyError as e:
        raise ValueError(f"{path} is not a {what}: it lacks {e}; save the prompts again") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # truncated: BadZipFile / EOFError
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable {what} (truncated or corrupt: {reason[:120]}); save the prompts again") from None


def _read_prompt_file(path: Path) -> Tuple[List[str], np.ndarray, np.ndarray]:
    names, sums, counts = _read_npz(path, ("names", "sums", "counts"))
    return [str(n) for n in names], np.asarray(sums, np.float32), np.asarray(counts, np.float32).reshape(-1)

class PromptedDetector:
    """Prompt encoder + prompted detector artifacts behind one object; see the module docstring.

    backend/device/backend_options as `runtime.Detector`; conf: minimum score kept (None = the detector manifest's recommended threshold);
    dedup_iou: drop near-copies of a box of the same prompt, as `runtime.Detector`'s (None = the manifest's, 0 = off). Artifacts of any
    exported format: .onnx (ONNX Runtime), .xml (OpenVINO), .engine (TensorRT, with its sidecar manifest).
    """

    def __init__(self, encoder_artifact: Union[str, Path], detector_artifact: Union[str, Path], backend: str = "auto",
                 device: str = "CPU", conf: Optional[float] = None, dedup_iou: Optional[float] = None, **backend_options: Any):
        if dedup_iou is not None and dedup_iou != DEDUP_OFF:
            checked_dedup_iou(dedup_iou)  # before any backend opens
        self.encoder, self.encoder_manifest = _load(encoder_artifact, "prompt_encoder", backend, device, backend_options)
        self.detector, self.manifest = _load(detector_artifact, "detector", backend, device, backend_options)
        info = self.manifest.extra["prompted"]
        self.max_prompts, self.max_boxes, self.dim = int(info["max_prompts"]), int(info["max_prompt_boxes"]), int(info["prompt_dim"])
        enc_info = self.encoder_manifest.extra["prompted"]
        if (int(enc_info["max_prompt_boxes"]), int(enc_info["prompt_dim"])) != (self.max_boxes, self.dim):
            raise ManifestError("the prompt encoder and detector artifacts come from different exports; re-export both together")
        bank = info.get("text_bank") or ""
        folder = Path(detector_artifact).parent
        self._text_bank_path = folder / bank if bank else None
        self._text_bank: Optional[Dict[str, np.ndarray]] = None
        text_encoder, vocab = info.get("text_encoder") or "", info.get("text_vocab") or ""
        self._text_encoder_paths = (folder / text_encoder, folder / vocab) if text_encoder and vocab else None
        self._text_engine: Optional[Tuple[Backend, Any]] = None
        self._backend, self._device, self._options = backend, device, backend_options
        self.preprocessor = Preprocessor(self.manifest.preprocess)
        self.encoder_preprocessor = Preprocessor(self.encoder_manifest.preprocess)
        self.conf = resolve_conf(conf, self.manifest)
        self.dedup_iou = resolve_dedup_iou(dedup_iou, self.manifest)
        self.defaults_note = defaults_note(conf, dedup_iou, self.manifest)
        self.clear_prompts()

    # ---------------------------------------------------------------- prompts

    @property
    def prompt_names(self) -> Tuple[str, ...]:
        return tuple(self._names)

    @property
    def class_names(self) -> Tuple[str, ...]:
        """The names detections carry (= prompt_names), as `runtime.Detector.class_names`."""
        return tuple(self._names)

    @property
    def input_size(self) -> Tuple[int, int]:
        """Network input (H, W)."""
        return tuple(self.manifest.preprocess.size)

    def clear_prompts(self) -> None:
        self._names: List[str] = []
        self._sums = np.zeros((0, self.dim), np.float32)
        self._counts = np.zeros(0, np.float32)
        self._refresh()

    def remove_prompt(self, name: str) -> "PromptedDetector":
        """Forget one prompt name (all its sources)."""
        if name not in self._names:
            raise KeyError(f"no prompt named {name!r}; prompts are {list(self._names)}")
        i = self._names.index(name)
        del self._names[i]
        self._sums = np.delete(self._sums, i, axis=0)
        self._counts = np.delete(self._counts, i, axis=0)
        self._refresh()
        return self

    def set_prompts(self, image: Optional[np.ndarray] = None, boxes=None, points=None, texts: Optional[Sequence[str]] = None,
                    names: Names = None) -> "PromptedDetector":
        """Replace the prompts: exemplar boxes ([n, 4] xyxy pixels) and/or points ([n, 2] pixels) on a BGR
        `image` (names: one per box then per point, or one for all) and/or `texts` (see add_texts)."""
        self.clear_prompts()
        if image is not None:
            self.add_prompt_image(image, boxes=boxes, points=points, names=names)
        elif boxes is not None or points is not None:
            raise ValueError("boxes/points need the image they were drawn on: set_prompts(image, boxes=...)")
        if texts:
            self.add_texts(texts)
        return self

    def add_prompt_image(self, image: np.ndarray, boxes=None, points=None, names: Names = None) -> "PromptedDetector":
        """Encode exemplars on one more BGR image; each name's prompt becomes the mean over its sources."""
        b = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
        p = np.zeros((0, 2), np.float32) if points is None else np.asarray(points, np.float32).reshape(-1, 2)
        if len(b) + len(p) == 0:
            raise ValueError("add_prompt_image needs at least one box ([n, 4] xyxy pixels) or point ([n, 2] pixels)")
        if len(b) and np.any(b[:, 2:] < b[:, :2]):
            raise ValueError("prompt boxes must be xyxy with x1 >= x0 and y1 >= y0 (image pixels)")
        per_box = _per_box_names(names, len(b) + len(p))
        x, infos = self.encoder_preprocessor(image)
        net = np.concatenate([self._to_network_cxcywh(b, infos[0]),
                              self._to_network_cxcywh(np.concatenate([p, p], 1), infos[0])], 0)
        order = list(dict.fromkeys(per_box))  # names in first-seen order
        groups = {n: net[[i for i, m in enumerate(per_box) if m == n]] for n in order}
        # One encoder run holds K classes x N boxes; more boxes of a class run as extra sources.
        jobs = [(n, g[s:s + self.max_boxes]) for n, g in groups.items() for s in range(0, len(g), self.max_boxes)]
        for start in range(0, len(jobs), self.max_prompts):
            chunk = jobs[start:start + self.max_prompts]
            feed_boxes = np.zeros((1, self.max_prompts, self.max_boxes, 4), np.float32)
            feed_mask = np.zeros((1, self.max_prompts, self.max_boxes), np.bool_)
            for k, (_, g) in enumerate(chunk):
                feed_boxes[0, k, : len(g)] = g
                feed_mask[0, k, : len(g)] = True
            feeds = {"images": x, "prompt_boxes": feed_boxes, "prompt_box_mask": feed_mask}
            out = self.encoder.infer(self._with_valid(feeds, self.encoder_manifest, infos))
            emb = np.asarray(out["prompt_embeddings"], np.float32)[0]
            for k, (name, _) in enumerate(chunk):
                self._accumulate(name, emb[k])
        self._refresh()
        return self

    def add_texts(self, texts: Sequence[str]) -> "PromptedDetector":
        """Add text prompts (each text is its own name): from the exported text bank, else encoded by the
        exported text encoder when there is one."""
        if isinstance(texts, str):
            texts = [texts]
        bank = self.text_bank()
        unknown = [t for t in texts if t not in bank]
        if unknown and self._text_encoder_paths is None:
            known = ", ".join(sorted(bank)) or "none"
            raise KeyError(f"text prompt {unknown[0]!r} is not in the exported text bank (known: {known}) and no text "
                           "encoder was exported; re-export with export_prompted(..., text_prompts=[...] or text_encoder=True)")
        encoded = dict(zip(unknown, self.encode_texts(unknown))) if unknown else {}
        for t in texts:
            self._accumulate(t, bank[t] if t in bank else encoded[t])
        self._refresh()
        return self

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Any texts -> [T, Dp] unit embeddings with the exported text encoder (tokenised by runtime.wordpiece)."""
        if self._text_encoder_paths is None:
            raise FileNotFoundError("these artifacts carry no text encoder; re-export with export_prompted(..., text_encoder=True)")
        if self._text_engine is None:
            from runtime.wordpiece import WordPieceTokenizer

            model_path, vocab = self._text_encoder_paths
            # TensorRT exports keep the text encoder as ONNX: it then runs on ONNX Runtime, picked by suffix.
            switched = model_path.suffix == ".onnx" and self._backend == "tensorrt"
            engine, _ = _load(model_path, "text_encoder", "auto" if switched else self._backend,
                              "CPU" if switched else self._device, {} if switched else self._options)
            self._text_engine = (engine, WordPieceTokenizer(vocab))
        engine, tokenizer = self._text_engine
        out = []
        for text in texts:  # one at a time: no padding, so results do not depend on the batch
            ids, mask = tokenizer.batch([text])
            out.append(np.asarray(engine.infer({"input_ids": ids, "attention_mask": mask})["text_embeddings"], np.float32)[0])
        return np.stack(out) if out else np.zeros((0, self.dim), np.float32)

    def text_bank(self) -> Dict[str, np.ndarray]:
        """Exported name -> text embedding [Dp] ({} when the artifacts carry no bank)."""
        if self._text_bank is None:
            self._text_bank = {}
            if self._text_bank_path is not None and self._text_bank_path.is_file():
                names, embeddings = _read_npz(self._text_bank_path, ("names", "embeddings"), "text bank")
                self._text_bank = {str(n): e.astype(np.float32) for n, e in zip(names, embeddings)}
        return self._text_bank

    def save_prompts(self, path: Union[str, Path]) -> Path:
        """Write names, embeddings [K, Dp], sums and counts to an .npz (reload with load_prompts)."""
        path = Path(path)
        path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")  # numpy's own naming
        names, emb, sums, counts = np.asarray(self._names, dtype=str), self._embeddings(), self._sums, self._counts
        atomic_write(path, lambda f: np.savez(f, names=names, embeddings=emb, sums=sums, counts=counts))
        return path

    def load_prompts(self, path: Union[str, Path]) -> "PromptedDetector":
        """Replace the prompts by a file from save_prompts (or the exported text bank)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path}")
        names, sums, counts = _read_prompt_file(path)
        if sums.ndim != 2 or sums.shape[1] != self.dim:
            raise ValueError(f"{path.name} holds {sums.shape[-1]}-d prompts; these artifacts use {self.dim}-d")
        if not (len(names) == len(sums) == len(counts)):
            raise ValueError(f"{path} is inconsistent ({len(names)} names, {len(sums)} prompts, {len(counts)} counts); "
                             "save the prompts again")
        self._names, self._sums = names, sums
        self._counts = counts
        self._refresh()
        return self

    def _accumulate(self, name: str, embedding: np.ndarray) -> None:
        if name not in self._names:
            if len(self._names) >= self.max_prompts:
                raise ValueError(f"at most {self.max_prompts} prompt names fit these artifacts; got one more: {name!r}")
            self._names.append(name)
            self._sums = np.concatenate([self._sums, np.zeros((1, self.dim), np.float32)])
            self._counts = np.concatenate([self._counts, np.zeros(1, np.float32)])
        i = self._names.index(name)
        self._sums[i] += embedding
        self._counts[i] += 1

    def _embeddings(self) -> np.ndarray:
        norm = np.linalg.norm(self._sums, axis=1, keepdims=True)
        return (self._sums / np.maximum(norm, 1e-12)).astype(np.float32)

    def _refresh(self) -> None:
        """Rebuild the detector's prompt feeds and the postprocessor (names) after a prompt change."""
        self._feed_prompts = np.zeros((1, self.max_prompts, self.dim), np.float32)
        self._feed_mask = np.zeros((1, self.max_prompts), np.bool_)
        self._feed_prompts[0, : len(self._names)] = self._embeddings()
        self._feed_mask[0, : len(self._names)] = True
        self.postprocessor = Postprocessor(self.manifest.outputs, self.manifest.preprocess.size, self._names, self.conf,
                                           classes=range(len(self._names)), dedup_iou=self.dedup_iou,
                                           boxes_in_valid_region=bool(self.manifest.valid_input))

    @staticmethod
    def _with_valid(feeds: Dict[str, np.ndarray], manifest: Manifest, infos: Sequence[LetterboxInfo]) -> Dict[str, np.ndarray]:
        """Add each image's valid region where the graph takes one (the padding mask it was trained with)."""
        if manifest.valid_input:
            feeds[manifest.valid_input] = valid_region(infos, manifest.preprocess.size)
        return feeds

    def _to_network_cxcywh(self, boxes_xyxy: np.ndarray, info: LetterboxInfo) -> np.ndarray:
        """[n, 4] xyxy original pixels -> [n, 4] cxcywh normalised to the valid region (the letterboxed image, as
        training normalises boxes) or, for artifacts without a valid-region input, to the network input."""
        sy, sx = info.scale_hw if info.scale_hw is not None else (info.scale, info.scale)
        h, w = self.encoder_manifest.preprocess.size
        if self.encoder_manifest.valid_input and info.valid_hw is not None:
            h, w = info.valid_hw
        x0, y0, x1, y1 = (boxes_xyxy.T * np.array([[sx], [sy], [sx], [sy]], np.float32)
                          + np.array([[info.pad_x], [info.pad_y], [info.pad_x], [info.pad_y]], np.float32))
        out = np.stack([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], 1)
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    # ---------------------------------------------------------------- detection

    def __call__(self, frame_bgr: np.ndarray) -> Detections:
        """One BGR frame -> Detections of the prompted names (class_names = prompt names)."""
        if not self._names:
            raise RuntimeError("no prompts: call set_prompts(image, boxes=...) or load_prompts(path) first")
        t0 = time.perf_counter()
        x, infos = self.preprocessor(frame_bgr)
        t1 = time.perf_counter()
        feeds = {"images": x, "prompt_embeddings": self._feed_prompts, "prompt_mask": self._feed_mask}
        outputs = self.detector.infer(self._with_valid(feeds, self.manifest, infos))
        t2 = time.perf_counter()
        det = self.postprocessor(outputs, infos)[0]
        det.timings_ms.update({"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3,
                               "postprocess": (time.perf_counter() - t2) * 1e3})
        return det

    def close(self) -> None:
        self.encoder.close()
        self.detector.close()
        if self._text_engine is not None:
            self._text_engine[0].close()

    def __enter__(self) -> "PromptedDetector":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"PromptedDetector({self.detector.path.name}, backend={self.detector.name}, "
                f"prompts={list(self._names)}, max_prompts={self.max_prompts})")
