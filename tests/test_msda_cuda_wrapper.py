"""The `cuda` MSDA implementation's Python side, on a CPU: registration, errors, dtype rules,
the autograd wrapper (driven by a stand-in extension), `auto`, and the JIT build command."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from edgedet.ops import list_msda_impls, msda_cuda
from edgedet.ops import multi_scale_deformable_attention as msda
from edgedet.ops.msda import msda_pytorch

LEVELS = [(6, 7), (3, 4)]


def case(points=(3, 2), dtype=torch.float64, seed=0, per_level=True):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in LEVELS)
    value = torch.randn(2, s, 2, 4, generator=g, dtype=torch.float64)
    k = sum(points) if per_level else len(LEVELS) * points[0]
    locs = torch.rand(2, 5, 2, k, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1
    attn = torch.rand(2, 5, 2, k, generator=g, dtype=torch.float64)
    if not per_level:
        locs = locs.view(2, 5, 2, len(LEVELS), points[0], 2)
        attn = attn.view(2, 5, 2, len(LEVELS), points[0])
    return value.to(dtype), locs.to(dtype), attn.to(dtype)


def test_registry_lists_cuda_and_auto():
    assert {"pytorch", "gather", "cuda", "auto"} <= set(list_msda_impls())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_impl_without_cuda_says_cuda_is_missing():
    value, locs, attn = case(per_level=False, points=(2,))
    with pytest.raises(msda_cuda.CudaUnavailableError) as err:
        msda(value, LEVELS, locs, attn, impl="cuda")
    message = str(err.value)
    assert "CUDA" in message and "missing" in message and "\n" not in message
    assert "unknown" not in message.lower()
    with pytest.raises(msda_cuda.CudaUnavailableError, match="missing"):
        msda_cuda.load_extension.__wrapped__()


@pytest.mark.parametrize("value_dt,coord_dt,expected", [
    (torch.float16, torch.float32, torch.float32),   # autocast: half value, float32 locations/weights
    (torch.bfloat16, torch.float32, torch.float32),
    (torch.float16, torch.float16, torch.float32),   # half locations are read in float32, never rounded further
    (torch.bfloat16, torch.float64, torch.float32),
    (torch.float32, torch.float16, torch.float32),   # otherwise value's dtype
    (torch.float32, torch.float64, torch.float32),
    (torch.float64, torch.float32, torch.float64),
])
def test_coordinate_dtype_rules(value_dt, coord_dt, expected):
    assert msda_cuda.coordinate_dtype(value_dt, coord_dt, coord_dt) == expected


def test_coordinate_dtype_rejects_unsupported_dtypes_in_one_line():
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        msda_cuda.coordinate_dtype(torch.int32, torch.float32, torch.float32)
    with pytest.raises(TypeError, match="attention_weights must be floating point"):
        msda_cuda.coordinate_dtype(torch.float32, torch.float32, torch.int64)


class FakeExtension:
    """Plays the compiled extension on a CPU with the reference op, recording what it was given."""

    def __init__(self):
        self.calls = []

    def _ref(self, value, locs, attn, points, method):
        shapes = LEVELS
        return msda_pytorch(value, shapes, None, locs, attn, num_points_per_level=tuple(points),
                            method=["default", "discrete"][method])

    def forward(self, value, shapes, starts, locs, attn, points, method):
        self.calls.append(("forward", value.dtype, locs.dtype, attn.dtype, tuple(points), method))
        return self._ref(value.double(), locs.double(), attn.double(), points, method).to(value.dtype)

    def backward(self, value, shapes, starts, locs, attn, grad_out, points, method):
        self.calls.append(("backward", value.dtype, locs.dtype, attn.dtype, tuple(points), method))
        with torch.enable_grad():  # backward passes run with grad mode off
            v, l, a = (t.detach().double().requires_grad_() for t in (value, locs, attn))
            out = self._ref(v, l, a, points, method)
            grads = torch.autograd.grad(out, (v, l, a), grad_out.double(), allow_unused=True)
        acc = torch.float64 if value.dtype == torch.float64 else torch.float32
        return [(g if g is not None else torch.zeros_like(t)).to(acc) for g, t in zip(grads, (v, l, a))]


@pytest.mark.parametrize("value_dt", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("method", ["default", "discrete"])
def test_autograd_wrapper_casts_for_the_kernel_and_back(monkeypatch, value_dt, method):
    """Mixed dtypes as autocast gives them: the kernel sees float32 coordinates, grads come back per input."""
    fake = FakeExtension()
    monkeypatch.setattr(msda_cuda, "load_extension", lambda: fake)
    value, locs, attn = case()
    value = value.to(value_dt).requires_grad_()
    locs, attn = locs.float().requires_grad_(), attn.float().requires_grad_()
    shapes = torch.tensor(LEVELS)
    starts = torch.tensor([0, 42])
    out = msda_cuda._MSDAFunction.apply(value, shapes, starts, locs, attn, (3, 2), method)
    assert out.dtype == value_dt and out.shape == (2, 5, 8)
    out.float().square().sum().backward()
    assert [c[:4] for c in fake.calls] == [("forward", value_dt, torch.float32, torch.float32),
                                          ("backward", value_dt, torch.float32, torch.float32)]
    assert all(c[4:] == ((3, 2), msda_cuda.METHOD_CODES[method]) for c in fake.calls)
    assert value.grad.dtype == value_dt and locs.grad.dtype == torch.float32 and attn.grad.dtype == torch.float32
    # numerically the reference gradients (of the value as the kernel saw it)
    v, l, a = value.detach().double().requires_grad_(), locs.detach().double().requires_grad_(), attn.detach().double().requires_grad_()
    ref = msda_pytorch(v, LEVELS, None, l, a, num_points_per_level=(3, 2), method=method)
    ref.to(value_dt).float().square().sum().backward()
    tol = 0.1 if value_dt == torch.bfloat16 else 1e-5
    assert torch.allclose(attn.grad.double(), a.grad, atol=tol, rtol=tol)
    if method == "default":
        assert torch.allclose(locs.grad.double(), l.grad, atol=tol * 10, rtol=tol)
    else:
        assert not locs.grad.any()  # nearest pixel: no gradient to the locations


@pytest.mark.parametrize("per_level,method", [(False, "default"), (True, "default"), (True, "discrete")])
def test_auto_is_the_reference_on_cpu_tensors(per_level, method):
    value, locs, attn = case(per_level=per_level, points=(3, 2) if per_level else (3,), dtype=torch.float32)
    kwargs = dict(num_points_per_level=(3, 2) if per_level else None, method=method)
    ref = msda(value, LEVELS, locs, attn, impl="pytorch", **kwargs)
    assert torch.equal(msda(value, LEVELS, locs, attn, impl="auto", **kwargs), ref)


def test_cuda_rejects_an_unknown_method_before_anything_else():
    value, locs, attn = case()
    with pytest.raises(ValueError, match="method"):
        msda_cuda.msda_cuda(value, LEVELS, None, locs, attn, num_points_per_level=(3, 2), method="nearest")


def test_jit_build_command_names_existing_sources():
    kwargs = msda_cuda.jit_build_kwargs(build_directory="/tmp/x")
    assert kwargs["name"] == msda_cuda.EXTENSION_NAME and kwargs["build_directory"] == "/tmp/x"
    assert all(p.endswith((".cpp", ".cu")) and Path(p).is_file() for p in kwargs["sources"])
    assert "-std=c++17" in kwargs["extra_cuda_cflags"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_torch_binding_compiles_against_torch_headers(tmp_path):
    """The binding's C++ against the installed torch's headers (syntax only: no CUDA libraries here)."""
    from sysconfig import get_paths

    from torch.utils.cpp_extension import CUDA_HOME, include_paths

    cuda_home = CUDA_HOME or "/usr/local/cuda"
    if not (Path(cuda_home) / "include" / "cuda_runtime.h").is_file():
        pytest.skip("CUDA headers not found")
    # CPU wheels of torch lack this generated header of the CUDA build; it only sets export macros.
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    cmd = ["g++", "-std=c++17", "-fsyntax-only", f"-I{tmp_path}", f"-I{get_paths()['include']}",
           f"-I{cuda_home}/include", f"-I{msda_cuda.CSRC}", f"-DTORCH_EXTENSION_NAME={msda_cuda.EXTENSION_NAME}"]
    cmd += [f"-I{p}" for p in include_paths()] + [str(msda_cuda.CSRC / "msda_torch.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("shapes,starts,match", [
    ([(6, 7), (3, 5)], None, r"cover 57 value tokens but value has S=54"),
    ([(6, 7)], None, r"must hold 2 positive \(H, W\) pairs"),
    ([(6, 7), (0, 4)], None, r"must hold 2 positive"),
    (LEVELS, [0, 43], r"level_start_index \[0, 43\] disagrees with spatial_shapes .* \(expected \[0, 42\]\)"),
    (LEVELS, [0], r"level_start_index \[0\] disagrees"),
])
@pytest.mark.parametrize("as_tensors", [False, True])
def test_cuda_checks_levels_against_the_value_before_the_kernel(monkeypatch, shapes, starts, match, as_tensors):
    """The kernel reads each level at its start without bounds: bad shapes or starts are refused
    first, in one line, whatever device is present (the stand-in extension must not be reached)."""
    fake = FakeExtension()
    monkeypatch.setattr(msda_cuda, "load_extension", lambda: fake)
    value, locs, attn = case()
    if as_tensors:
        shapes = torch.tensor(shapes)
        starts = None if starts is None else torch.tensor(starts)
    with pytest.raises(ValueError, match=match) as info:
        msda_cuda.msda_cuda(value, shapes, starts, locs, attn, num_points_per_level=(3, 2))
    assert "\n" not in str(info.value) and not fake.calls


def test_cuda_takes_matching_level_starts_and_passes_the_derived_ones(monkeypatch):
    """Correct levels get past the check to the CUDA checks (no GPU here: CudaUnavailableError)."""
    value, locs, attn = case()
    shapes, starts = msda_cuda.checked_levels(torch.tensor(LEVELS), torch.tensor([0, 42]), 54, 2)
    assert shapes == LEVELS and starts == [0, 42]
    assert msda_cuda.checked_levels(LEVELS, None, 54, 2) == (LEVELS, [0, 42])
    if not torch.cuda.is_available():
        with pytest.raises(msda_cuda.CudaUnavailableError):
            msda_cuda.msda_cuda(value, LEVELS, torch.tensor([0, 42]), locs, attn, num_points_per_level=(3, 2))


@pytest.mark.parametrize("name,kw", [
    ("rtdetr", dict(encoder_hidden_dim=32, hidden_dim=32, nheads=4, encoder_nhead=2, encoder_dim_feedforward=64,
                    dim_feedforward=64, dec_layers=1, num_queries=10, num_points=[3, 2, 1], num_denoising=0)),
    ("dfine", dict(encoder_hidden_dim=32, encoder_nhead=2, encoder_dim_feedforward=64, hidden_dim=32,
                   feat_channels=[32, 32], nheads=4, dim_feedforward=64, dec_layers=1, num_queries=10,
                   num_points=[3, 2], num_denoising=0)),
])
def test_rtdetr_and_dfine_default_to_auto_which_runs_the_reference_on_cpu(monkeypatch, name, kw):
    """GPU training uses the kernel by default; on CPU tensors `auto` never asks for the extension."""
    from edgedet import create_model

    def no_extension():
        raise AssertionError("auto looked for the CUDA extension for CPU tensors")

    monkeypatch.setattr(msda_cuda, "cuda_extension_usable", no_extension)
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **kw).eval()
    assert model.config.msda_impl == "auto"
    impls = {m.impl for m in model.modules() if hasattr(m, "impl") and isinstance(m.impl, str)}
    assert impls == {"auto"}
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
        for m in model.modules():
            if hasattr(m, "impl") and isinstance(m.impl, str):
                m.impl = "pytorch"
        ref = model(images)
    assert torch.equal(out["pred_logits"], ref["pred_logits"]) and torch.equal(out["pred_boxes"], ref["pred_boxes"])
