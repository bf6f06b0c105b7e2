"""Checks the real-time DETR families (rtdetr, dfine) share: a few training steps with contrastive
denoising must lower the loss, and `edgedet train` must train a tiny one with the family's own input
normalisation. Each family's test file adds what is its own (its loss terms, its settings)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from edgedet.cli import main as cli_main


def train_a_few_steps(model: torch.nn.Module, steps: int = 6) -> Tuple[torch.nn.Module, Dict, Dict]:
    """Train `model` (built by the caller right after torch.manual_seed(0)) on two fixed images for `steps`
    steps; checks that the loss falls, that denoising trains its class embedding, and that eval mode
    returns plain outputs for 20 queries. -> (criterion, last training outputs, last losses)."""
    crit = model.build_criterion()
    images = torch.rand(2, 3, 64, 64)
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])}]
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    totals: List[float] = []
    for _ in range(steps):
        torch.manual_seed(1)  # the same denoising noise every step, so the loss must fall
        out = model(images, None, targets)
        losses = crit(out, targets)
        total = crit.total_loss(losses)
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(float(total.detach()))
    assert totals[-1] < totals[0], totals
    assert model.decoder.denoising_class_embed.weight.grad is not None
    model.eval()
    with torch.no_grad():
        plain = model(images)
    assert set(plain) == {"pred_logits", "pred_boxes"} and plain["pred_logits"].shape == (2, 20, 3)
    return crit, out, losses


def check_train_cli_uses_the_family_normalisation(tmp_path: Path, family: str, sets: Sequence[str]) -> None:
    """`edgedet train --model FAMILY --set ...` for one epoch on tiny synthetic data: the checkpoint records
    the family and its input normalisation (RGB / 255, no mean/std), and the loss is finite."""
    from edgedet.engine.checkpoint import load_checkpoint

    data = tmp_path / "data.yaml"
    data.write_text("data:\n  format: synthetic\n  root: syn\n  synthetic_train_images: 4\n  synthetic_val_images: 2\n"
                    "  synthetic_image_size: 64\n  scales: [64]\n  val_size: 64\n")
    out = tmp_path / "run"
    argv = ["train", "--model", family, "--data", str(data), "--epochs", "1", "--batch-size", "2", "--output", str(out),
            "--no-progress"] + [a for s in sets for a in ("--set", s)]
    assert cli_main(argv) == 0
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt["config"]["model"]["name"] == family
    assert ckpt["config"]["data"]["mean"] == [0.0, 0.0, 0.0] and ckpt["config"]["data"]["std"] == [1.0, 1.0, 1.0]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(rows[-1]["train_loss"])


def check_fusion_is_exact(block: torch.nn.Module, fuse: str, input_shape: Sequence[int]) -> None:
    """Random BatchNorm statistics and affine terms (so that fusing has something to fold), then the block's
    eval output before and after `block.<fuse>()` (the RepVGG reparameterisation) must agree."""
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.normal_()
            m.bias.data.normal_()
    block.eval()
    x = torch.randn(*input_shape)
    with torch.no_grad():
        ref = block(x)
        getattr(block, fuse)()
        torch.testing.assert_close(block(x), ref, atol=1e-5, rtol=1e-5)
