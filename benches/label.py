"""`edgedet label` throughput (one process vs a Ray Data pool) and the auto-label recipe end to end.

    python benches/label.py                      # both parts
    python benches/label.py --skip-recipe        # throughput only (a few minutes)
    python benches/label.py --recipe-epochs 12 --recipe-frames 240

Throughput: the embedded prompted model (ONNX) labels a rendered camera-world clip, one box prompt
per class from frame 0: single-process, then `--ray` with 2 actors on a local cluster (its start-up
timed apart; the labelling itself timed from the first submitted range to the last written image).
The recipe: `examples/autolabel_to_device.py` (label -> train -> export -> run) with its times and the
mAP of the trained closed-set model vs the prompted model on the held-out rendered video.
Prints lscpu's model, flags and the load, a table, and last one JSON line.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benches"))

from _machine import load_average, lscpu  # noqa: E402


def machine() -> dict:
    """lscpu's model name, the SIMD flags that matter for the engines, cores and the load average."""
    facts = lscpu()
    return {"cpu": facts["model"], "flags": facts["isa"], "cpus": facts["cpus"], "load": load_average()}


def throughput(work: Path, frames: int, actors: int) -> dict:
    from converters.demo import render_world_clip
    from converters.demo_prompted import PROMPTED_CHECKPOINT, default_prompt_boxes
    from converters.label_export import export_for_labelling
    from runtime.label import LabelConfig, label

    encoder, detector = export_for_labelling(PROMPTED_CHECKPOINT, work / "cache")
    clip = work / "clip.mp4"
    gt = render_world_clip(clip, frames, seed=11)
    boxes, names = default_prompt_boxes(gt[0])
    cfg = dict(model=str(detector.parent), sources=[str(clip)], quiet=True, names=list(names),
               boxes=[",".join(f"{v:.0f}" for v in b) for b in boxes])
    for old in ("single", "ray"):  # this bench's own outputs of a kept earlier run: label afresh, not resume
        shutil.rmtree(work / old, ignore_errors=True)
    single = label(LabelConfig(output=str(work / "single"), **cfg))
    result = {"frames": frames, "single_images_per_s": single["images_per_s"], "single_s": single["seconds"]}
    try:
        from runtime.label.ray_runner import ray_cluster

        t0 = time.perf_counter()
        with ray_cluster("local"):
            start = time.perf_counter() - t0
            pooled = label(LabelConfig(output=str(work / "ray"), ray="local", actors=actors, **cfg))
        result.update({"ray_actors": actors, "ray_start_s": round(start, 2), "ray_images_per_s": pooled["images_per_s"],
                       "ray_s": pooled["seconds"], "ray_same_boxes": pooled["boxes_per_class"] == single["boxes_per_class"]})
    except ImportError as e:
        result["ray"] = f"not run: {e}"
    return result


def recipe(work: Path, args: argparse.Namespace) -> dict:
    spec = importlib.util.spec_from_file_location("autolabel", REPO / "examples" / "autolabel_to_device.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    t0 = time.perf_counter()
    out = module.main(["--out", str(work / "recipe"), "--frames", str(args.recipe_frames), "--every", str(args.recipe_every),
                       "--epochs", str(args.recipe_epochs), "--imgsz", str(args.recipe_imgsz),
                       "--test-frames", str(args.test_frames), "--batch-size", str(args.batch_size)])
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=60, help="frames of the throughput clip")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--skip-recipe", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--recipe-frames", type=int, default=120)
    p.add_argument("--recipe-every", type=int, default=2)
    p.add_argument("--recipe-epochs", type=int, default=6)
    p.add_argument("--recipe-imgsz", type=int, default=256)
    p.add_argument("--test-frames", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temporary one)")
    args = p.parse_args()

    host = machine()
    print(f"cpu: {host['cpu']} | {' '.join(host['flags'])} | {host['cpus']} CPUs | load {host['load']}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="label_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = {"bench": "label", "machine": host}
        if not args.skip_throughput:
            speed = result["throughput"] = throughput(work / "speed", args.frames, args.actors)
            print(f"\n{'runner':<24} {'images/s':>9} {'seconds':>8}")
            print(f"{'single process':<24} {speed['single_images_per_s']:>9.2f} {speed['single_s']:>8.1f}")
            if "ray_images_per_s" in speed:
                print(f"{'ray, %d actors' % args.actors:<24} {speed['ray_images_per_s']:>9.2f} {speed['ray_s']:>8.1f}"
                      f"   (+ {speed['ray_start_s']:.1f} s cluster start; same boxes: {speed['ray_same_boxes']})")
        if not args.skip_recipe:
            result["recipe"] = recipe(work, args)
        result["machine"]["load_end"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
