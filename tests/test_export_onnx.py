"""ONNX export of every registered model: ONNX Runtime matches PyTorch, fused form is one custom node per MSDA."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from converters import export
from converters.onnx.export import export_onnx
from converters.onnx.msda_forms import FUSED_DOMAIN, FUSED_OP
from edgedet.nn.ms_deform_attn import MSDeformAttn
from edgedet.nn.rtdetr_decoder import MSDeformableAttentionV2
from export_helpers import SHARED, feeds, graph_inputs, assert_outputs_close, build_tiny, model_params, probs, random_images, torch_outputs
from runtime.manifest import Manifest, read_sidecar

HW = (64, 96)
PARAMS = model_params()


def run_ort(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds(graph_inputs(session), x))


@pytest.mark.parametrize("postprocess", [False, True], ids=["raw", "topk"])
@pytest.mark.parametrize("name,form", PARAMS)
def test_onnxruntime_matches_pytorch(tmp_path, name, form, postprocess):
    model = build_tiny(name)
    # onnxslim is covered by test_simplified_export (it doubles the export time)
    path = export(model, "onnx", tmp_path / "m.onnx", imgsz=HW, msda=form or None, postprocess=postprocess, simplify=False)
    x = random_images(1, HW)
    got = run_ort(path, x)
    assert_outputs_close(model, got, torch_outputs(model, x, postprocess), postprocess, HW)
    proto = onnx.load(str(path))
    masked = getattr(model, "pads_as_content", True) is False  # mask-trained families also take the valid region
    assert [i.name for i in proto.graph.input] == (["images", "valid_hw"] if masked else ["images"])
    expected = ["labels", "boxes", "scores"] if postprocess else ["pred_logits", "pred_boxes"]
    assert [o.name for o in proto.graph.output] == expected
    assert {o.domain: o.version for o in proto.opset_import}[""] >= 17
    ops = {n.op_type for n in proto.graph.node}
    if form == "grid_sample":
        assert "GridSample" in ops
    if form == "gather":
        assert "GridSample" not in ops and ops & {"Gather", "GatherElements", "GatherND"}


@pytest.mark.parametrize("name", sorted({n for n, f in PARAMS if f}))
def test_fused_form_is_one_custom_node_per_layer(tmp_path, name):
    model = build_tiny(name)
    # MSDA calls of one detection forward (a prompted model also holds a prompt encoder's MSDA that it skips)
    calls = []
    layer_types = (MSDeformAttn, MSDeformableAttentionV2)
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in model.modules() if isinstance(m, layer_types)]
    per_level = any(isinstance(m, MSDeformableAttentionV2) for m in model.modules())  # RT-DETRv2 layout
    model(torch.from_numpy(random_images(1, HW)))
    for h in hooks:
        h.remove()
    layers = len(calls)
    # the graph OpenVINO / TensorRT build from (format='onnx' refuses 'fused': ONNX Runtime cannot run it)
    path = export_onnx(model, tmp_path / "fused.onnx", HW, Manifest(), "fused", postprocess=False)
    proto = onnx.load(str(path))
    custom = [n for n in proto.graph.node if n.domain == FUSED_DOMAIN]
    assert len(custom) == layers and all(n.op_type == FUSED_OP for n in custom)
    attrs = {"num_points_per_level"} if per_level else set()
    assert all(len(n.input) == 5 and len(n.output) == 1 and {a.name for a in n.attribute} == attrs for n in custom)
    assert not {"GridSample"} & {n.op_type for n in proto.graph.node}
    assert {o.domain: o.version for o in proto.opset_import}[FUSED_DOMAIN] == 1
    onnx.checker.check_model(proto, full_check=True)  # the schema for edgedet:: is registered by the exporter
    # value [N,S,M,D] f32, shapes [L,2] i64, starts [L] i64, locations [N,Lq,M,L,P,2] f32, weights [N,Lq,M,L,P] f32
    infos = {v.name: v.type.tensor_type for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
    consts = {o: onnx.numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    consts.update({i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer})
    node = custom[0]
    ranks = [(4, 1), (2, 7), (1, 7), (5, 1), (4, 1)] if per_level else [(4, 1), (2, 7), (1, 7), (6, 1), (5, 1)]
    for idx, (rank, elem) in enumerate(ranks):
        name_in = node.input[idx]
        if name_in in consts:
            assert consts[name_in].ndim == rank and (consts[name_in].dtype == np.int64) == (elem == 7)
        else:
            assert infos[name_in].elem_type == elem and len(infos[name_in].shape.dim) == rank


@pytest.mark.parametrize("name,form", PARAMS[:2])
def test_dynamic_batch(tmp_path, name, form):
    model = build_tiny(name)
    path = export(model, "onnx", tmp_path / "d.onnx", imgsz=HW, msda=form or None, dynamic_batch=True, simplify=False)
    x = random_images(2, HW, seed=3)
    got = run_ort(path, x)
    assert got[0].shape[0] == 2
    assert_outputs_close(model, got, torch_outputs(model, x, True), True, HW)
    assert read_sidecar(path).batch == 0


def _simplified_matches(tmp_path, name):
    model = build_tiny(name)
    path = export(model, "onnx", tmp_path / "s.onnx", imgsz=HW, simplify=True)
    x = random_images(1, HW, seed=1)
    assert_outputs_close(model, run_ort(path, x), torch_outputs(model, x, True), True, HW)
    assert read_sidecar(path) == Manifest.from_json({p.key: p.value for p in onnx.load(str(path)).metadata_props}["edgedet"])


def test_simplified_export_tiny(tmp_path):
    _simplified_matches(tmp_path, "tiny_msda")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted({n for n, _ in PARAMS} - {"tiny_msda"}))
def test_simplified_export(tmp_path, name):
    _simplified_matches(tmp_path, name)


def test_manifest_embedded_and_sidecar(tmp_path):
    model = build_tiny("tiny_msda")
    path = export(model, "onnx", tmp_path / "m.onnx", imgsz=HW, msda="grid_sample", class_names=["a", "b", "c"])
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    embedded = Manifest.from_json(meta["edgedet"])
    side = read_sidecar(path)
    assert embedded == side
    assert side.preprocess.size == HW and side.msda == "grid_sample" and side.class_names == ["a", "b", "c"]
    assert side.outputs.score_activation == "sigmoid" and side.outputs.names == ["labels", "boxes", "scores"]
    assert side.family == "tiny_msda" and side.model_config["num_queries"] == 12
    assert json.loads(side.to_json())["backend"] == "onnxruntime"


REFERENCE = SHARED / "fixtures" / "reference"


@pytest.mark.parametrize("family", ["detr", "deformable_detr", "dab_detr", "dino"])
def test_official_checkpoint_export_reproduces_reference(tmp_path, family):
    """checkpoint path -> export -> ONNX Runtime == the official repository's own outputs."""
    ckpt = REFERENCE / family / "checkpoint.pth"
    if not ckpt.is_file():
        pytest.skip(f"{ckpt} is not present")
    inputs, outputs = np.load(REFERENCE / family / "inputs.npz"), np.load(REFERENCE / family / "outputs.npz")
    x = inputs["img0"].astype(np.float32)
    assert not inputs["img0_mask"].any()  # unpadded: the deploy graph has no mask input
    path = export(ckpt, "onnx", tmp_path / f"{family}.onnx", imgsz=x.shape[-2:], postprocess=False, simplify=False)
    logits, boxes = run_ort(path, x)
    act = read_sidecar(path).outputs.score_activation
    np.testing.assert_allclose(probs(logits, act), probs(outputs["img0.pred_logits"], act), atol=1e-3, rtol=0)
    np.testing.assert_allclose(boxes, outputs["img0.pred_boxes"], atol=1e-3, rtol=0)
