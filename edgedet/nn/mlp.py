"""A plain multi-layer perceptron (ReLU between layers, or SiLU as DEIM uses), as DETR's box head."""
from __future__ import annotations

from torch import Tensor, nn
import torch.nn.functional as F


_ACTS = {"relu": F.relu, "silu": F.silu}


class MLP(nn.Module):
    """`num_layers` Linear layers, ReLU between them. [..., in_dim] -> [..., out_dim].

    Parameters are `layers.{i}.weight/bias`, the name every reference checkpoint uses.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, act: str = "relu"):
        super().__init__()
        if act not in _ACTS:
            raise ValueError(f"MLP activation must be one of {', '.join(_ACTS)}, got '{act}'")
        self.act = _ACTS[act]
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [out_dim]
        self.num_layers = num_layers
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = self.act(x)
        return x
