"""Exponential moving average of a model's weights (evaluated and saved alongside the raw weights)."""
from __future__ import annotations

import copy
from typing import Dict

import torch
from torch import nn


class ModelEMA:
    """ema = d·ema + (1 − d)·model after every step, d = min(decay, (1 + n) / (10 + n)).

    The ramp keeps early averages from being dominated by the random initialisation.
    Integer buffers (e.g. counters) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        src = model.state_dict()
        seen = set()
        for k, v in self.module.state_dict(keep_vars=True).items():
            # A tied tensor (e.g. a box head shared by every decoder layer) is listed under each of
            # its names: average it once per step, not once per name.
            if id(v) in seen:
                continue
            seen.add(id(v))
            v = v.data
            if v.dtype.is_floating_point:
                v.mul_(d).add_(src[k].detach(), alpha=1 - d)
            else:
                v.copy_(src[k])

    def state_dict(self) -> Dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: Dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


__all__ = ["ModelEMA"]
