"""The GPU path in one run (called by scripts/gpu_check.sh; needs CUDA PyTorch and nvcc, not TensorRT).

1. build   compiles the CUDA MSDA extension with torch.utils.cpp_extension (timed)
2. tests   runs tests/test_msda_cuda.py (FP32 <= 1e-5 and FP16 <= 1e-3 against `pytorch`,
           float64 gradcheck, per-level points, discrete sampling, autocast)
3. speed   forward and forward+backward of `cuda` vs `pytorch` at benches/msda.py's problems
           (batch 1, 640x640 levels, 8 heads x 32 channels: the encoder, decoders of 300/900
           queries with 4 points per level, RT-DETRv2's decoder with per-level points in both methods)
4. train   a few DINO training steps with AMP on CUDA, MSDA impl `auto`: the loss must stay finite
           and fall (one fixed batch of synthetic scenes, so falling is a real check)

Prints a table and, as the last line, one JSON object with the same figures. Exit status 1 when
a check fails. Targets: `cuda` forward >= 5x and backward >= 5x `pytorch` at the encoder shape.
`--dry-run` prints the plan and the build command without CUDA.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# benches/msda.py's problems, rebuilt here so this check needs no ONNX/OpenVINO (that bench imports them):
# name -> (levels (H, W), queries, per-level points or None = 4 on every level, method)
LEVELS = [(80, 80), (40, 40), (20, 20), (10, 10)]
RTDETR_LEVELS = [(80, 80), (40, 40), (20, 20)]
HEADS, CHANNELS, POINTS = 8, 32, 4
SHAPES = {
    "encoder": (LEVELS, 8500, None, "default"),
    "decoder300": (LEVELS, 300, None, "default"),
    "decoder900": (LEVELS, 900, None, "default"),
    "rtdetrv2_300": (RTDETR_LEVELS, 300, (4, 4, 4), "default"),
    "rtdetrv2_300_discrete": (RTDETR_LEVELS, 300, (4, 4, 4), "discrete"),
}
TARGET_SPEEDUP = 5.0


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20, help="timed calls per shape and pass (median reported)")
    p.add_argument("--train-steps", type=int, default=30, help="DINO AMP training steps")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES), help="MSDA shapes to time")
    p.add_argument("--build-dir", type=Path, default=None,
                   help="where nvcc's objects go (default: torch's extension cache, reused by later runs)")
    p.add_argument("--skip-tests", action="store_true", help="skip tests/test_msda_cuda.py")
    p.add_argument("--device", default="cuda", help="CUDA device, e.g. cuda:1")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the build command; needs no CUDA")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.train_steps < 2:
        p.error("--repeats must be >= 1 and --train-steps >= 2")
    return args


def build_command(build_dir: Optional[Path] = None) -> Dict:
    """The torch.utils.cpp_extension.load arguments the check builds with (edgedet.ops.msda_cuda's own)."""
    from edgedet.ops.msda_cuda import jit_build_kwargs

    return jit_build_kwargs(build_directory=str(build_dir) if build_dir else None, verbose=False)


def build_extension(build_dir: Optional[Path]) -> Dict:
    """Compile (or reuse the cached build of) the extension and make `impl='cuda'` use it."""
    from torch.utils.cpp_extension import load

    from edgedet.ops import msda_cuda

    if build_dir is not None:
        build_dir.mkdir(parents=True, exist_ok=True)
        os.environ[msda_cuda.BUILD_DIR_ENV] = str(build_dir)  # the test subprocess reuses this build
    t0 = time.perf_counter()
    ext = load(**build_command(build_dir))
    seconds = time.perf_counter() - t0
    msda_cuda.load_extension.cache_clear()
    msda_cuda.prebuilt_extension = lambda: ext  # the module just built, whatever setup.py left behind
    return {"seconds": round(seconds, 1), "module": ext.__name__}


def parse_pytest_summary(line: str) -> Dict[str, int]:
    """"3 passed, 1 skipped, 2 errors in 4.1s" -> {"passed": 3, "failed": 0, "skipped": 1, "errors": 2}."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", line):
        counts["errors" if word.startswith("error") else word] = int(number)
    return counts


def run_tests() -> Dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_msda_cuda.py"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1] if lines else proc.stderr[-300:]
    if proc.returncode != 0:
        print(proc.stdout[-4000:], file=sys.stderr)
    counts = parse_pytest_summary(summary)
    # every test must have run: a skip on a GPU machine means the check did not check
    ok = proc.returncode == 0 and counts["passed"] > 0 and counts["skipped"] == 0
    return {"ok": ok, "summary": summary, "seconds": round(time.perf_counter() - t0, 1), **counts}


def msda_inputs(name: str, device: str, seed: int = 0):
    """(levels, points per level or None, method, inputs on `device`) for problem `name`, made the way
    benches/msda.py makes them: each head samples along its own direction, point p of a level at
    (p + 1) pixels of that level plus jitter, around the query's reference point (the encoder's
    token centres, else random boxes' centres)."""
    import torch

    levels, lq, points, method = SHAPES[name]
    counts = points or (POINTS,) * len(levels)
    k = sum(counts)
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(1, sum(h * w for h, w in levels), HEADS, CHANNELS, generator=g)
    angle = torch.arange(HEADS, dtype=torch.float32) * (2 * torch.pi / HEADS)
    direction = torch.stack([angle.cos(), angle.sin()], -1).view(1, HEADS, 1, 2)
    radius = torch.tensor([p + 1.0 for c in counts for p in range(c)]).view(1, 1, k, 1)
    point_wh = torch.tensor([[w, h] for (h, w), c in zip(levels, counts) for _ in range(c)]).view(1, 1, k, 2)
    jitter = torch.randn(lq, HEADS, k, 2, generator=g) * 0.5
    if lq == sum(h * w for h, w in levels):
        centres = [torch.stack(torch.meshgrid((torch.arange(w) + 0.5) / w, (torch.arange(h) + 0.5) / h,
                                              indexing="xy"), -1).reshape(-1, 2) for h, w in levels]
        ref = torch.cat(centres)
    else:
        ref = torch.rand(lq, 2, generator=g) * 0.9 + 0.05
    loc = (ref.view(lq, 1, 1, 2) + (direction * radius + jitter) / point_wh).unsqueeze(0)
    weights = torch.randn(1, lq, HEADS, k, generator=g).softmax(-1)
    if points is None:
        loc, weights = loc.view(1, lq, HEADS, len(levels), POINTS, 2), weights.view(1, lq, HEADS, len(levels), POINTS)
    inputs = {"value": value, "sampling_locations": loc.contiguous(), "attention_weights": weights}
    return levels, points, method, {key: t.to(device) for key, t in inputs.items()}


def time_ms(fn, repeats: int, sync) -> float:
    """Median milliseconds of `fn()` (after warm-up calls), measured with `sync` around each call."""
    for _ in range(3):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def time_msda(name: str, repeats: int, device: str) -> Dict:
    import torch

    from edgedet.ops import multi_scale_deformable_attention as msda

    levels, points, method, inputs = msda_inputs(name, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    row: Dict = {"shape": name, "queries": SHAPES[name][1], "points": list(points) if points else POINTS,
                 "method": method}
    kw = dict(num_points_per_level=points, method=method)
    for impl in ("pytorch", "cuda"):
        v = inputs["value"].clone().requires_grad_()
        l_ = inputs["sampling_locations"].clone().requires_grad_()
        a = inputs["attention_weights"].clone().requires_grad_()
        with torch.no_grad():
            row[f"{impl}_fwd_ms"] = time_ms(lambda: msda(v, levels, l_, a, impl=impl, **kw), repeats, sync)

        def fwd_bwd():
            out = msda(v, levels, l_, a, impl=impl, **kw)
            # discrete sampling gives the locations no gradient
            wrt = (v, a) if method == "discrete" else (v, l_, a)
            torch.autograd.grad(out.sum(), wrt)

        row[f"{impl}_fwd_bwd_ms"] = time_ms(fwd_bwd, repeats, sync)
    row["fwd_speedup"] = row["pytorch_fwd_ms"] / row["cuda_fwd_ms"]
    row["fwd_bwd_speedup"] = row["pytorch_fwd_bwd_ms"] / row["cuda_fwd_bwd_ms"]
    bwd = {impl: row[f"{impl}_fwd_bwd_ms"] - row[f"{impl}_fwd_ms"] for impl in ("pytorch", "cuda")}
    row["bwd_speedup"] = bwd["pytorch"] / max(bwd["cuda"], 1e-6)
    return row


def synthetic_batch(batch: int = 2, size: int = 128, num_classes: int = 3, seed: int = 0):
    """A fixed batch of rendered shape scenes: images [B, 3, H, W] in [0, 1], targets with
    normalised cxcywh boxes (edgedet's training format)."""
    import numpy as np
    import torch

    from edgedet.data.synthetic import render_scene

    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(batch):
        img, boxes, labels, _ = render_scene(rng, size, size, num_classes=num_classes, max_objects=4)
        images.append(torch.from_numpy(img).permute(2, 0, 1).float() / 255.0)
        b = torch.from_numpy(boxes).float() / size
        cxcywh = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
        targets.append({"labels": torch.from_numpy(labels).long(), "boxes": cxcywh,
                        "size": torch.tensor([size, size])})
    return torch.stack(images), targets


def train_steps(steps: int, device: str, amp: bool = True, seed: int = 0) -> Dict:
    """`steps` DINO steps on one fixed batch (AMP on CUDA, as edgedet's trainer does it)."""
    import torch

    import edgedet

    torch.manual_seed(seed)
    model = edgedet.create_model("dino", num_classes=3, backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=1,
                                 dec_layers=2, dim_feedforward=128, num_queries=30, num_feature_levels=4,
                                 msda_impl="auto").to(device).train()
    criterion = model.build_criterion().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4)
    on_cuda = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda") if amp and on_cuda else None
    images, targets = synthetic_batch()
    images = images.to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    losses: List[float] = []
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cuda" if on_cuda else "cpu", dtype=torch.float16 if on_cuda else torch.bfloat16,
                            enabled=amp):
            outputs = model(images, None, targets)
        total = criterion.total_loss(criterion(outputs, targets))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            optimizer.step()
        losses.append(float(total.detach()))
    k = max(1, steps // 5)
    first, last = statistics.mean(losses[:k]), statistics.mean(losses[-k:])
    finite = all(x == x and abs(x) != float("inf") for x in losses)
    return {"steps": steps, "amp": amp, "loss_first": round(first, 4), "loss_last": round(last, 4),
            "finite": finite, "falls": finite and last < first, "seconds": round(time.perf_counter() - t0, 1)}


def print_table(report: Dict) -> None:
    print(f"\n{'shape':<22}{'queries':>8}{'pytorch fwd':>13}{'cuda fwd':>10}{'x':>7}"
          f"{'pytorch f+b':>13}{'cuda f+b':>10}{'x bwd':>7}")
    for r in report.get("speed", []):
        print(f"{r['shape']:<22}{r['queries']:>8}{r['pytorch_fwd_ms']:>11.2f}ms{r['cuda_fwd_ms']:>8.2f}ms"
              f"{r['fwd_speedup']:>7.1f}{r['pytorch_fwd_bwd_ms']:>11.2f}ms{r['cuda_fwd_bwd_ms']:>8.2f}ms"
              f"{r['bwd_speedup']:>7.1f}")
    for key in ("build", "tests", "train"):
        if key in report:
            print(f"{key:<7}{json.dumps(report[key])}")
    print(f"checks: {json.dumps(report['checks'])}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        print("plan: build -> tests/test_msda_cuda.py -> MSDA timing", ", ".join(args.shapes),
              f"x{args.repeats} -> DINO AMP x{args.train_steps} steps")
        print(json.dumps({"dry_run": True, "build": build_command(args.build_dir)}))
        return 0
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"error": "CUDA is missing: torch.cuda.is_available() is False (CPU-only PyTorch or no "
                                   "GPU); run this on a GPU machine with CUDA PyTorch and nvcc"}))
        return 2
    torch.cuda.set_device(torch.device(args.device))
    report: Dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}
    report["build"] = build_extension(args.build_dir)
    if not args.skip_tests:
        report["tests"] = run_tests()
    report["speed"] = [time_msda(name, args.repeats, args.device) for name in args.shapes]
    report["train"] = train_steps(args.train_steps, args.device)
    encoder = next((r for r in report["speed"] if r["shape"] == "encoder"), None)
    checks = {
        "tests": report.get("tests", {}).get("ok", True),
        "train_finite_and_falls": report["train"]["falls"],
    }
    if encoder is not None:
        checks["encoder_fwd_5x"] = encoder["fwd_speedup"] >= TARGET_SPEEDUP
        checks["encoder_bwd_5x"] = encoder["bwd_speedup"] >= TARGET_SPEEDUP
    report["checks"] = checks
    report["ok"] = all(checks.values())
    print_table(report)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
