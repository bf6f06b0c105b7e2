"""From a few boxes to a deployed detector, on the rendered camera world (offline, CPU).

    python examples/autolabel_to_device.py --out runs/autolabel              # defaults: minutes on a laptop
    python examples/autolabel_to_device.py --prompts runs/prompts/shapes.npz # prompts saved on the live page
    python examples/autolabel_to_device.py --ray                             # label on a local Ray cluster

The same steps with the commands (what this script runs, printed as it goes):

    edgedet label --model edgedet/assets/prompted_detector.pth --boxes X1,Y1,X2,Y2 ... --names circle ... \\
                  --source train.mp4 --output DATASET               # one box per class on frame 0
    edgedet train --data DATASET/data.yaml --model dfine --output TRAIN
    edgedet export --model TRAIN/best.pth --format onnx --output MODEL.onnx
    edgedet run --model MODEL.onnx --source test.mp4 --save annotated.mp4

1. render a training clip and a held-out test clip (the demo's video) of the camera world, with truth;
2. prompts: one box per class on the training clip's first frame (the largest whole object of each
   class, as a user would box it), or a prompts file saved on the live page (`--prompts`);
3. `edgedet label` with the embedded prompted model -> a YOLO data set (+ COCO, scores, contact sheet);
4. `edgedet train` a closed-set detector on it (D-FINE by default; `--weights` to start from weights);
5. `edgedet export` it to ONNX and run it on the test clip through the runtime pipeline;
6. score both the closed-set model and the prompted model on the test clip (COCO mAP vs the renderer's truth).
Prints a table and, last, one JSON line (the figures `benches/label.py` reports).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def _step(name: str, times: dict, t0: float) -> None:
    times[name] = round(time.perf_counter() - t0, 1)
    print(f"  {name}: {times[name]:.1f} s", flush=True)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/autolabel"), help="working folder (a new DATASET inside)")
    p.add_argument("--frames", type=int, default=240, help="frames of the training clip")
    p.add_argument("--every", type=int, default=2, help="label every Nth training frame")
    p.add_argument("--test-frames", type=int, default=90, help="frames of the test clip (the demo's video)")
    p.add_argument("--model", default="dfine", help="closed-set family to train (any `edgedet train --model`)")
    p.add_argument("--weights", default=None, help="start from these weights (`edgedet train --weights`)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--imgsz", type=int, default=320, help="training image size (shorter side)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prompts", default=None, help="a prompts .npz saved on the live page (default: boxes on frame 0)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS", help="label on Ray (see edgedet label --ray)")
    p.add_argument("--actors", type=int, default=2)
    args = p.parse_args(argv)

    from converters.demo import DEMO_DEDUP_IOU, match_accuracy, render_demo_video, render_world_clip, run_video
    from converters.demo_prompted import PROMPTED_CHECKPOINT, default_prompt_boxes
    from converters.label_export import export_for_labelling
    from edgedet.cli import main as edgedet
    from runtime import Detector
    from runtime.label import LabelConfig, format_summary, label

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    times: dict = {}
    t_all = time.perf_counter()

    print("1/6 rendering the training clip and the test clip", flush=True)
    t0 = time.perf_counter()
    train_clip = out / "train.mp4"
    train_gt = render_world_clip(train_clip, args.frames, seed=3)
    test_clip, test_gt = render_demo_video(out / "test", args.test_frames)
    class_names = json.loads(test_clip.with_suffix(".json").read_text())["class_names"]
    _step("render", times, t0)

    # `edgedet label --model prompted_detector.pth` exports the checkpoint itself (the converters' plug-in);
    # here the export is explicit, so the prompted model can be scored on the test clip afterwards.
    t0 = time.perf_counter()
    encoder, prompted_model = export_for_labelling(PROMPTED_CHECKPOINT, out / "prompted")
    _step("export prompted", times, t0)
    boxes, names = default_prompt_boxes(train_gt[0])
    prompt_args = ["--prompts", args.prompts] if args.prompts else \
        ["--boxes", *[",".join(f"{v:.0f}" for v in b) for b in boxes], "--names", *names]
    dataset = out / "dataset"
    print(f"2-3/6 edgedet label --model {prompted_model.parent} {' '.join(prompt_args)} --source {train_clip} "
          f"--every {args.every} --output {dataset}" + (f" --ray {args.ray} --actors {args.actors}" if args.ray else ""), flush=True)
    t0 = time.perf_counter()
    cfg = LabelConfig(model=str(prompted_model.parent), sources=[str(train_clip)], output=str(dataset), every=args.every,
                      prompts=args.prompts, boxes=[] if args.prompts else prompt_args[1:1 + len(boxes)],
                      names=[] if args.prompts else list(names), ray=args.ray, actors=args.actors, quiet=True)
    summary = label(cfg)
    print(format_summary(summary))
    _step("label", times, t0)

    train_dir = out / "train"
    cmd = ["train", "--data", str(dataset / "data.yaml"), "--model", args.model, "--epochs", str(args.epochs),
           "--imgsz", str(args.imgsz), "--batch-size", str(args.batch_size), "--output", str(train_dir), "--no-progress",
           "--exist-ok"] + (["--weights", args.weights] if args.weights else [])
    print(f"4/6 edgedet {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    if edgedet(cmd) != 0:
        raise SystemExit("training failed (see above)")
    _step("train", times, t0)

    artifact = out / "export" / f"{args.model}.onnx"
    cmd = ["export", "--model", str(train_dir / "best.pth"), "--format", "onnx", "--output", str(artifact), "--exist-ok"]
    print(f"5/6 edgedet {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    if edgedet(cmd) != 0:
        raise SystemExit("export failed (see above)")
    _step("export", times, t0)

    print(f"6/6 edgedet run --model {artifact} --source {test_clip} (and the prompted model on the same clip)", flush=True)
    t0 = time.perf_counter()
    (out / "run").mkdir(exist_ok=True)
    detector = Detector(artifact, conf=0.05, dedup_iou=DEMO_DEDUP_IOU)
    stats, per_frame, sheet = run_video(test_clip, detector, out / "run", args.test_frames, detector.manifest.outputs.score_threshold)
    detector.close()
    # class ids of the trained model = the prompt order = the renderer's class order (prompts sorted by class)
    order = [class_names.index(n) for n in summary["prompts"]]
    gt_slots = [[{**o, "label": order.index(o["label"])} for o in objs if o["label"] in order] for objs in test_gt]
    scored = {i: d for i, d in per_frame.items() if i > 0}
    closed = match_accuracy(gt_slots, scored, len(order))
    _step("run", times, t0)

    from runtime.prompted import PromptedDetector

    prompted = PromptedDetector(encoder, prompted_model, conf=0.05, dedup_iou=DEMO_DEDUP_IOU).load_prompts(dataset / "prompts.npz")
    (out / "run_prompted").mkdir(exist_ok=True)
    p_stats, p_frames, _ = run_video(test_clip, prompted, out / "run_prompted", args.test_frames, summary["threshold"])
    prompted.close()
    open_set = match_accuracy(gt_slots, {i: d for i, d in p_frames.items() if i > 0}, len(order))
    times["total"] = round(time.perf_counter() - t_all, 1)

    print(f"\n{'model':<28} {'mAP50':>7} {'mAP':>7} {'FPS':>7}")
    print(f"{args.model + ' (trained on labels)':<28} {closed['mAP50']:>7.3f} {closed['mAP']:>7.3f} {stats['fps']:>7.1f}")
    print(f"{'prompted (embedded trex)':<28} {open_set['mAP50']:>7.3f} {open_set['mAP']:>7.3f} {p_stats['fps']:>7.1f}")
    print(f"labelled images {summary['images']}, boxes {summary['boxes_per_class']}; times (s) {times}; "
          f"contact sheets {summary['contact_sheet']}, {sheet}")
    result = {"labelled_images": summary["images"], "boxes_per_class": summary["boxes_per_class"],
              "label_threshold": summary["threshold"], "closed_set": {"model": args.model, "epochs": args.epochs,
              "imgsz": args.imgsz, "mAP50": closed["mAP50"], "mAP": closed["mAP"], "fps": stats["fps"]},
              "prompted": {"mAP50": open_set["mAP50"], "mAP": open_set["mAP"], "fps": p_stats["fps"]},
              "frames_scored": closed["frames_scored"], "seconds": times}
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
