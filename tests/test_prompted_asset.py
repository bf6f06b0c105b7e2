"""The embedded prompted detector (`edgedet/assets/prompted_detector.pth`) and the script that trains it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from converters.demo_prompted import PROMPTED_CHECKPOINT
from edgedet.engine.checkpoint import load_model

REPO = Path(__file__).resolve().parents[1]


def _minilm_keys(state):
    """Keys of the frozen MiniLM (only the text projection belongs in a checkpoint)."""
    return [k for k in state if k.startswith("text_encoder.") and not k.startswith("text_encoder.proj.")]


def test_embedded_prompted_model_is_small_fp16_and_without_minilm_weights():
    assert PROMPTED_CHECKPOINT.stat().st_size < 8e6
    ckpt = torch.load(PROMPTED_CHECKPOINT, map_location="cpu", weights_only=True)
    floats = [v for v in ckpt["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert not _minilm_keys(ckpt["model"])
    assert ckpt["config"]["model"]["text_encoder"] == "minilm"
    metrics = ckpt["metrics"]
    assert metrics["visual_1shot"]["mAP50"] > 0.5 and metrics["text"]["mAP50"] > 0.5, metrics


def test_embedded_prompted_model_detects_its_default_prompts():
    model = load_model(PROMPTED_CHECKPOINT)
    assert model.config.name == "trex" and model.config.class_names == ["circle", "square", "triangle"]
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 256, 256))
    assert out["pred_logits"].shape == (1, model.config.num_queries, 3)


@pytest.mark.slow
def test_training_script_writes_a_loadable_slim_checkpoint(tmp_path):
    out = tmp_path / "prompted.pth"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train_prompted_model.py"), "--steps", "3",
                           "--output", str(out)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["train_steps"] == 3 and set(metrics["visual_1shot"]) == {"mAP", "mAP50"}
    state = torch.load(out, map_location="cpu", weights_only=True)["model"]
    assert not _minilm_keys(state)
    load_model(out)
