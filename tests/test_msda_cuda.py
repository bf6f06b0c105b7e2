"""The CUDA MSDA kernel through its PyTorch extension (impl="cuda"); needs a GPU.

On a CPU-only machine every test here is skipped (`tests/test_msda_cuda_wrapper.py` covers the
Python side there). `scripts/gpu_check.sh` runs this file on a GPU machine.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgedet.ops import msda_cuda
from edgedet.ops import multi_scale_deformable_attention as msda

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def random_case(levels, n=2, m=4, d=16, lq=50, p=3, dtype=torch.float32, seed=0, points=None):
    """Uniform layout with p points per level, or the per-level layout when `points` is given."""
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in levels)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64)
    k = sum(points) if points else len(levels) * p
    locs = torch.rand(n, lq, m, k, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1
    attn = torch.rand(n, lq, m, k, generator=g, dtype=torch.float64)
    attn = attn / attn.sum(-1, keepdim=True)
    if not points:
        locs, attn = locs.view(n, lq, m, len(levels), p, 2), attn.view(n, lq, m, len(levels), p)
    shapes = torch.tensor(levels, dtype=torch.int64)
    return [t.to(dtype).cuda() for t in (value, locs, attn)] + [shapes.cuda()]


@pytest.mark.parametrize("levels", [[(16, 20), (8, 10), (4, 5)], [(7, 3), (1, 1)], [(64, 64), (32, 32), (16, 16), (8, 8)]])
def test_cuda_matches_reference_fp32(levels):
    value, locs, attn, shapes = random_case(levels)
    ref = msda(value, shapes, locs, attn, impl="pytorch")
    out = msda(value, shapes, locs, attn, impl="cuda")
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["default", "discrete"])
@pytest.mark.parametrize("levels", [[(16, 20), (8, 10), (4, 5)], [(9, 4), (5, 2), (3, 1)]])  # wide and tall maps
def test_cuda_per_level_points_match_reference_fp32(levels, method):
    value, locs, attn, shapes = random_case(levels, points=(4, 3, 2))
    kw = dict(num_points_per_level=(4, 3, 2), method=method)
    ref = msda(value, shapes, locs, attn, impl="pytorch", **kw)
    out = msda(value, shapes, locs, attn, impl="cuda", **kw)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)


def test_cuda_uniform_discrete_matches_reference():
    value, locs, attn, shapes = random_case([(16, 20), (8, 10)])
    ref = msda(value, shapes, locs, attn, impl="pytorch", method="discrete")
    assert torch.allclose(msda(value, shapes, locs, attn, impl="cuda", method="discrete"), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("coords", ["half", "float32"])  # all-half inputs, or autocast's float32 locations/weights
def test_cuda_half_precision_forward(dtype, tol, coords):
    value, locs, attn, shapes = random_case([(16, 20), (8, 10)], dtype=torch.float32)
    value = value.to(dtype)
    if coords == "half":
        locs, attn = locs.to(dtype), attn.to(dtype)
    # the reference sees exactly the rounded inputs, in float32
    ref = msda(value.float(), shapes, locs.float(), attn.float(), impl="pytorch")
    out = msda(value, shapes, locs, attn, impl="cuda")
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max().item() < tol * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_backward_against_float32(dtype):
    value, locs, attn, shapes = random_case([(16, 20), (8, 10)], points=(4, 2), dtype=torch.float32)
    grads = []
    for impl, v0 in (("pytorch", value.to(dtype).float()), ("cuda", value.to(dtype))):  # same rounded values
        v, l_, a = v0.clone().requires_grad_(), locs.clone().requires_grad_(), attn.clone().requires_grad_()
        out = msda(v, shapes, l_, a, impl=impl, num_points_per_level=(4, 2))  # float32 locations, as autocast
        out.float().sum().backward()
        assert v.grad.dtype == v.dtype and l_.grad.dtype == torch.float32
        grads.append((v.grad.float(), l_.grad, a.grad))
    for ref, got in zip(*grads):
        assert (got - ref).abs().max().item() < 2e-2 * max(1.0, ref.abs().max().item())


def test_cuda_under_autocast_takes_half_value_and_float_locations():
    value, locs, attn, shapes = random_case([(16, 20), (8, 10)])
    lin = torch.nn.Linear(16, 16).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        v = lin(value)  # half under autocast; locations and weights stay float32
        out = msda(v, shapes, locs.requires_grad_(), attn.requires_grad_(), impl="cuda")
    assert v.dtype == torch.float16 and out.dtype == torch.float16
    out.float().sum().backward()
    assert locs.grad.dtype == torch.float32 and torch.isfinite(locs.grad).all() and lin.weight.grad is not None


def test_cuda_matches_shared_reference_fixture(shared):
    path = shared / "fixtures" / "reference" / "msda_core"
    if not path.is_dir():
        pytest.skip("reference fixture absent")
    inp, out = np.load(path / "inputs.npz"), np.load(path / "outputs.npz")
    for case in ("case0", "case1", "case2"):
        t = lambda k: torch.from_numpy(inp[f"{case}.{k}"]).cuda()  # noqa: E731
        got = msda(t("value"), t("spatial_shapes"), t("sampling_locations"), t("attention_weights"), impl="cuda")
        assert np.abs(got.cpu().numpy() - out[f"{case}.output"]).max() < 1e-5


def test_cuda_gradcheck_float64():
    value, locs, attn, shapes = random_case([(5, 6), (3, 2)], n=1, m=2, d=4, lq=5, p=2, dtype=torch.float64)
    # keep locations away from pixel-grid kinks where bilinear sampling is not differentiable
    locs = (locs * 0.8 + 0.1).detach()
    inputs = (value.requires_grad_(), locs.requires_grad_(), attn.requires_grad_())
    fn = lambda v, l, a: msda(v, shapes, l, a, impl="cuda")  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("method", ["default", "discrete"])
def test_cuda_gradcheck_float64_per_level(method):
    value, locs, attn, shapes = random_case([(5, 6), (3, 2)], n=1, m=2, d=4, lq=5, points=(3, 1), dtype=torch.float64)
    locs = (locs * 0.8 + 0.1).detach()
    kw = dict(num_points_per_level=(3, 1), method=method)
    if method == "discrete":  # piecewise constant in the locations: check value and weights
        fn = lambda v, a: msda(v, shapes, locs, a, impl="cuda", **kw)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (value.requires_grad_(), attn.requires_grad_()), eps=1e-6, atol=1e-5)
        return
    fn = lambda v, l, a: msda(v, shapes, l, a, impl="cuda", **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (value.requires_grad_(), locs.requires_grad_(), attn.requires_grad_()),
                                    eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("d", [1, 4, 32, 64, 24])  # warp-group reduction, full-warp reduction, per-channel fallback
def test_cuda_backward_reductions_match_reference(d):
    value, locs, attn, shapes = random_case([(9, 7), (4, 5)], n=2, m=3, d=d, lq=37, p=3, dtype=torch.float64)
    grads = []
    for impl in ("pytorch", "cuda"):
        ins = [t.clone().requires_grad_() for t in (value, locs, attn)]
        msda(ins[0], shapes, ins[1], ins[2], impl=impl).pow(2).sum().backward()
        grads.append([t.grad for t in ins])
    for ref, got in zip(*grads):
        assert torch.allclose(got, ref, atol=1e-9, rtol=1e-7)


def test_auto_uses_the_kernel_for_cuda_tensors():
    assert msda_cuda.cuda_extension_usable()
    value, locs, attn, shapes = random_case([(8, 8), (4, 4)])
    assert torch.equal(msda(value, shapes, locs, attn, impl="auto"), msda(value, shapes, locs, attn, impl="cuda"))
