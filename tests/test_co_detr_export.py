"""Co-DETR trains extra heads but deploys the plain detector: the exported graph is the base model's."""
from __future__ import annotations

import onnx
import pytest
import torch

from converters import export
from edgedet.models import create_model

TINY = dict(num_classes=3, backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=1, dec_layers=1,
            dim_feedforward=64, num_queries=10, enc_n_points=2, dec_n_points=2)


@pytest.mark.parametrize("co_name,base_name", [("co_dino", "dino")])
def test_exported_co_model_equals_plain_base_model(tmp_path, co_name, base_name):
    torch.manual_seed(0)
    co = create_model(co_name, **TINY).eval()
    base = co.to_base_model().eval()
    assert base.config.name == base_name
    co_path = export(co, format="onnx", output=tmp_path / "co.onnx", imgsz=(64, 64), msda="gather", simplify=False)
    base_path = export(base, format="onnx", output=tmp_path / "base.onnx", imgsz=(64, 64), msda="gather", simplify=False)
    co_graph, base_graph = onnx.load(str(co_path)).graph, onnx.load(str(base_path)).graph
    assert [n.op_type for n in co_graph.node] == [n.op_type for n in base_graph.node]
    weights = lambda g: sum(onnx.numpy_helper.to_array(t).size for t in g.initializer)  # noqa: E731
    assert weights(co_graph) == weights(base_graph)
    # and fewer parameters than the Co model carries in training
    assert sum(p.numel() for p in base.parameters()) < sum(p.numel() for p in co.parameters())
