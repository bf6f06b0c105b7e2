"""The runtime path of D-FINE-N on a 1080p source: is preprocessing under 10% of inference?

Exports D-FINE-N (the released dfine_hgnetv2_n_coco architecture, random weights: latency does not depend on
them) to OpenVINO with the fused MSDA op, FP32 and INT8 (calibrated on BCCD), each with the normalised float
input (`float32_nchw`: the CPU letterboxes and normalises) and with the uint8 input (`uint8_nhwc`: the CPU only
letterboxes, the graph converts and normalises). Then `edgedet benchmark` (OpenVINO's default threads: all cores) on the four artifacts: latency
round-robin, and the pipeline an app runs (capture -> preprocess -> infer -> postprocess -> draw) on a rendered
1920x1080 clip, reporting per engine the preprocess / infer share against the 10% target.

    python benches/preprocess_share.py              # 30 rounds, 32 calibration images
    python benches/preprocess_share.py --quick      # 5 rounds, 4 calibration images, FP32 only

Prints the CPU, the load, `edgedet benchmark`'s tables, the share per engine and, as the LAST line, one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCHES))

BCCD = REPO.parent / "shared" / "data" / "bccd" / "JPEGImages"
TARGET = 0.10  # preprocess ms / infer ms at most


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 rounds, 4 calibration images, FP32 only")
    ap.add_argument("--rounds", type=int, default=0, help="timed rounds (default 30, --quick 5)")
    ap.add_argument("--calib-images", type=int, default=0, help="INT8 calibration images (default 32)")
    args = ap.parse_args()
    rounds = args.rounds or (5 if args.quick else 30)
    calib_images = args.calib_images or (4 if args.quick else 32)
    precisions = ("fp32",) if args.quick else ("fp32", "int8")

    import realtime
    from peers import cpu_info, load_average

    from converters.api import export
    from converters.calibration import evenly_spaced, image_paths
    from runtime.commands.benchmark import benchmark, format_table

    cpu, before = cpu_info(), load_average()
    calib = [str(p) for p in evenly_spaced(image_paths(BCCD), calib_images)]
    model = realtime.dfine("n")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for precision in precisions:
            for fmt in ("float32_nchw", "uint8_nhwc"):
                paths.append(str(export(model, format="openvino", precision=precision, imgsz=(640, 640), msda="fused",
                                        calib=calib if precision == "int8" else None, calib_images=calib_images,
                                        top_k=300, input_format=fmt, score_threshold=0.25,
                                        output=Path(tmp) / f"dfine-n-{precision}-{fmt}.xml")))
        result = benchmark(paths, iters=rounds, project=str(Path(tmp) / "runs"), quiet=True)
    after = load_average()
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores), ISA: {' '.join(cpu['isa'])}")
    print(f"load average (1/5/15 min): before {before}, after {after}")
    print(format_table(result))
    rows = []
    for r in result["rows"]:
        fmt = r["input_format"]
        share = r.get("pre_vs_infer")
        rows.append({k: r.get(k) for k in ("precision", "p50_ms", "capture_ms", "preprocess_ms", "infer_ms",
                                            "postprocess_ms", "draw_ms", "pipeline_fps", "pre_vs_infer")})
        rows[-1]["input_format"] = fmt
        rows[-1]["target_met"] = share is not None and share <= TARGET
        print(f"D-FINE-N {r['precision']} {fmt:<13} preprocess {r.get('preprocess_ms')} ms = {share:.1%} of inference "
              f"{r.get('infer_ms')} ms (target <= {TARGET:.0%}: {'met' if rows[-1]['target_met'] else 'NOT met'}), "
              f"pipeline {r.get('pipeline_fps')} FPS")
    print(json.dumps({"bench": "preprocess_share", "quick": args.quick, "rounds": rounds,
                      "source_hw": [1080, 1920], "cpu": cpu, "load_before": before, "load_after": after, "rows": rows}))


if __name__ == "__main__":
    main()
