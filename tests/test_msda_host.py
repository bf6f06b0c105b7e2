"""The CUDA MSDA kernel's per-sample arithmetic, run on the CPU against the `pytorch` implementation.

`edgedet/ops/csrc/msda_sampling.h` holds the arithmetic the kernels run per output element
(bilinear corners and their bounds, per-level point counts, the `discrete` pixel, 16-bit inputs
with float accumulation, the level range check). `tests/csrc/msda_host.cpp` loops over the
elements as the kernels do and is compiled here four ways (each skipped where its compiler is
missing): g++ without CUDA headers (software 16-bit types), g++ and `nvcc -x c++` with
cuda_fp16.h's host conversions, and `nvcc -x cu` (the `__host__ __device__` functions as nvcc
compiles them). Nothing here runs on a GPU.
"""
from __future__ import annotations

import ctypes
import math
import shutil

import pytest
import torch

from edgedet.ops import multi_scale_deformable_attention as msda
from host_build import KERNEL_DIR, TEST_CSRC, cached_build, cuda_home, files_under

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
METHOD_CODES = {"default": 0, "discrete": 1}
BUILDS = ("g++", "g++ cuda_fp16", "nvcc -x c++", "nvcc -x cu")
EXPECTED_BUILD = {"g++": "software;c++", "g++ cuda_fp16": "cuda_fp16;c++", "nvcc -x c++": "cuda_fp16;nvcc-c++",
                  "nvcc -x cu": "cuda_fp16;nvcc-cu"}
# 16-bit values, float32 locations and weights, float accumulation: the output differs from the
# float64 reference by the input rounding (values ~N(0, 1), weights summing to 1 per head) plus
# one rounding of the output. Measured worst case on these inputs: 4.5e-4 (fp16), 4.3e-3 (bf16).
HALF_TOL = {torch.float16: 1e-3, torch.bfloat16: 1e-2}


def build_command(kind: str):
    src = str(TEST_CSRC / "msda_host.cpp")
    common = ["-std=c++17", "-O2", "-shared", f"-I{KERNEL_DIR}", src, "-o", "{out}"]
    home = cuda_home()
    if kind == "g++":
        return None if shutil.which("g++") is None else ["g++", "-fPIC", "-Wall", "-Wextra", "-Werror", *common]
    if kind == "g++ cuda_fp16":
        if shutil.which("g++") is None or home is None:
            return None
        return ["g++", "-fPIC", "-Wall", "-Wextra", f"-I{home / 'include'}", "-DEDGEDET_MSDA_CUDA_HALF", *common]
    if shutil.which("nvcc") is None:
        return None
    lang = "c++" if kind == "nvcc -x c++" else "cu"
    extra = ["-DEDGEDET_MSDA_CUDA_HALF"] if lang == "c++" else []
    return ["nvcc", "-x", lang, "-Xcompiler", "-fPIC", *extra, *common]


class HostMsda:
    """ctypes front of one build of tests/csrc/msda_host.cpp; tensors are CPU torch tensors."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(str(path))
        self.lib.edgedet_msda_host_build.restype = ctypes.c_char_p
        self.build = self.lib.edgedet_msda_host_build().decode()

    @staticmethod
    def _layout(value, shapes, starts, locs, attn, points, index_dtype):
        n, s, m, d = value.shape
        lq = locs.shape[1]
        if points is None:  # uniform [N, Lq, M, L, P, 2] is the per-level layout with P on every level
            points = (locs.shape[4],) * locs.shape[3]
            locs, attn = locs.flatten(3, 4), attn.flatten(3, 4)
        shapes = torch.as_tensor(shapes).to(index_dtype).contiguous()
        if starts is None:
            starts = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.int64), shapes.prod(1)[:-1].long()]), 0)
        starts = torch.as_tensor(starts).to(index_dtype).contiguous()
        sizes = (ctypes.c_int64 * 5)(n, s, m, d, lq)
        counts = (ctypes.c_int64 * len(points))(*points)
        return shapes, starts, locs.contiguous(), attn.contiguous(), sizes, counts, len(points)

    def forward(self, value, shapes, locs, attn, points=None, method="default", starts=None, index_bits=64):
        index_dtype = torch.int64 if index_bits == 64 else torch.int32
        shapes, starts, locs, attn, sizes, counts, levels = self._layout(value, shapes, starts, locs, attn, points,
                                                                         index_dtype)
        value = value.contiguous()
        out = torch.empty(value.shape[0], locs.shape[1], value.shape[2] * value.shape[3], dtype=value.dtype)
        rc = self.lib.edgedet_msda_host_forward(
            DTYPE_CODES[value.dtype], DTYPE_CODES[locs.dtype], index_bits, *map(_ptr, (value, shapes, starts, locs, attn,
                                                                                   out)),
            sizes, levels, counts, METHOD_CODES[method])
        assert rc == 0, f"host forward returned {rc}"
        return out

    def backward(self, value, shapes, locs, attn, grad_out, points=None, method="default"):
        shapes, starts, locs_f, attn_f, sizes, counts, levels = self._layout(value, shapes, None, locs, attn, points,
                                                                             torch.int64)
        acc = torch.float64 if value.dtype == torch.float64 else torch.float32
        gv, gl, ga = (torch.zeros(t.shape, dtype=acc) for t in (value, locs, attn))
        rc = self.lib.edgedet_msda_host_backward(
            DTYPE_CODES[value.dtype], DTYPE_CODES[locs.dtype], 64,
            *map(_ptr, (value.contiguous(), shapes, starts, locs_f, attn_f, grad_out.contiguous(), gv, gl, ga)),
            sizes, levels, counts, METHOD_CODES[method])
        assert rc == 0, f"host backward returned {rc}"
        return gv, gl, ga


def _ptr(t: torch.Tensor):
    return ctypes.c_void_p(t.data_ptr())


@pytest.fixture(scope="session", params=BUILDS)
def host(request) -> HostMsda:
    command = build_command(request.param)
    if command is None:
        pytest.skip(f"{request.param}: compiler or CUDA headers not found")
    name = "msda-host-" + request.param.replace(" ", "-").replace("+", "p") + ".so"
    lib = HostMsda(cached_build(name, command, files_under(KERNEL_DIR, TEST_CSRC)))
    assert lib.build == EXPECTED_BUILD[request.param]
    return lib


def random_case(levels, n=2, m=3, d=8, lq=11, p=3, points=None, dtype=torch.float64, seed=0, lo=-0.3, hi=1.3):
    """Locations in [lo, hi]: some fall outside the map (zero padding) or on its border."""
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in levels)
    k = sum(points) if points else len(levels) * p
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64)
    locs = lo + (hi - lo) * torch.rand(n, lq, m, k, 2, generator=g, dtype=torch.float64)
    attn = torch.rand(n, lq, m, k, generator=g, dtype=torch.float64)
    attn = attn / attn.sum(-1, keepdim=True)
    if not points:
        locs, attn = locs.view(n, lq, m, len(levels), p, 2), attn.view(n, lq, m, len(levels), p)
    return value.to(dtype), locs.to(dtype), attn.to(dtype)


LEVEL_SETS = [[(8, 10), (4, 5)], [(7, 3), (1, 1), (2, 9)], [(6, 6), (3, 3), (2, 2), (1, 1)]]


@pytest.mark.parametrize("levels", LEVEL_SETS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_uniform_bilinear_matches_pytorch(host, levels, dtype, tol):
    value, locs, attn = random_case(levels, dtype=dtype)
    ref = msda(value, levels, locs, attn, impl="pytorch")
    for bits in (32, 64):  # TensorRT hands int32 shapes over, PyTorch int64
        assert torch.allclose(host.forward(value, levels, locs, attn, index_bits=bits), ref, atol=tol, rtol=0)


@pytest.mark.parametrize("method", ["default", "discrete"])
@pytest.mark.parametrize("levels,points", [([(8, 10), (4, 5), (2, 3)], (4, 3, 2)),  # wide maps
                                           ([(9, 4), (5, 2), (3, 1)], (1, 5, 2)),  # tall maps
                                           ([(6, 6)], (7,))])
def test_per_level_points_match_pytorch(host, levels, points, method):
    value, locs, attn = random_case(levels, points=points, dtype=torch.float32, seed=1)
    ref = msda(value, levels, locs, attn, impl="pytorch", num_points_per_level=points, method=method)
    out = host.forward(value, levels, locs, attn, points=points, method=method)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)


def test_uniform_discrete_matches_pytorch(host):
    levels = [(16, 20), (8, 10), (5, 3)]
    value, locs, attn = random_case(levels, dtype=torch.float32, seed=2)
    ref = msda(value, levels, locs, attn, impl="pytorch", method="discrete")
    assert torch.allclose(host.forward(value, levels, locs, attn, method="discrete"), ref, atol=1e-6, rtol=0)


def test_discrete_rounding_boundaries_match_pytorch(host):
    """Locations whose loc * size + 0.5 lands on (or one float step beside) an integer pick the
    pixel the float32 reference picks: no fused multiply-add moves them across."""
    levels, points = [(7, 9), (3, 5)], (6, 6)
    value, locs, attn = random_case(levels, points=points, dtype=torch.float32, seed=3)
    g = torch.Generator().manual_seed(3)
    for axis, sizes in ((0, [9.0] * 6 + [5.0] * 6), (1, [7.0] * 6 + [3.0] * 6)):  # x by W, y by H
        size = torch.tensor(sizes).expand(locs.shape[:-1])
        i = torch.randint(-1, 11, locs.shape[:-1], generator=g).float()
        edge = ((i - 0.5) / size).float()
        side = torch.randint(0, 3, edge.shape, generator=g)  # exact, one step down, one step up
        edge = torch.where(side == 1, torch.nextafter(edge, torch.tensor(-2.0)), edge)
        edge = torch.where(side == 2, torch.nextafter(edge, torch.tensor(2.0)), edge)
        locs[..., axis] = edge
    ref = msda(value, levels, locs, attn, impl="pytorch", num_points_per_level=points, method="discrete")
    out = host.forward(value, levels, locs, attn, points=points, method="discrete")
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("loc,expected_xy", [(math.nan, (0, 0)), (math.inf, (4, 4)), (-math.inf, (0, 0)),
                                             (1e30, (4, 4)), (-1e30, (0, 0))])
def test_discrete_saturates_where_the_int64_cast_would_overflow(host, loc, expected_xy):
    """Documented rule (edgedet/ops/msda.py): NaN reads pixel 0; beyond int64 the index saturates
    at the border (on this wide map x stops at H - 1: upstream clamps x to H - 1 too)."""
    levels = [(5, 8)]
    value = torch.randn(1, 40, 1, 4, dtype=torch.float32)
    locs = torch.full((1, 1, 1, 1, 1, 2), loc, dtype=torch.float32)
    attn = torch.ones(1, 1, 1, 1, 1, dtype=torch.float32)
    out = host.forward(value, levels, locs, attn, method="discrete")
    x, y = expected_xy
    assert torch.equal(out.view(4), value[0, y * 8 + x, 0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method,points", [("default", None), ("default", (4, 3, 2)), ("discrete", (4, 3, 2))])
def test_half_precision_values_accumulate_in_float(host, dtype, method, points):
    """16-bit values with float32 locations and weights (the mixed-precision rule): the output is
    the float32 computation on the upcast values, rounded once, and within HALF_TOL of float64."""
    levels = [(8, 10), (4, 5), (3, 2)]
    value64, locs64, attn64 = random_case(levels, points=points, seed=4)
    value = value64.to(dtype)
    locs, attn = locs64.float(), attn64.float()
    out = host.forward(value, levels, locs, attn, points=points, method=method)
    assert out.dtype == dtype
    in_float = host.forward(value.float(), levels, locs, attn, points=points, method=method)
    assert torch.equal(out, in_float.to(dtype))  # conversions exact, accumulation in float, one rounding
    ref = msda(value64, levels, locs64, attn64, impl="pytorch", num_points_per_level=points, method=method)
    err = (out.double() - ref).abs().max().item()
    assert err <= HALF_TOL[dtype], f"{dtype}: {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_locations_are_read_as_given(host, dtype):
    """Half-precision locations and weights (PyTorch's kernel path when the caller passes them)
    give the reference's result on those same rounded locations."""
    levels = [(8, 10), (4, 5)]
    value64, locs64, attn64 = random_case(levels, seed=5)
    value, locs, attn = value64.to(dtype), locs64.to(dtype), attn64.to(dtype)
    out = host.forward(value, levels, locs, attn)
    ref = msda(value.double(), levels, locs.double(), attn.double(), impl="pytorch")
    assert (out.double() - ref).abs().max().item() <= HALF_TOL[dtype] / 2


def _autograd_reference(levels, value, locs, attn, grad_out, points, method):
    value, locs, attn = (t.clone().requires_grad_(True) for t in (value, locs, attn))
    out = msda(value, levels, locs, attn, impl="pytorch", num_points_per_level=points, method=method)
    (out * grad_out).sum().backward()
    g_locs = locs.grad if locs.grad is not None else torch.zeros_like(locs)
    return value.grad, g_locs, attn.grad


@pytest.mark.parametrize("method,points", [("default", None), ("default", (4, 3, 2)), ("discrete", (4, 3, 2)),
                                           ("discrete", None)])
def test_backward_matches_autograd_float64(host, method, points):
    levels = [(8, 10), (4, 5), (3, 2)]
    value, locs, attn = random_case(levels, points=points, seed=6)
    grad_out = torch.randn(value.shape[0], locs.shape[1], value.shape[2] * value.shape[3], dtype=torch.float64)
    ref = _autograd_reference(levels, value, locs, attn, grad_out, points, method)
    got = host.backward(value, levels, locs, attn, grad_out, points=points, method=method)
    for name, g, r in zip(("value", "locations", "weights"), got, ref):
        assert torch.allclose(g, r, atol=1e-10, rtol=1e-10), f"{name}: {(g - r).abs().max():.2e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_backward_half_values_accumulate_in_float(host, dtype):
    levels = [(8, 10), (4, 5)]
    value64, locs64, attn64 = random_case(levels, seed=7)
    grad64 = torch.randn(value64.shape[0], locs64.shape[1], value64.shape[2] * value64.shape[3], dtype=torch.float64)
    value, grad = value64.to(dtype), grad64.to(dtype)
    got = host.backward(value, levels, locs64.float(), attn64.float(), grad)
    assert all(g.dtype == torch.float32 for g in got)  # float accumulators, whatever the input dtype
    ref = _autograd_reference(levels, value.double(), locs64, attn64, grad.double(), None, "default")
    for name, g, r in zip(("value", "locations", "weights"), got, ref):
        scale = r.abs().max().item()
        assert (g.double() - r).abs().max().item() <= 1e-5 * max(scale, 1.0), name


@pytest.mark.parametrize("shapes,starts", [([(8, 10), (4, 6)], None),  # 104 tokens for S = 100
                                           ([(8, 10), (4, 5)], [0, 81]),  # second level ends at 101
                                           ([(8, 10), (4, 5)], [-1, 80]),
                                           ([(8, 10), (0, 5)], None)])
def test_levels_outside_the_value_tokens_are_never_read(host, shapes, starts):
    """spatial_shapes / level_start_index that disagree with S: the kernel reads nothing outside
    the value tensor; the forward output is NaN (visible, never silently plausible) and such a
    level adds no gradient. (The PyTorch wrapper and the plugins refuse these before launching.)"""
    value, locs, attn = random_case([(8, 10), (4, 5)], dtype=torch.float32, seed=8)
    out = host.forward(value, shapes, locs, attn, starts=starts)
    assert torch.isnan(out).all()


def test_rejects_unknown_methods_and_type_combinations(host):
    value, locs, attn = random_case([(4, 4)], dtype=torch.float32)
    with pytest.raises(AssertionError, match="returned 1"):
        _raw_forward(host, method=7)
    with pytest.raises(AssertionError, match="returned 2"):
        host.forward(value.double(), [(4, 4)], locs, attn)  # float64 values need float64 locations


def _raw_forward(host, method):
    value, locs, attn = random_case([(4, 4)], dtype=torch.float32)
    shapes, starts = torch.tensor([[4, 4]]), torch.tensor([0])
    sizes, counts = (ctypes.c_int64 * 5)(2, 16, 3, 8, 11), (ctypes.c_int64 * 1)(3)
    out = torch.empty(2, 11, 24)
    rc = host.lib.edgedet_msda_host_forward(0, 0, 64, *map(_ptr, (value, shapes, starts, locs.contiguous(),
                                                               attn.contiguous(), out)), sizes, 1, counts, method)
    assert rc == 0, f"host forward returned {rc}"


def test_kernels_use_the_shared_arithmetic():
    """The CUDA file holds no second copy of the math: its kernels call the shared element functions."""
    kernel = (KERNEL_DIR / "msda_kernel.cu").read_text()
    assert "msda_forward_element(" in kernel and "msda_backward_element(" in kernel
    for copy in ("floor(", "scaled_half_up(", "discrete_pixel(", "__half2float", "__bfloat162float"):
        assert copy not in kernel, copy
