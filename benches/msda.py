"""Benchmark of multi-scale deformable attention forms on CPU (batch 1).

Forms: PyTorch reference (grid_sample), PyTorch gather, ONNX Runtime GridSample / gather graphs,
OpenVINO GridSample / gather graphs, and OpenVINO with the fused C++ op
(`libedgedet_ov_msda.so`, built on demand). Shapes: the Deformable-DETR 640 encoder
(levels 80², 40², 20², 10²; 8 heads x 32 channels; 4 points; Lq = 8500) and decoder queries
(Lq = 300 and 900) over the same value maps, and RT-DETRv2's decoder at 640 (levels 80², 40², 20²;
8 heads x 32 channels; per-level points [4, 4, 4]; Lq = 300) with both sampling methods, where the
`gridsample` graph is the official RT-DETRv2 export's decomposition; sampling locations laid out
like a trained model's (see `make_inputs`). Every form is checked against the PyTorch reference.
Prints a table and, as the last line, one JSON object with the same figures.

    python benches/msda.py [--runs 20] [--warmup 3] [--shapes encoder,decoder300,rtdetrv2_300]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import torch
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converters.openvino import extension  # noqa: E402
from edgedet.ops.msda import level_start_index_from_shapes, msda_pytorch  # noqa: E402
from edgedet.ops.msda_gather import msda_gather  # noqa: E402

LEVELS = [(80, 80), (40, 40), (20, 20), (10, 10)]
RTDETR_LEVELS = [(80, 80), (40, 40), (20, 20)]
HEADS, CHANNELS, POINTS = 8, 32, 4
INPUT_NAMES = ["value", "sampling_locations", "attention_weights"]
OV_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
DECOMPOSED_OV = ("openvino_gridsample", "openvino_gather")
PAUSE_S = 0.05


@dataclass(frozen=True)
class Case:
    """One benchmarked problem: value levels, queries, per-level points (None: uniform layout), method."""

    levels: List[Tuple[int, int]]
    num_queries: int
    points_per_level: Optional[Tuple[int, ...]] = None
    method: str = "default"

    def counts(self) -> Tuple[int, ...]:
        return self.points_per_level or (POINTS,) * len(self.levels)


SHAPES = {
    "encoder": Case(LEVELS, 8500),
    "decoder300": Case(LEVELS, 300),
    "decoder900": Case(LEVELS, 900),
    "rtdetrv2_300": Case(RTDETR_LEVELS, 300, (4, 4, 4)),
    "rtdetrv2_300_discrete": Case(RTDETR_LEVELS, 300, (4, 4, 4), "discrete"),
}
DEFAULT_SHAPES = ("encoder", "decoder300", "decoder900", "rtdetrv2_300")


def reference_points(case: Case, g: torch.Generator) -> torch.Tensor:
    """[Lq, 2] (x, y): the encoder's token centres (all levels in order), else random boxes' centres."""
    if case.num_queries == sum(h * w for h, w in case.levels):
        centres = []
        for h, w in case.levels:
            ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
            centres.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
        return torch.cat(centres)
    return torch.rand(case.num_queries, 2, generator=g) * 0.9 + 0.05


def make_inputs(case: Case, seed: int = 0) -> dict:
    """Inputs shaped like a trained Deformable DETR's: each head samples along its own direction,
    point p of a level at (p + 1) pixels of that level (the official offset initialisation) plus
    jitter, around the query's reference point; points near borders fall into the zero padding.
    Uniform layout [1, Lq, M, L, P, 2] or, with per-level points, [1, Lq, M, K, 2]."""
    g = torch.Generator().manual_seed(seed)
    lq, counts = case.num_queries, case.counts()
    k = sum(counts)
    value = torch.randn(1, sum(h * w for h, w in case.levels), HEADS, CHANNELS, generator=g)
    angle = torch.arange(HEADS, dtype=torch.float32) * (2 * torch.pi / HEADS)
    direction = torch.stack([angle.cos(), angle.sin()], -1).view(1, HEADS, 1, 2)
    radius = torch.tensor([p + 1.0 for c in counts for p in range(c)]).view(1, 1, k, 1)
    point_wh = torch.tensor([[w, h] for (h, w), c in zip(case.levels, counts) for _ in range(c)]).view(1, 1, k, 2)
    jitter = torch.randn(lq, HEADS, k, 2, generator=g) * 0.5
    ref = reference_points(case, g).view(lq, 1, 1, 2)
    loc = (ref + (direction * radius + jitter) / point_wh).unsqueeze(0)  # [1, Lq, M, K, 2]
    weights = torch.randn(1, lq, HEADS, k, generator=g).softmax(-1)
    if case.points_per_level is None:
        loc = loc.view(1, lq, HEADS, len(case.levels), POINTS, 2)
        weights = weights.view(1, lq, HEADS, len(case.levels), POINTS)
    return {"value": value, "sampling_locations": loc.contiguous(), "attention_weights": weights}


class _CoreModule(torch.nn.Module):
    """Just the op with the level shapes baked in as constants, for torch.onnx.export."""

    def __init__(self, fn, case: Case):
        super().__init__()
        self.fn, self.case = fn, case

    def forward(self, value, sampling_locations, attention_weights):
        return self.fn(value, self.case.levels, None, sampling_locations, attention_weights,
                       num_points_per_level=self.case.points_per_level, method=self.case.method)


def export_decomposed(fn, case: Case, inputs: dict, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes that level constants are baked in: intended
        torch.onnx.export(
            _CoreModule(fn, case), tuple(inputs[k] for k in INPUT_NAMES), str(path), dynamo=False,
            opset_version=17, input_names=INPUT_NAMES, output_names=["output"],
        )
    return path


def export_fused(case: Case, inputs: dict, path: Path) -> Path:
    """Single edgedet::MultiScaleDeformableAttention node; level tables are initialisers."""
    shapes = np.asarray(case.levels, dtype=np.int64)
    starts = np.asarray(level_start_index_from_shapes(case.levels), dtype=np.int64)
    graph_inputs = [
        helper.make_tensor_value_info(k, TensorProto.FLOAT, list(inputs[k].shape)) for k in INPUT_NAMES
    ]
    n, lq = inputs["sampling_locations"].shape[:2]
    attributes = {}
    if case.points_per_level is not None:
        attributes["num_points_per_level"] = list(case.points_per_level)
    if case.method != "default":
        attributes["method"] = case.method
    node = helper.make_node(
        "MultiScaleDeformableAttention",
        ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"],
        ["output"], domain="edgedet", **attributes,
    )
    graph = helper.make_graph(
        [node], "msda_fused", graph_inputs,
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [n, lq, HEADS * CHANNELS])],
        initializer=[
            helper.make_tensor("spatial_shapes", TensorProto.INT64, shapes.shape, shapes.ravel()),
            helper.make_tensor("level_start_index", TensorProto.INT64, starts.shape, starts),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("edgedet", 1)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def time_forms(runners: dict, runs: int, warmup: int) -> dict:
    """form -> median wall time (ms) of `runs` calls after `warmup` calls.

    Forms take turns within each round, so load from other processes on a shared machine
    affects them alike instead of penalising whichever form ran during a busy spell. An untimed
    pause precedes each call: thread pools of the previous form (OpenMP, ONNX Runtime, TBB) keep
    spinning for a while after they finish and would otherwise steal the cores from the next one.
    After the pause, one untimed call wakes the form's own threads (as the layer before it would
    inside a model): waking a sleeping pool costs about 1.7 ms on this CPU, which would otherwise
    be charged to the op and swamp the sub-millisecond decoder shapes.
    """
    for _ in range(warmup):
        for run in runners.values():
            run()
    times = {form: [] for form in runners}
    for _ in range(runs):
        for form, run in runners.items():
            time.sleep(PAUSE_S)
            run()
            start = time.perf_counter()
            run()
            times[form].append((time.perf_counter() - start) * 1e3)
    return {form: round(statistics.median(t), 3) for form, t in times.items()}


def build_runners(case: Case, inputs: dict, workdir: Path, core: ov.Core, fused: bool) -> dict:
    """name -> zero-argument callable returning the output as a numpy array."""
    feeds = {k: v.numpy() for k, v in inputs.items()}
    args = (inputs["value"], case.levels, None, inputs["sampling_locations"], inputs["attention_weights"])
    options = {"num_points_per_level": case.points_per_level, "method": case.method}
    grid_path = export_decomposed(msda_pytorch, case, inputs, workdir / "msda_gridsample.onnx")
    gather_path = export_decomposed(msda_gather, case, inputs, workdir / "msda_gather.onnx")

    def torch_runner(fn):
        def run():
            with torch.inference_mode():
                return fn(*args, **options).numpy()
        return run

    def ort_runner(path):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda: sess.run(None, feeds)[0]

    def ov_runner(path):
        compiled = core.compile_model(core.read_model(str(path)), "CPU", OV_CONFIG)
        request = compiled.create_infer_request()
        return lambda: request.infer(feeds, share_inputs=True)[0].copy()

    runners = {
        "pytorch_reference": torch_runner(msda_pytorch),
        "pytorch_gather": torch_runner(msda_gather),
        "onnxruntime_gridsample": ort_runner(grid_path),
        "onnxruntime_gather": ort_runner(gather_path),
        "openvino_gridsample": ov_runner(grid_path),
        "openvino_gather": ov_runner(gather_path),
    }
    if fused:
        runners["openvino_fused"] = ov_runner(export_fused(case, inputs, workdir / "msda_fused.onnx"))
    return runners


def bench_shape(case: Case, core: ov.Core, fused: bool, runs: int, warmup: int) -> dict:
    inputs = make_inputs(case)
    with tempfile.TemporaryDirectory() as tmp:
        runners = build_runners(case, inputs, Path(tmp), core, fused)
        reference = runners["pytorch_reference"]()
        result = {
            "num_queries": case.num_queries, "levels": case.levels, "points": list(case.counts()),
            "per_level_layout": case.points_per_level is not None, "method": case.method, "ms": {}, "max_abs_err": {},
        }
        for form, run in runners.items():
            result["max_abs_err"][form] = float(np.abs(run() - reference).max())
        result["ms"] = time_forms(runners, runs, warmup)
    ms = result["ms"]
    if "openvino_fused" in ms:
        fastest = min(DECOMPOSED_OV, key=lambda k: ms[k])
        result["fastest_decomposed_openvino"] = fastest
        result["fused_speedup_vs_decomposed_openvino"] = round(ms[fastest] / ms["openvino_fused"], 2)
        result["fused_speedup_vs_pytorch"] = round(ms["pytorch_reference"] / ms["openvino_fused"], 2)
    return result


def print_table(results: dict) -> None:
    forms = list(next(iter(results.values()))["ms"])
    header = f"{'form':<24}" + "".join(f"{name:>22}" for name in results)
    print(header)
    print("-" * len(header))
    for form in forms:
        cells = "".join(
            f"{r['ms'][form]:>10.2f} ms (e={r['max_abs_err'][form]:.0e})" for r in results.values()
        )
        print(f"{form:<24}{cells}")
    for key, label in (
        ("fused_speedup_vs_decomposed_openvino", "fused vs best OV decomp"),
        ("fused_speedup_vs_pytorch", "fused vs PyTorch ref"),
    ):
        if all(key in r for r in results.values()):
            print(f"{label:<24}" + "".join(f"{r[key]:>21.2f}x" for r in results.values()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per form (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    args = parser.parse_args(argv)
    names = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in names if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; valid: {', '.join(SHAPES)}")

    core = ov.Core()
    fused = True
    try:
        core.add_extension(str(extension.library_path(build_if_missing=True)))
    except (extension.ExtensionBuildError, FileNotFoundError) as exc:
        print(f"fused OpenVINO op unavailable, benchmarking decomposed forms only: {exc}", file=sys.stderr)
        fused = False
    results = {name: bench_shape(SHAPES[name], core, fused, args.runs, args.warmup) for name in names}
    meta = {
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "onnxruntime": ort.__version__,
        "openvino": ov.__version__, "runs": args.runs, "warmup": args.warmup, "batch": 1,
        "heads": HEADS, "channels": CHANNELS, "openvino_config": OV_CONFIG,
    }
    print_table(results)
    print(json.dumps({"msda_bench": results, "meta": meta}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
