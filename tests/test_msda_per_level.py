"""MSDA per-level point counts (RT-DETRv2 / D-FINE layout) and the `discrete` sampling method:
every CPU implementation against an independent per-point NumPy re-computation of the rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgedet.ops import multi_scale_deformable_attention

CPU_IMPLS = ("pytorch", "gather")


def per_level_case(shapes, counts, n=2, lq=5, m=3, d=4, low=-0.2, high=1.2, dtype=torch.float32, seed=0):
    """Random per-level inputs: locations [N, Lq, M, sum(counts), 2] in [low, high)."""
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    k = sum(counts)
    value = torch.randn(n, s, m, d, generator=g, dtype=dtype)
    loc = torch.rand(n, lq, m, k, 2, generator=g, dtype=dtype) * (high - low) + low
    weights = torch.rand(n, lq, m, k, generator=g, dtype=dtype)
    return value, torch.tensor(shapes, dtype=torch.int64), loc, weights


def naive_msda(value, shapes, loc, weights, counts, method):
    """One point at a time, float64 accumulation, written from the rules in edgedet.ops.msda."""
    value, loc, weights = value.numpy(), loc.numpy(), weights.numpy()
    n, _, m, d = value.shape
    lq = loc.shape[1]
    level_of = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    out = np.zeros((n, lq, m, d))
    for b, q, head, k in np.ndindex(n, lq, m, loc.shape[3]):
        lvl = level_of[k]
        h, w = shapes[lvl]
        pixel = lambda yy, xx: value[b, starts[lvl] + yy * w + xx, head].astype(np.float64)  # noqa: E731
        lx, ly = loc[b, q, head, k]
        if method == "discrete":
            # float32 arithmetic as upstream, truncation toward zero, both clamped by H, x also by W
            ix = int(np.float32(lx) * np.float32(w) + np.float32(0.5))
            iy = int(np.float32(ly) * np.float32(h) + np.float32(0.5))
            ix, iy = min(max(ix, 0), h - 1), min(max(iy, 0), h - 1)
            sample = pixel(iy, min(ix, w - 1))
        else:
            x, y = float(lx) * w - 0.5, float(ly) * h - 0.5
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            sample = np.zeros(d)
            for cx, cy in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                if 0 <= cx < w and 0 <= cy < h:
                    sample += (1 - abs(x - cx)) * (1 - abs(y - cy)) * pixel(cy, cx)
        out[b, q, head] += weights[b, q, head, k] * sample
    return torch.from_numpy(out.reshape(n, lq, m * d))


SHAPE_CASES = [
    ([(6, 10), (3, 5), (2, 3)], (4, 3, 2)),  # wide levels, RT-DETRv2's [4, 3, 2]
    ([(9, 4), (5, 2), (3, 1)], (2, 1, 3)),  # tall levels, including a single column
    ([(5, 5), (3, 3)], (1, 4)),
]


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("method", ["default", "discrete"])
@pytest.mark.parametrize("shapes, counts", SHAPE_CASES)
def test_per_level_matches_independent_recomputation(impl, method, shapes, counts):
    value, spatial_shapes, loc, weights = per_level_case(shapes, counts, seed=len(shapes) + sum(counts))
    out = multi_scale_deformable_attention(
        value, spatial_shapes, loc, weights, impl=impl, num_points_per_level=counts, method=method
    )
    expected = naive_msda(value, shapes, loc, weights, counts, method)
    assert out.shape == (2, 5, 12) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_uniform_layout_discrete_equals_per_level(impl):
    """The uniform layout is the per-level layout with P points on every level."""
    shapes, p = [(4, 7), (2, 4)], 3
    value, spatial_shapes, loc, weights = per_level_case(shapes, (p, p), seed=4)
    uniform_loc = loc.view(2, 5, 3, 2, p, 2)
    uniform_w = weights.view(2, 5, 3, 2, p)
    for method in ("default", "discrete"):
        uniform = multi_scale_deformable_attention(value, spatial_shapes, uniform_loc, uniform_w, impl=impl, method=method)
        per_level = multi_scale_deformable_attention(
            value, spatial_shapes, loc, weights, impl=impl, num_points_per_level=[p, p], method=method
        )
        torch.testing.assert_close(uniform, per_level, atol=1e-6, rtol=0)
    expected = naive_msda(value, shapes, loc, weights, (p, p), "discrete")
    torch.testing.assert_close(uniform.double(), expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_discrete_upstream_rounding_and_clamping(impl):
    """Hand-placed points on one wide 2 x 5 map whose value is the token index.

    x * W + 0.5 truncates toward zero; x is clamped to H - 1 = 1 (upstream quirk on wide maps),
    y to H - 1; a point just left of the map reads column 0."""
    value = torch.arange(10, dtype=torch.float32).view(1, 10, 1, 1)
    xy_and_token = [
        ((0.05, 0.10), 0),  # x*W+0.5 = 0.75 -> col 0, y*H+0.5 = 0.7 -> row 0
        ((0.15, 0.30), 6),  # 1.25 -> col 1, 1.1 -> row 1
        ((0.95, 0.90), 6),  # col 5 -> clamped to H-1 = 1 (not W-1 = 4), row 2 -> clamped to 1
        ((-0.09, 0.0), 0),  # -0.45 + 0.5 = 0.05 -> 0
        ((-0.25, -3.0), 0),  # negative -> clamped to 0
        ((0.5, 0.1), 1),  # col 3 -> clamped to 1, row 0
    ]
    loc = torch.tensor([xy for xy, _ in xy_and_token]).view(1, -1, 1, 1, 2)
    weights = torch.ones(1, len(xy_and_token), 1, 1)
    out = multi_scale_deformable_attention(
        value, [(2, 5)], loc, weights, impl=impl, num_points_per_level=[1], method="discrete"
    ).flatten()
    assert out.tolist() == [float(t) for _, t in xy_and_token]


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_discrete_on_tall_map_stays_inside_columns(impl):
    """Upstream fails with an index error here; we clamp x to W - 1 as well (documented rule)."""
    value = torch.arange(12, dtype=torch.float32).view(1, 12, 1, 1)  # 4 x 3 map
    loc = torch.tensor([(0.99, 0.99), (0.3, 0.1)]).view(1, 2, 1, 1, 2)
    out = multi_scale_deformable_attention(
        value, [(4, 3)], loc, torch.ones(1, 2, 1, 1), impl=impl, num_points_per_level=[1], method="discrete"
    ).flatten()
    assert out.tolist() == [11.0, 1.0]  # (row 3, col min(3, 2)); (row int(0.9) = 0, col int(1.4) = 1)


def test_discrete_gradients_reach_value_and_weights_only():
    shapes, counts = [(3, 4), (2, 2)], (2, 1)
    value, spatial_shapes, loc, weights = per_level_case(shapes, counts, n=1, lq=3, m=2, d=3, seed=7)
    for t in (value, loc, weights):
        t.requires_grad_(True)
    out = multi_scale_deformable_attention(
        value, spatial_shapes, loc, weights, num_points_per_level=counts, method="discrete"
    )
    out.sum().backward()
    assert value.grad.abs().sum() > 0 and weights.grad.abs().sum() > 0
    assert loc.grad is None or torch.all(loc.grad == 0)


@pytest.mark.parametrize(
    "kwargs, loc_shape, message",
    [
        ({"num_points_per_level": [2, 1]}, (1, 2, 2, 4, 2), "sums to 3"),
        ({"num_points_per_level": [2, 1, 1]}, (1, 2, 2, 4, 2), "3 entries for 2 levels"),
        ({"num_points_per_level": [3, 0]}, (1, 2, 2, 3, 2), "positive integers"),
        ({"num_points_per_level": 4}, (1, 2, 2, 4, 2), "one point count per level"),
        ({"num_points_per_level": [2, 2]}, (1, 2, 2, 2, 2, 2), r"\[N, Lq, M, sum\(num_points_per_level\), 2\]"),
        ({}, (1, 2, 2, 4, 2), "needs num_points_per_level"),
        ({"method": "nearest"}, (1, 2, 2, 2, 2, 2), "method must be one of default, discrete"),
    ],
)
def test_per_level_errors_are_clear(kwargs, loc_shape, message):
    value = torch.zeros(1, 12 + 4, 2, 3)
    loc = torch.zeros(loc_shape)
    with pytest.raises(ValueError, match=message):
        multi_scale_deformable_attention(value, [(3, 4), (2, 2)], loc, torch.zeros(loc_shape[:-1]), **kwargs)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_per_level_default_gradcheck(impl):
    shapes, counts = [(3, 4), (2, 3)], (3, 1)
    value, spatial_shapes, _, weights = per_level_case(shapes, counts, n=1, lq=2, m=2, d=3, dtype=torch.float64, seed=5)
    # pixel coordinates with fractional parts in [0.2, 0.8]: away from the bilinear kinks
    g = torch.Generator().manual_seed(6)
    sizes = torch.tensor([[w, h] for (h, w), c in zip(shapes, counts) for _ in range(c)], dtype=torch.float64)
    cells = torch.floor(torch.rand(1, 2, 2, 4, 2, generator=g, dtype=torch.float64) * (sizes + 1)) - 1
    loc = (cells + 0.7 + 0.6 * torch.rand(1, 2, 2, 4, 2, generator=g, dtype=torch.float64)) / sizes
    for t in (value, loc, weights):
        t.requires_grad_(True)

    def fn(v, sl, aw):
        return multi_scale_deformable_attention(v, spatial_shapes, sl, aw, impl=impl, num_points_per_level=counts)

    assert torch.autograd.gradcheck(fn, (value, loc, weights), eps=1e-6, atol=1e-5)
