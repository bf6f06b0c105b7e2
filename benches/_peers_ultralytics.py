"""Runs INSIDE the peers venv (benches/peers.py builds it): Ultralytics models from their yaml to OpenVINO IR.

Not part of edgedet and never imported by it (Ultralytics is AGPL-3.0): `benches/peers.py` starts this file
with the venv's python and only reads the .xml/.bin it writes. Random weights (latency does not depend on them);
FP32 with Ultralytics' `format="openvino"`, INT8 with its own `int8=True` path (NNCF, head kept float as
Ultralytics does) calibrated on the local images of `--calib-dir`. Nothing is downloaded: YOLO_OFFLINE is set by
the caller, the dataset yaml is local and the plotting-font fetch of the dataset check is switched off.

    python _peers_ultralytics.py --out DIR --calib-dir DIR --models yolo26n,yolo11n --imgsz 640 --int8
Last stdout line: JSON {model: {"fp32": xml, "int8": xml, "params_m": float}}.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--calib-dir", required=True, help="folder of images for INT8 calibration (no labels needed)")
    ap.add_argument("--models", required=True)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--int8", action="store_true")
    args = ap.parse_args()

    import ultralytics.data.utils as data_utils
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update(sync=False)  # no analytics events
    data_utils.check_font = lambda *a, **k: None  # the dataset check would fetch Arial.ttf for plots we never draw
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "calib.yaml"
    data.write_text(f"path: {Path(args.calib_dir).resolve()}\ntrain: .\nval: .\nnames:\n  0: object\n")
    result = {}
    for name in args.models.split(","):
        model = YOLO(f"{name}.yaml")  # builds the architecture: no weights are fetched
        params = sum(p.numel() for p in model.model.parameters()) / 1e6
        entry = {"params_m": round(params, 3)}
        # YOLO26's one-to-one head (NMS-free, [1, 300, 6] out) is exported only with nms=False; other heads export
        # raw [1, 84, 8400] candidates that still need NMS after the graph (not timed: in YOLO's favour)
        nms_free = {"nms": False} if name.startswith("yolo26") else {}
        entry["nms_free"] = bool(nms_free)
        for precision in ("fp32", "int8") if args.int8 else ("fp32",):
            work = out / f"{name}-{precision}"
            work.mkdir(exist_ok=True)
            pt = work / f"{name}.pt"
            model.save(str(pt))  # export names its folder after the weights file
            exported = YOLO(str(pt)).export(format="openvino", imgsz=args.imgsz, batch=1, dynamic=False, half=False,
                                            quantize=8 if precision == "int8" else None, data=str(data) if precision == "int8" else None,
                                            device="cpu", verbose=False, **nms_free)
            xml = next(Path(exported).glob("*.xml"))
            entry[precision] = str(xml)
            pt.unlink()
        result[name] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()
