"""Per-node OpenVINO profile (PERF_COUNT) of a compiled model, grouped by network region and op type.

Regions come from the node names the ONNX export keeps (torch module paths); the grouping below is for
RF-DETR (ViT attention / MLP / windowing reshapes, projector, two-stage selection, decoder, postprocess)
and falls back to the first path component for other models.
"""
from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

_VIT_PART = re.compile(r"encoder/layer\.\d+/(attention/attention/(?:query|key|value)|attention/output|attention|mlp|norm1|norm2|layer_scale)")


def region(node: str, op_type: str = "") -> str:
    """The part of RF-DETR a node belongs to, from its name (and type: the merged q/k/v product is a
    FullyConnected named after the attention module itself)."""
    if "encoder/embeddings" in node:
        return "vit: patch embedding + position table"
    m = _VIT_PART.search(node)
    if m:
        part = m.group(1)
        if part.startswith("attention/attention/") or part == "attention/output":
            return "vit: q/k/v/out projections"
        if part == "attention" and op_type == "FullyConnected":
            return "vit: q/k/v/out projections"
        if part == "attention":
            return "vit: attention core (QK^T, softmax, AV)"
        return {"mlp": "vit: MLP"}.get(part, "vit: norms + layer scale")
    if "backbone.0/encoder" in node:
        return "vit: residual adds, windowing reshapes, output norm"
    if "projector" not in node:  # other families (D-FINE, RT-DETR): their own parts by module path
        for part, name in (("/backbone", "backbone (CNN)"), ("/encoder", "hybrid encoder"), ("/decoder", "decoder")):
            if part in node:
                return name
    if "projector" in node:
        return "projector (C2f)"
    if "/transformer/decoder" in node or "/transformer/layers" in node or "cross_attn" in node:
        return "decoder"
    if "/transformer/" in node:
        return "two-stage selection"
    if "bbox_embed" in node or "class_embed" in node:
        return "heads"
    # Nodes OpenVINO made up (Transpose_123, MVN_45) or the graph's own tail (postprocess, top-k).
    return "other (unnamed: layout, norms, postprocess)"


def profile(xml: Path, feeds: Dict[str, np.ndarray], threads: int, extension: str = "", repeats: int = 3) -> Dict[Tuple[str, str], float]:
    """Mean ms per (region, op type) over `repeats` runs after one warm-up, from OpenVINO's PERF_COUNT."""
    import openvino as ov

    core = ov.Core()
    if extension:
        core.add_extension(extension)
    compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                                    "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer(feeds)
    totals: Dict[Tuple[str, str], float] = collections.Counter()
    for _ in range(repeats):
        request.infer(feeds)
        for p in request.profiling_info:
            ms = p.real_time.total_seconds() * 1e3
            if ms > 0:
                totals[(region(p.node_name, p.node_type), p.node_type)] += ms / repeats
    return dict(totals)


def by_region(table: Dict[Tuple[str, str], float]) -> Dict[str, float]:
    out: Dict[str, float] = collections.Counter()
    for (reg, _), ms in table.items():
        out[reg] += ms
    return dict(out)


def format_profiles(profiles: Dict[str, Dict[Tuple[str, str], float]], top_types: int = 3) -> List[str]:
    """Rows: region, then per engine ms and share of its total, and the region's heaviest op types (first engine)."""
    names = list(profiles)
    regions = {n: by_region(profiles[n]) for n in names}
    totals = {n: sum(regions[n].values()) for n in names}
    order = sorted({r for n in names for r in regions[n]}, key=lambda r: -max(regions[n].get(r, 0.0) for n in names))
    lines = [f"{'region':<52}" + "".join(f"{n + ' ms':>16}{'%':>7}" for n in names) + "  heaviest op types (" + names[0] + ")"]
    for reg in order:
        types = sorted(((t, ms) for (r, t), ms in profiles[names[0]].items() if r == reg), key=lambda x: -x[1])[:top_types]
        lines.append(f"{reg:<52}" + "".join(f"{regions[n].get(reg, 0.0):>16.1f}{100 * regions[n].get(reg, 0.0) / totals[n]:>7.1f}"
                                            for n in names) + "  " + ", ".join(f"{t} {ms:.1f}" for t, ms in types))
    lines.append(f"{'total (sum of node times)':<52}" + "".join(f"{totals[n]:>16.1f}{100.0:>7.1f}" for n in names))
    return lines


def profile_json(profiles: Dict[str, Dict[Tuple[str, str], float]]) -> Dict[str, Dict[str, float]]:
    return {n: {r: round(ms, 2) for r, ms in sorted(by_region(t).items(), key=lambda x: -x[1])} for n, t in profiles.items()}


__all__: Sequence[str] = ("region", "profile", "by_region", "format_profiles", "profile_json")
