"""Training details that change results silently: EMA of tied parameters, DAB-DETR box gradients."""
from __future__ import annotations

import torch
from torch import nn

from edgedet.engine.ema import ModelEMA
from edgedet.models import create_model


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        head = nn.Linear(2, 2)
        self.heads = nn.ModuleList([head, head, head])  # one module under three names, as DINO's box heads
        self.other = nn.Linear(2, 2)


def test_ema_averages_tied_parameters_once_per_step():
    model = _Tied()
    ema = ModelEMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    d = min(0.9, 2 / 11)
    for k, v in ema.module.state_dict().items():
        expected = d * start[k] + (1 - d) * model.state_dict()[k]
        assert torch.allclose(v, expected, atol=1e-6), k


def test_dab_detr_intermediate_boxes_carry_the_refinement_gradient():
    """Layer i+1's box output sits on layer i's refined anchor with its gradient (official DAB-DETR)."""
    torch.manual_seed(0)
    model = create_model("dab_detr", backbone="resnet18", hidden_dim=32, nheads=4, enc_layers=1, dec_layers=3,
                         dim_feedforward=32, num_queries=4, num_classes=2, backbone_frozen_bn=True)
    model.train()
    out = model(torch.randn(1, 3, 64, 64))
    last_head = model.bbox_embed.layers[-1].weight
    # The final boxes depend on the box head through the previous layer's refinement too.
    grad_final = torch.autograd.grad(out["pred_boxes"].sum(), last_head, retain_graph=True)[0]
    feats, feat_mask = model.backbone(torch.randn(1, 3, 64, 64))[-1]
    hs, anchors = model.transformer(model.input_proj(feats), feat_mask, model.refpoint_embed.weight,
                                    model.position_embedding(feat_mask))
    assert anchors[1].requires_grad and anchors[2].requires_grad
    g = torch.autograd.grad(anchors[1].sum(), last_head, allow_unused=True)[0]
    assert g is not None and g.abs().sum() > 0
    assert grad_final.abs().sum() > 0
