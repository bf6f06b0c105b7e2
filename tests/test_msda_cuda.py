"""The CUDA MSDA kernel through its PyTorch extension (impl="cuda"); needs a GPU.

On a CPU-only machine every test here is skipped; `edgedet` imports and the op's other
implementations work without the extension.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgedet.ops import multi_scale_deformable_attention as msda

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def random_case(levels, n=2, m=4, d=16, lq=50, p=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in levels)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64)
    locs = torch.rand(n, lq, m, len(levels), p, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1
    attn = torch.rand(n, lq, m, len(levels), p, generator=g, dtype=torch.float64)
    attn = (attn / attn.sum((-1, -2), keepdim=True))
    shapes = torch.tensor(levels, dtype=torch.int64)
    return [t.to(dtype).cuda() for t in (value, locs, attn)] + [shapes.cuda()]


@pytest.mark.parametrize("levels", [[(16, 20), (8, 10), (4, 5)], [(7, 3), (1, 1)], [(64, 64), (32, 32), (16, 16), (8, 8)]])
def test_cuda_matches_reference_fp32(levels):
    value, locs, attn, shapes = random_case(levels)
    ref = msda(value, shapes, locs, attn, impl="pytorch")
    out = msda(value, shapes, locs, attn, impl="cuda")
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)


def test_cuda_matches_reference_fp16():
    value, locs, attn, shapes = random_case([(16, 20), (8, 10)], dtype=torch.float32)
    ref = msda(value, shapes, locs, attn, impl="pytorch")
    out = msda(value.half(), shapes, locs.half(), attn.half(), impl="cuda").float()
    assert (out - ref).abs().max().item() < 1e-3 * max(1.0, ref.abs().max().item())


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
