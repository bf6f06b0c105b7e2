"""MSDA implementations: `pytorch` (the specification) and `gather` against the official reference
outputs, against each other on non-square levels, gradients, ONNX form and error messages."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgedet.ops import list_msda_impls, multi_scale_deformable_attention
from edgedet.ops.msda import level_start_index_from_shapes
from edgedet.registry import UnknownNameError

MSDA_CORE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "reference" / "msda_core"
IMPLS = ("pytorch", "gather")


@pytest.fixture(scope="module")
def msda_core():
    if not (MSDA_CORE / "inputs.npz").is_file():
        pytest.skip(f"{MSDA_CORE} is not present")
    return np.load(MSDA_CORE / "inputs.npz"), np.load(MSDA_CORE / "outputs.npz")


def random_case(shapes, n=2, lq=5, m=3, d=4, p=3, low=-0.2, high=1.2, dtype=torch.float32, seed=0):
    """Random inputs; locations in [low, high) so some corners fall in the zero padding."""
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=dtype)
    loc = torch.rand(n, lq, m, len(shapes), p, 2, generator=g, dtype=dtype) * (high - low) + low
    weights = torch.rand(n, lq, m, len(shapes), p, generator=g, dtype=dtype)
    return value, torch.tensor(shapes, dtype=torch.int64), loc, weights


def test_gather_is_registered():
    assert {"pytorch", "gather"} <= set(list_msda_impls())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ["case0", "case1", "case2"])
def test_matches_official_reference(msda_core, impl, case):
    inputs, outputs = msda_core
    value, shapes, starts, loc, weights = (
        torch.from_numpy(inputs[f"{case}.{key}"])
        for key in ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
    )
    out = multi_scale_deformable_attention(value, shapes, loc, weights, impl=impl, level_start_index=starts)
    expected = torch.from_numpy(outputs[f"{case}.output"])
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "shapes",
    [
        [(7, 13), (4, 7), (2, 3)],  # wide
        [(13, 5), (6, 2), (3, 1)],  # tall, including a single-column level
        [(1, 9), (9, 1)],  # degenerate rows / columns
        [(5, 5)],
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_gather_equals_pytorch_on_non_square_levels(shapes, seed):
    value, spatial_shapes, loc, weights = random_case(shapes, seed=seed)
    ref = multi_scale_deformable_attention(value, spatial_shapes, loc, weights, impl="pytorch")
    out = multi_scale_deformable_attention(value, spatial_shapes, loc, weights, impl="gather")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_gather_rectangle_uses_each_axis_extent():
    """A point near the right edge of a wide map must read that column, not one clamped at H - 1."""
    shapes = [(2, 8)]
    value = torch.arange(16, dtype=torch.float32).view(1, 16, 1, 1)  # token index as the value
    loc = torch.tensor([[(7.5 / 8, 0.75), (6.0 / 8, 0.25)]]).view(1, 2, 1, 1, 1, 2)
    weights = torch.ones(1, 2, 1, 1, 1)
    out = multi_scale_deformable_attention(value, shapes, loc, weights, impl="gather").flatten()
    # (x=7.5/8, y=0.75): centre of pixel (row 1, col 7) = token 15; (x=6/8, y=0.25): between cols 5, 6 of row 0.
    torch.testing.assert_close(out, torch.tensor([15.0, 5.5]))
    torch.testing.assert_close(out, multi_scale_deformable_attention(value, shapes, loc, weights).flatten())


def test_gather_zero_outside_and_exact_borders():
    shapes = [(3, 4), (2, 2)]
    value, spatial_shapes, _, _ = random_case(shapes, n=1, m=2, d=3, seed=3)
    # Borders, centres, far outside and half a pixel outside (partly padded) on both levels.
    xy = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5], [-3.0, 0.5], [0.5, 7.0], [-0.1, 1.05], [1.0 / 8, 0.99]])
    loc = xy.view(1, -1, 1, 1, 1, 2).expand(1, xy.shape[0], 2, 2, 1, 2).contiguous()
    weights = torch.rand(1, xy.shape[0], 2, 2, 1)
    ref = multi_scale_deformable_attention(value, spatial_shapes, loc, weights, impl="pytorch")
    out = multi_scale_deformable_attention(value, spatial_shapes, loc, weights, impl="gather")
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert torch.all(out[0, 3] == 0) and torch.all(out[0, 4] == 0)


def smooth_locations(shapes, n, lq, m, p, seed):
    """float64 locations whose pixel coordinates have fractional parts in [0.2, 0.8]: away from
    the integer kinks of bilinear interpolation, so finite differences see one linear piece.
    Cells range from -1 (partly in the padding) to the last pixel."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64).view(1, 1, 1, len(shapes), 1, 2)
    cells = torch.floor(torch.rand(n, lq, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * (sizes + 1)) - 1
    frac = 0.2 + 0.6 * torch.rand(n, lq, m, len(shapes), p, 2, generator=g, dtype=torch.float64)
    return (cells + frac + 0.5) / sizes


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck(impl):
    shapes = [(3, 4), (2, 3)]
    value, spatial_shapes, _, weights = random_case(shapes, n=1, lq=2, m=2, d=3, p=2, dtype=torch.float64, seed=5)
    loc = smooth_locations(shapes, n=1, lq=2, m=2, p=2, seed=6)
    value.requires_grad_(True)
    loc.requires_grad_(True)
    weights.requires_grad_(True)

    def fn(v, sl, aw):
        return multi_scale_deformable_attention(v, spatial_shapes, sl, aw, impl=impl)

    assert torch.autograd.gradcheck(fn, (value, loc, weights), eps=1e-6, atol=1e-5)


def test_gather_gradients_equal_pytorch():
    shapes = [(4, 6), (2, 3)]
    grads = {}
    for impl in IMPLS:
        value, spatial_shapes, _, weights = random_case(shapes, lq=4, dtype=torch.float64, seed=8)
        loc = smooth_locations(shapes, n=2, lq=4, m=3, p=3, seed=9)
        for t in (value, loc, weights):
            t.requires_grad_(True)
        out = multi_scale_deformable_attention(value, spatial_shapes, loc, weights, impl=impl)
        out.pow(2).sum().backward()
        grads[impl] = (value.grad, loc.grad, weights.grad)
    for ref, got in zip(grads["pytorch"], grads["gather"]):
        torch.testing.assert_close(got, ref, atol=1e-9, rtol=1e-7)


def test_gather_onnx_export_has_no_grid_sample(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    shapes = [(6, 10), (3, 5)]
    value, _, loc, weights = random_case(shapes, n=1, lq=7, m=2, d=8, p=2, seed=11)

    class Core(torch.nn.Module):
        def forward(self, v, sl, aw):
            return multi_scale_deformable_attention(v, shapes, sl, aw, impl="gather")

    path = tmp_path / "msda_gather.onnx"
    torch.onnx.export(Core(), (value, loc, weights), str(path), dynamo=False, opset_version=17,
                      input_names=["value", "sampling_locations", "attention_weights"], output_names=["output"])
    op_types = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "GridSample" not in op_types and "Gather" in op_types
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"value": value.numpy(), "sampling_locations": loc.numpy(),
                             "attention_weights": weights.numpy()})[0]
    ref = multi_scale_deformable_attention(value, shapes, loc, weights, impl="pytorch")
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5, rtol=0)


def test_level_start_index_from_shapes():
    assert level_start_index_from_shapes([(2, 3), (4, 5), (1, 1)]) == [0, 6, 26]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda v, sl, aw: (v[0], sl, aw), "value must be"),
        (lambda v, sl, aw: (v, sl[..., :1], aw), "sampling_locations must be"),
        (lambda v, sl, aw: (v, sl, aw[..., :1]), "attention_weights"),
        (lambda v, sl, aw: (v[:, :-1], sl, aw), "cover"),
        (lambda v, sl, aw: (v, sl[:, :, :1], aw[:, :, :1]), "disagree"),
    ],
)
def test_wrong_shapes_raise_clear_errors(mutate, message):
    shapes = [(3, 4), (2, 2)]
    value, spatial_shapes, loc, weights = random_case(shapes)
    value, loc, weights = mutate(value, loc, weights)
    with pytest.raises(ValueError, match=message):
        multi_scale_deformable_attention(value, spatial_shapes, loc, weights, impl="gather")


def test_unknown_impl_lists_valid_names():
    value, spatial_shapes, loc, weights = random_case([(2, 2)])
    with pytest.raises(UnknownNameError) as err:
        multi_scale_deformable_attention(value, spatial_shapes, loc, weights, impl="gathr")
    text = str(err.value)
    assert "gathr" in text and "gather" in text and "pytorch" in text
