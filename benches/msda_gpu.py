"""CUDA MSDA kernel vs the grid_sample reference and torch.compile, on a GPU.

Shapes: the Deformable-DETR encoder at 640x640 (levels 80², 40², 20², 10², 8 heads, 32
channels, 4 points, Lq = 8500) and the decoder (Lq = 300 and 900), batch 1, fp32 and fp16.
Prints a table, then one JSON object with the same figures as the last line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from edgedet.ops import multi_scale_deformable_attention as msda

LEVELS = [(80, 80), (40, 40), (20, 20), (10, 10)]


def make_inputs(lq: int, dtype: torch.dtype):
    s = sum(h * w for h, w in LEVELS)
    g = torch.Generator(device="cuda").manual_seed(0)
    value = torch.randn(1, s, 8, 32, device="cuda", dtype=dtype, generator=g)
    locs = torch.rand(1, lq, 8, 4, 4, 2, device="cuda", dtype=dtype, generator=g)
    attn = torch.rand(1, lq, 8, 4, 4, device="cuda", dtype=dtype, generator=g)
    attn = attn / attn.sum((-1, -2), keepdim=True)
    return value, torch.tensor(LEVELS, device="cuda"), locs, attn


def time_ms(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benches/msda_gpu.py needs a CUDA GPU")
    compiled = torch.compile(lambda v, s, l, a: msda(v, s, l, a, impl="pytorch"))
    rows = []
    for name, lq in (("encoder", 8500), ("decoder-300", 300), ("decoder-900", 900)):
        for dtype in (torch.float32, torch.float16):
            v, s, l, a = make_inputs(lq, dtype)
            ref = time_ms(lambda: msda(v, s, l, a, impl="pytorch"), args.repeats)
            cuda = time_ms(lambda: msda(v, s, l, a, impl="cuda"), args.repeats)
            comp = time_ms(lambda: compiled(v, s, l, a), args.repeats)
            rows.append({"shape": name, "dtype": str(dtype).split(".")[-1], "pytorch_ms": ref, "compile_ms": comp,
                         "cuda_ms": cuda, "cuda_vs_pytorch": ref / cuda, "cuda_vs_compile": comp / cuda})
    print(f"{'shape':<12}{'dtype':<9}{'pytorch ms':>11}{'compile ms':>11}{'cuda ms':>9}{'x pytorch':>10}{'x compile':>10}")
    for r in rows:
        print(f"{r['shape']:<12}{r['dtype']:<9}{r['pytorch_ms']:>11.3f}{r['compile_ms']:>11.3f}{r['cuda_ms']:>9.3f}"
              f"{r['cuda_vs_pytorch']:>10.1f}{r['cuda_vs_compile']:>10.1f}")
    print(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}))


if __name__ == "__main__":
    main()
