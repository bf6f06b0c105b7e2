"""The runtime imports and detects with torch, edgedet and converters made unimportable."""
import subprocess
import sys
import textwrap
from pathlib import Path

from runtime.testing import make_blob_artifact

REPO = Path(__file__).resolve().parents[1]


def test_runtime_runs_without_torch_edgedet_converters(tmp_path):
    model = make_blob_artifact(tmp_path, "softmax")
    script = textwrap.dedent(f"""
        import sys
        for name in ("torch", "torchvision", "edgedet", "converters"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import numpy as np
        import runtime
        from runtime import Detector, Pipeline, draw, contact_sheet, open_source
        import runtime.cli, runtime.sinks, runtime.backends.onnxruntime, runtime.backends.openvino
        det = Detector({str(model)!r})
        frame = np.zeros((120, 200, 3), np.uint8)
        frame[10:60, 20:80] = (255, 0, 0)
        dets = det(frame)
        stats = Pipeline(iter([frame] * 3), det).run()
        image = contact_sheet([draw(frame, dets)] * 2, cols=2)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "edgedet", "converters") and sys.modules[m] is not None)
        print(dets.names, stats["frames"], image.shape, leaked)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['blue'] 3 (128, 412, 3) []"
