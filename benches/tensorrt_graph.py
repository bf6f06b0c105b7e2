"""TensorRT backend with and without CUDA graph replay of the enqueue, side by side (needs a GPU).

    python benches/tensorrt_graph.py --engine model.engine --batch 1 --repeats 200

Loads the engine twice (plain enqueue / `cuda_graph=True`), feeds both the same random input of
the engine's input shape, checks their outputs agree, and times `infer()` round-robin (one call
of each per round, after warm-up calls), so both see the same clock and thermal state. The graph
mostly saves the CPU launch cost of the engine's kernels: it matters for small inputs and slow
CPUs (Jetson), little for big inputs. Prints a table, then one JSON object with the same figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", type=Path, required=True, help="a .engine built by `edgedet export --format tensorrt`")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--batch", type=int, default=1, help="batch size for engines with a dynamic batch")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.batch < 1:
        p.error("--repeats and --batch must be >= 1")
    if not args.engine.is_file():
        p.error(f"engine not found: {args.engine}")
    return args


def random_feeds(backend, batch: int, seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in backend.input_specs:
        shape = tuple(batch if (i == 0 and d is None) else d for i, d in enumerate(spec.shape))
        if any(d is None for d in shape):
            raise SystemExit(f"input {spec.name} has dynamic dims besides the batch {spec.shape}; not supported here")
        feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def run(args: argparse.Namespace) -> Dict:
    from runtime.backends.base import load_backend
    from runtime.manifest import read_sidecar

    manifest = read_sidecar(args.engine)
    engines = {name: load_backend(args.engine, "tensorrt", manifest, args.device, cuda_graph=graph)
               for name, graph in (("enqueue", False), ("cuda_graph", True))}
    try:
        feeds = random_feeds(engines["enqueue"], args.batch)
        outputs = {name: be.infer(feeds) for name, be in engines.items()}
        max_diff = max(float(np.abs(outputs["enqueue"][k].astype(np.float64) - outputs["cuda_graph"][k]).max())
                       for k in outputs["enqueue"])
        for _ in range(args.warmup):
            for be in engines.values():
                be.infer(feeds)
        samples: Dict[str, List[float]] = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, be in engines.items():
                t0 = time.perf_counter()
                be.infer(feeds)
                samples[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        for be in engines.values():
            be.close()
    rows = {name: {"p50_ms": statistics.median(s), "p95_ms": float(np.percentile(s, 95))} for name, s in samples.items()}
    return {"engine": str(args.engine), "batch": args.batch, "repeats": args.repeats, "rows": rows,
            "speedup_p50": rows["enqueue"]["p50_ms"] / rows["cuda_graph"]["p50_ms"], "max_abs_diff": max_diff}


def main(argv: Optional[Sequence[str]] = None) -> int:
    result = run(parse_args(argv))
    print(f"{'mode':<12}{'p50 ms':>10}{'p95 ms':>10}")
    for name, r in result["rows"].items():
        print(f"{name:<12}{r['p50_ms']:>10.3f}{r['p95_ms']:>10.3f}")
    print(f"cuda_graph speed-up (p50): {result['speedup_p50']:.2f}x; outputs differ by at most {result['max_abs_diff']:.2e}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
