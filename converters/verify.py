"""Parity report: an exported artifact (through `runtime.Detector`) against the PyTorch model.

Both sides see the same preprocessed input (the Detector's own preprocessing). Reported:
max abs difference of scores and boxes, fraction of PyTorch's top-K detections the artifact
reproduces (same class, IoU >= 0.9), mAP of both on an evaluation set when one is given
(both through the same deployment pre/postprocessing, so the gap is the conversion's), and
latency of the artifact and of PyTorch eager.

OpenVINO CPU artifacts are compared at f32 (exact), and again at bf16 where the CPU computes bf16
natively (AMX-BF16 / AVX512-BF16): the `bf16` block of the report. Where it does not, bf16 is "not
measurable on this CPU" and recorded as untested, never as passed. `precision_checks` gives each
precision's verdict (top-K agreement >= runtime.precision.MIN_TOPK_MATCH); with `record=True` they go
into the artifact's sidecar manifest, where `precision="auto"` reads them.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from converters.calibration import evenly_spaced, image_paths, read_bgr
if TYPE_CHECKING:
    from torch import nn
# torch is imported inside the functions: `from converters import verify` stays cheap for the CLI.

log = logging.getLogger(__name__)

MATCH_IOU = 0.9


def iou_matrix(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """[n, 4] x [m, 4] xyxy -> [n, m] IoU."""
    lt = np.maximum(a_xyxy[:, None, :2], b_xyxy[None, :, :2])
    rb = np.minimum(a_xyxy[:, None, 2:], b_xyxy[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a_xyxy[:, 2:] - a_xyxy[:, :2], 0, None).prod(-1)
    area_b = np.clip(b_xyxy[:, 2:] - b_xyxy[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_stats(ref: Dict[str, np.ndarray], art: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Top-K lists of one image (labels [K], boxes [K, 4] xyxy, scores [K]) -> agreement figures."""
    iou = iou_matrix(ref["boxes"], art["boxes"])
    # Equal boxes are the same detection even when degenerate (zero area, e.g. clipped to the image edge: IoU 0/0).
    iou = np.where((ref["boxes"][:, None, :] == art["boxes"][None, :, :]).all(-1), 1.0, iou)
    same = ref["labels"][:, None] == art["labels"][None, :]
    iou = np.where(same, iou, 0.0)
    best = iou.argmax(1) if iou.size else np.zeros(0, int)
    matched = iou[np.arange(len(best)), best] >= MATCH_IOU if iou.size else np.zeros(0, bool)
    box_diff = np.abs(ref["boxes"][matched] - art["boxes"][best[matched]]).max() if matched.any() else 0.0
    score_diff = np.abs(np.sort(ref["scores"])[::-1] - np.sort(art["scores"])[::-1]).max()
    return {"match": float(matched.mean()) if matched.size else 1.0, "box": float(box_diff), "score": float(score_diff)}


def topk_agreement(reference: Sequence[Dict[str, np.ndarray]], candidate: Sequence[Dict[str, np.ndarray]]) -> float:
    """Mean over images of the share of the reference's top-K detections the candidate matches (same label,
    IoU >= MATCH_IOU): how much of FP32's output an INT8 / FP16 engine keeps. One top-K dict per image."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"topk_agreement needs one candidate per reference image, got {len(reference)} and {len(candidate)}")
    return float(np.mean([match_stats(r, c)["match"] for r, c in zip(reference, candidate)]))


def _as_topk(outputs: Sequence[np.ndarray], postprocess: bool, activation: str, hw, top_k: int) -> List[Dict[str, np.ndarray]]:
    """Artifact/PyTorch outputs (either layout) -> per-image top-K dicts with xyxy pixel boxes."""
    if postprocess:
        labels, boxes, scores = outputs
    else:
        import torch

        from converters.onnx.export import topk_detections

        labels, boxes, scores = (t.numpy() for t in topk_detections(
            torch.from_numpy(np.asarray(outputs[0], np.float32)), torch.from_numpy(np.asarray(outputs[1], np.float32)),
            hw, activation, top_k))
    return [
        {"labels": np.asarray(labels[i]), "boxes": np.asarray(boxes[i], np.float32), "scores": np.asarray(scores[i], np.float32)}
        for i in range(len(scores))
    ]


def _probabilities(logits: np.ndarray, activation: str) -> np.ndarray:
    import torch

    t = torch.from_numpy(np.asarray(logits, np.float32))
    return (t.sigmoid() if activation == "sigmoid" else t.softmax(-1)).numpy()


def _load_frames(images: Any, limit: int) -> List[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return [images]
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], np.ndarray):
        return list(images)[:limit]
    return [read_bgr(p) for p in evenly_spaced(image_paths(images), limit)]


def measure_latency(fn, repeats: int) -> Dict[str, float]:
    """Call `fn` once to warm up, then `repeats` times -> mean / median ms and calls per second."""
    fn()  # warm-up (lazy allocation, kernel selection)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"mean_ms": float(np.mean(times)), "p50_ms": float(np.median(times)), "fps": float(1e3 / np.mean(times))}


def reference_outputs(deploy: nn.Module, feeds: Dict[str, np.ndarray], manifest) -> List[np.ndarray]:
    """The PyTorch model's outputs for the artifact's own feeds (the image, and its valid region where the
    graph takes one), in the artifact's output order."""
    import torch

    args = [torch.from_numpy(feeds[manifest.input_name])]
    if manifest.valid_input:
        args.append(torch.from_numpy(feeds[manifest.valid_input]))
    with torch.no_grad():
        return [o.numpy() for o in deploy(*args)]


def _dataset_map(detector, deploy: nn.Module, dataset, limit: int) -> Dict[str, float]:
    from edgedet.engine.evaluator import coco_metrics

    records = evenly_spaced(dataset.records, limit)
    ids = {r.image_id for r in records}
    art, ref = [], []
    for r in tqdm(records, desc="verify mAP", leave=False):
        frame = read_bgr(Path(r.path))
        x, infos = detector.preprocess([frame])
        feeds = detector.feeds(x, infos)
        outs = reference_outputs(deploy, feeds, detector.manifest)
        names = detector.manifest.outputs.names
        art_out = detector.infer(feeds)
        ref.extend(detector.postprocess(dict(zip(names, outs)), infos)[0].to_coco(r.image_id, dataset.category_ids))
        art.extend(detector.postprocess(art_out, infos)[0].to_coco(r.image_id, dataset.category_ids))
    gt = copy.copy(dataset.coco_gt())  # shallow: only `imgs` is replaced, to score the evaluated subset
    gt.imgs = {k: v for k, v in gt.imgs.items() if k in ids}
    s_art, s_ref = coco_metrics(gt, art), coco_metrics(gt, ref)
    m_art, m_ref = s_art["mAP"], s_ref["mAP"]
    return {"map_artifact": m_art, "map_pytorch": m_ref, "map_delta": m_art - m_ref, "eval_images": len(records),
            "map50_artifact": s_art["mAP50"], "map50_pytorch": s_ref["mAP50"]}


def _compare(detector, deploy, frames: Sequence[np.ndarray]) -> Dict[str, float]:
    """The detector's top-K detections against PyTorch's on `frames` -> agreement and deviations."""
    man = detector.manifest
    post, act, k = man.outputs.postprocess, man.outputs.score_activation, man.outputs.top_k
    stats: List[Dict[str, float]] = []
    raw_prob, raw_box = 0.0, 0.0
    for frame in frames:
        x, infos = detector.preprocess([frame])
        feeds = detector.feeds(x, infos)
        ref = reference_outputs(deploy, feeds, man)
        out = detector.infer(feeds)
        art = [out[n] for n in man.outputs.names]
        if not post:  # raw heads: compare every query, not only the top-K
            raw_prob = max(raw_prob, float(np.abs(_probabilities(ref[0], act) - _probabilities(art[0], act)).max()))
            raw_box = max(raw_box, float(np.abs(ref[1] - art[1]).max()))
        hw = tuple(feeds[man.valid_input][0]) if man.valid_input else tuple(man.preprocess.size)
        for r, a in zip(_as_topk(ref, post, act, hw, k), _as_topk(art, post, act, hw, k)):
            stats.append(match_stats(r, a))
    figures = {"score_max_abs_diff": max(s["score"] for s in stats), "box_max_abs_diff_px": max(s["box"] for s in stats),
               "topk_match": float(np.mean([s["match"] for s in stats]))}
    if not post:
        figures.update({"prob_max_abs_diff": raw_prob, "box_cxcywh_max_abs_diff": raw_box})
    return figures


def _is_openvino_cpu(artifact: Path, backend: str, device: str) -> bool:
    return (backend == "openvino" or (backend == "auto" and artifact.suffix.lower() == ".xml")) and device.upper().startswith("CPU")


def bf16_parity(artifact: Path, deploy, frames: Sequence[np.ndarray], device: str = "CPU",
                backend_options: Optional[Dict[str, Any]] = None, capability=None) -> Dict[str, Any]:
    """The OpenVINO artifact run at bf16 against PyTorch: status passed / failed, or untested with the reason
    where this CPU has no native bf16 (OpenVINO would silently run f32 and the figures would mean nothing)."""
    from runtime.detector import Detector
    from runtime.precision import check_status, cpu_bf16_capability

    if capability is None:
        import openvino as ov

        capability = cpu_bf16_capability(ov.Core())
    if not capability.bf16:
        return {"status": "untested", "reason": f"not measurable on this CPU: {capability.reason}"}
    options = dict(backend_options or {}, precision="bf16")
    detector = Detector(artifact, backend="openvino", device=device, conf=0.0, **options)
    try:
        ran = detector.backend.precision_choice.precision
        if ran != "bf16":
            return {"status": "untested", "reason": f"not measurable on this CPU: OpenVINO compiled the bf16 request at {ran}"}
        figures = _compare(detector, deploy, frames)
    finally:
        detector.close()
    return dict(figures, status=check_status(figures["topk_match"]))


def record_precision_checks(artifact: Union[str, Path], report: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Write the report's verdicts into the artifact's sidecar manifest (`extra["precision_checks"]`) -> the record."""
    from runtime.manifest import read_sidecar, write_sidecar
    from runtime.precision import CHECKS_KEY

    artifact = Path(artifact)
    manifest = read_sidecar(artifact)
    if manifest is None:
        raise ValueError(f"{artifact} has no sidecar manifest to record the parity checks in; re-export it")
    keep = ("status", "topk_match", "box_max_abs_diff_px", "score_max_abs_diff", "reason")
    checks = dict(manifest.extra.get(CHECKS_KEY) or {}) if isinstance(manifest.extra, dict) else {}
    checks[report["precision"]] = {k: report[k] for k in keep if k in report and k != "status"}
    checks[report["precision"]]["status"] = report["precision_checks"][report["precision"]]
    if isinstance(report.get("bf16"), dict):
        checks["bf16"] = {k: v for k, v in report["bf16"].items() if k in keep}
    manifest.extra[CHECKS_KEY] = checks
    write_sidecar(manifest, artifact)
    return checks


def verify(
    artifact: Union[str, Path],
    reference_model: nn.Module,
    images: Any,
    eval_dataset: Any = None,
    max_images: int = 8,
    eval_images: int = 200,
    repeats: int = 10,
    backend: str = "auto",
    device: str = "CPU",
    output_json: Optional[Union[str, Path]] = None,
    time_pytorch: bool = True,
    backend_options: Optional[Dict[str, Any]] = None,
    record: bool = False,
) -> Dict[str, Any]:
    """Compare `artifact` with `reference_model` -> report dict (also saved as JSON).

    images: folder / image paths / BGR uint8 frames used for the numeric comparison.
    eval_dataset: an edgedet DetectionDataset (records, category_ids, coco_gt) for mAP, or None.
    JSON goes to `output_json` or `<artifact stem>.verify.json` beside the artifact.
    time_pytorch: also time PyTorch eager (benchmarks of many artifacts time it once instead).
    backend_options: passed to the runtime backend (e.g. {"threads": 1}).
    record: write the precision verdicts into the artifact's sidecar (what `edgedet export --verify` does).
    """
    import torch

    from converters.onnx.export import DeployModel
    from runtime.detector import Detector
    from runtime.precision import check_status

    artifact = Path(artifact)
    options = dict(backend_options or {})
    openvino_cpu = _is_openvino_cpu(artifact, backend, device)
    if openvino_cpu:
        options.setdefault("precision", "f32")  # the artifact's own precision, exactly; bf16 is checked below
    detector = Detector(artifact, backend=backend, device=device, conf=0.0, **options)
    man = detector.manifest
    deploy = DeployModel(reference_model.eval(), postprocess=man.outputs.postprocess, top_k=man.outputs.top_k,
                         preprocess=man.preprocess).eval()
    frames = _load_frames(images, max_images)
    if not frames:
        raise ValueError("verify needs at least one image")
    figures = _compare(detector, deploy, frames)
    x, infos = detector.preprocess([frames[0]])
    feeds = detector.feeds(x, infos)
    report: Dict[str, Any] = {
        "artifact": str(artifact),
        "backend": detector.backend_name,
        "precision": man.precision,
        "msda": man.msda,
        "family": man.family,
        "images": len(frames),
        **figures,
        "latency_artifact": measure_latency(lambda: detector.infer(feeds), repeats),
    }
    report["precision_checks"] = {man.precision: check_status(figures["topk_match"])}
    if openvino_cpu and detector.backend_name == "openvino":
        bf16_options = {k: v for k, v in options.items() if k != "precision"}
        report["bf16"] = bf16_parity(artifact, deploy, frames, device, bf16_options)
        report["precision_checks"]["bf16"] = report["bf16"]["status"]
    if eval_dataset is not None:
        report.update(_dataset_map(detector, deploy, eval_dataset, eval_images))
    detector.close()  # first: idle engine threads (ORT spin-waits) would slow PyTorch's timing
    if time_pytorch:
        with torch.no_grad():
            args = [torch.from_numpy(v) for v in feeds.values()]  # image first, then the valid region
            report["latency_pytorch"] = measure_latency(lambda: deploy(*args), repeats)
    path = Path(output_json) if output_json else artifact.with_name(artifact.stem + ".verify.json")
    from runtime.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2))
    report["report_path"] = str(path)
    if record:
        record_precision_checks(artifact, report)
    log.debug("%s", format_report(report))  # callers print it; once is enough
    return report


# Engine vs PyTorch on the same inputs, per precision: (largest score difference, largest box difference in
# pixels, least top-K agreement) for PASS; WARN up to the second row; FAIL beyond. INT8 is judged by mAP only:
# its top-K agreement is no measure of accuracy (0.53 on a healthy INT8 model that lost 0.002 mAP).
PARITY_LIMITS = {"fp32": ((1e-3, 1.0, 0.99), (1e-2, 4.0, 0.95)),
                 "fp16": ((0.02, 2.0, 0.95), (0.05, 6.0, 0.85)),
                 "bf16": ((0.03, 3.0, 0.93), (0.08, 8.0, 0.8))}
MAP_TOLERANCE = {"fp32": 0.005, "fp16": 0.01, "bf16": 0.01, "int8": 0.02}  # |engine - PyTorch| mAP for PASS
_RANK = {"PASS": 0, "WARN": 1, "FAIL": 2}


def map_verdict(report: Dict[str, Any]) -> str:
    """PASS / WARN (up to twice the tolerance) / FAIL of the engine's mAP against PyTorch's on the same inputs."""
    tol = MAP_TOLERANCE.get(report.get("precision", "fp32"), 0.02)
    delta = float(report["map_delta"])
    verdict = "PASS" if abs(delta) <= tol else "WARN" if abs(delta) <= 2 * tol else "FAIL"
    return (f"{verdict}: engine mAP {report['map_artifact']:.4f} vs checkpoint {report['map_pytorch']:.4f} "
            f"({delta:+.4f}; {report.get('precision', 'fp32')} tolerance {tol}) on {report['eval_images']} images, both "
            "through the deployed preprocessing")


def parity_verdict(report: Dict[str, Any]) -> str:
    """PASS / WARN / FAIL of the engine's outputs against PyTorch's, with the limits used; INT8: not judged here."""
    precision = report.get("precision", "fp32")
    score, box, match = report["score_max_abs_diff"], report["box_max_abs_diff_px"], report["topk_match"]
    measured = f"score diff {score:.2g}, box diff {box:.2g} px, top-K agreement {match:.3f}"
    if precision not in PARITY_LIMITS:
        return (f"WARN: {precision} not judged by output parity ({measured}; INT8 moves low scores by design): "
                "add --data DATA for the mAP delta against the checkpoint")
    for verdict, (s_max, b_max, m_min) in zip(("PASS", "WARN"), PARITY_LIMITS[precision]):
        if score <= s_max and box <= b_max and match >= m_min:
            return f"{verdict}: {measured} ({precision} {verdict} limits: score <= {s_max:g}, box <= {b_max:g} px, agreement >= {m_min:g})"
    s_max, b_max, m_min = PARITY_LIMITS[precision][1]
    return f"FAIL: {measured} (beyond the {precision} WARN limits: score <= {s_max:g}, box <= {b_max:g} px, agreement >= {m_min:g})"


def verdict(report: Dict[str, Any]) -> str:
    """The engine's verdict line: `<engine>: PASS|WARN|FAIL ...`, the worse of output parity and (when a data set
    was scored) the mAP delta, each with its thresholds. INT8 without a data set is a WARN saying what to add."""
    lines = [parity_verdict(report)]
    if "map_delta" in report:
        lines.append(map_verdict(report))
        if report.get("precision") not in PARITY_LIMITS:  # INT8: the mAP decides
            lines = lines[1:]
    worst = max((line.split(":", 1)[0] for line in lines), key=_RANK.__getitem__)
    engine = f"{report.get('backend', '?')} {report.get('precision', '?')}" + (f" msda {report['msda']}" if report.get("msda") else "")
    return f"verdict {engine}: {worst}\n" + "\n".join(f"  {line}" for line in lines)


def format_report(report: Dict[str, Any]) -> str:
    """Two-column plain-text table of a verify report (nested dicts flattened)."""
    rows = []
    for key, value in report.items():
        if isinstance(value, dict):
            rows.extend((f"{key}.{k}", v) for k, v in value.items())
        else:
            rows.append((key, value))
    width = max(len(k) for k, _ in rows)
    fmt = lambda v: f"{v:.6g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(f"{k:<{width}}  {fmt(v)}" for k, v in rows)
