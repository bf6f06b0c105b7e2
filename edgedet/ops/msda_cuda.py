"""`cuda` implementation of the MSDA op (our CUDA kernel) and the `auto` choice.

The extension comes from `setup.py` (built as `edgedet._msda_cuda` when the set-up machine has
CUDA PyTorch and nvcc) or, failing that, is compiled once on first use with
torch.utils.cpp_extension (cached in torch's extensions folder). Importing edgedet never builds
or requires it. Sources: `csrc/msda_kernel.cu` (framework-free kernels, shared with the TensorRT
plugin) and `csrc/msda_torch.cpp` (binding).

Dtype rules (mixed precision): `value` may be float32, float64, float16 or bfloat16; the output
has value's dtype. Locations and weights are used in float32 when value is float16/bfloat16
(autocast hands them over in float32; half-precision locations would move a sampling point by up
to 0.04 px on an 80-px map, so they are never rounded down to half), and in value's dtype
otherwise. Accumulation is in float32 (float64 for float64). Gradients come back in each input's
own dtype. See `coordinate_dtype`.
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from edgedet.ops.msda import (
    METHODS,
    Shapes,
    level_start_index_from_shapes,
    msda_pytorch,
    points_per_level_as_tuple,
    spatial_shapes_as_list,
)
from edgedet.registry import MSDA_IMPLS

log = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
SOURCES = (CSRC / "msda_torch.cpp", CSRC / "msda_kernel.cu")
EXTENSION_NAME = "edgedet_msda_cuda"
CUDA_FLAGS = ("-O3", "-std=c++17")
METHOD_CODES = {"default": 0, "discrete": 1}
VALUE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
MAX_LEVELS = 16  # kMsdaMaxLevels in msda_kernel.cuh


class CudaUnavailableError(RuntimeError):
    """The `cuda` MSDA implementation cannot run on this machine."""


def coordinate_dtype(value_dtype: torch.dtype, locations_dtype: torch.dtype, weights_dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernel reads locations and weights in (module docstring); TypeError if unsupported."""
    for name, dt in (("sampling_locations", locations_dtype), ("attention_weights", weights_dtype)):
        if not dt.is_floating_point:
            raise TypeError(f"MSDA impl 'cuda': {name} must be floating point, got {dt}")
    if value_dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if value_dtype in (torch.float32, torch.float64):
        return value_dtype
    raise TypeError(
        f"MSDA impl 'cuda' takes value in float32, float64, float16 or bfloat16, got {value_dtype}; cast it first"
    )


def check_cuda_inputs(value: Tensor, sampling_locations: Tensor, attention_weights: Tensor,
                      num_points: Sequence[int]) -> None:
    """Device and size checks the kernel relies on, as one-line errors saying what to do."""
    if not torch.cuda.is_available():
        raise CudaUnavailableError(
            "MSDA impl 'cuda' needs CUDA, which is missing here (CPU-only PyTorch or no GPU); "
            "use impl='pytorch' or 'gather', or impl='auto' to pick 'cuda' only for CUDA tensors"
        )
    devices = {t.device for t in (value, sampling_locations, attention_weights)}
    if len(devices) != 1 or not value.is_cuda:
        found = ", ".join(sorted(str(d) for d in devices))
        raise CudaUnavailableError(
            f"MSDA impl 'cuda' needs value, locations and weights on one CUDA device, got {found}; "
            "move the model and inputs to the GPU (model.cuda()) or use impl='pytorch'"
        )
    if len(num_points) > MAX_LEVELS:
        raise NotImplementedError(f"MSDA impl 'cuda' lacks support for more than {MAX_LEVELS} levels ({len(num_points)})")


def checked_levels(spatial_shapes: Shapes, level_start_index: Optional[Tensor], num_values: int,
                   num_levels: int) -> Tuple[List[Tuple[int, int]], List[int]]:
    """(H, W) per level and each level's first token, checked against value's S tokens before the
    kernel reads them (it trusts both). `level_start_index`, when given, must be the one the shapes
    imply, as the reference (`pytorch`) derives it. One device-to-host copy for CUDA tensors."""
    starts = None
    if isinstance(spatial_shapes, Tensor) and isinstance(level_start_index, Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[-1] != 2:
            raise ValueError(f"MSDA impl 'cuda': spatial_shapes must be [L, 2] (H, W) pairs, got {tuple(spatial_shapes.shape)}")
        n = spatial_shapes.numel()
        flat = torch.cat([spatial_shapes.reshape(-1).long(), level_start_index.reshape(-1).long().to(spatial_shapes.device)])
        flat = flat.tolist()
        shapes, starts = list(zip(flat[0:n:2], flat[1:n:2])), flat[n:]
    else:
        shapes = spatial_shapes_as_list(spatial_shapes)
        if level_start_index is not None:
            starts = [int(v) for v in torch.as_tensor(level_start_index).reshape(-1).tolist()]
    if len(shapes) != num_levels or any(h < 1 or w < 1 for h, w in shapes):
        raise ValueError(f"MSDA impl 'cuda': spatial_shapes {shapes} must hold {num_levels} positive (H, W) pairs, "
                         "one per level of the sampling points")
    covered = sum(h * w for h, w in shapes)
    if covered != num_values:
        raise ValueError(f"MSDA impl 'cuda': spatial_shapes {shapes} cover {covered} value tokens but value has "
                         f"S={num_values}; pass the (H, W) of the feature maps flattened into value")
    expected = level_start_index_from_shapes(shapes)
    if starts is not None and starts != expected:
        raise ValueError(f"MSDA impl 'cuda': level_start_index {starts} disagrees with spatial_shapes {shapes} "
                         f"(expected {expected}); pass None to derive it from the shapes")
    return shapes, expected


def prebuilt_extension():
    """The extension built by setup.py, or None."""
    try:
        from edgedet import _msda_cuda  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _msda_cuda


BUILD_DIR_ENV = "EDGEDET_CUDA_EXT_DIR"  # where the JIT build goes (default: torch's extension cache)


def jit_build_kwargs(build_directory: Optional[str] = None, verbose: bool = False) -> dict:
    """Arguments of torch.utils.cpp_extension.load for the JIT build (also used by scripts/gpu_check.sh)."""
    build_directory = build_directory or os.environ.get(BUILD_DIR_ENV) or None
    kwargs = dict(name=EXTENSION_NAME, sources=[str(s) for s in SOURCES], extra_include_paths=[str(CSRC)],
                  extra_cflags=["-O3", "-std=c++17"], extra_cuda_cflags=list(CUDA_FLAGS), verbose=verbose)
    if build_directory is not None:
        kwargs["build_directory"] = build_directory
    return kwargs


@functools.lru_cache(maxsize=1)
def load_extension():
    """The compiled extension: setup.py's build if present, else compiled once (cached) with nvcc."""
    if not torch.cuda.is_available():
        raise CudaUnavailableError(
            "MSDA impl 'cuda' needs CUDA, which is missing here (CPU-only PyTorch or no GPU); "
            "use impl='pytorch' or 'gather'"
        )
    ext = prebuilt_extension()
    if ext is not None:
        return ext
    from torch.utils.cpp_extension import CUDA_HOME, load

    if CUDA_HOME is None:
        raise CudaUnavailableError(
            "MSDA impl 'cuda' is not built and cannot be compiled: nvcc (the CUDA toolkit) was not found; "
            "install it and set CUDA_HOME, or use impl='pytorch'"
        )
    log.info("compiling the CUDA MSDA extension once with nvcc (cached by torch; a minute or two)")
    return load(**jit_build_kwargs())


class _MSDAFunction(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, value, shapes, starts, locs, attn, points, method):
        coord = coordinate_dtype(value.dtype, locs.dtype, attn.dtype)
        ctx.dtypes = (value.dtype, locs.dtype, attn.dtype)
        ctx.points, ctx.method = points, method
        value = value.contiguous()
        locs, attn = locs.to(coord).contiguous(), attn.to(coord).contiguous()
        ctx.save_for_backward(value, shapes, starts, locs, attn)
        return load_extension().forward(value, shapes, starts, locs, attn, list(points), METHOD_CODES[method])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        value, shapes, starts, locs, attn = ctx.saved_tensors
        grads = load_extension().backward(value, shapes, starts, locs, attn, grad_out.contiguous(), list(ctx.points),
                                          METHOD_CODES[ctx.method])
        g_value, g_locs, g_attn = (g.to(dt) for g, dt in zip(grads, ctx.dtypes))
        return g_value, None, None, g_locs, g_attn, None, None


def per_level_view(sampling_locations: Tensor, attention_weights: Tensor,
                   num_points_per_level) -> Tuple[Tensor, Tensor, Tuple[int, ...], bool]:
    """Both layouts as the kernel's per-level one: (locs [N,Lq,M,K,2], weights [N,Lq,M,K], counts, uniform)."""
    counts = points_per_level_as_tuple(num_points_per_level)
    if counts is not None:
        return sampling_locations, attention_weights, counts, False
    num_levels, num_points = sampling_locations.shape[3:5]
    return sampling_locations.flatten(3, 4), attention_weights.flatten(3, 4), (num_points,) * num_levels, True


@MSDA_IMPLS.register("cuda", methods=METHODS, per_level=True)
def msda_cuda(
    value: Tensor,
    spatial_shapes: Shapes,
    level_start_index: Optional[Tensor],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    num_points_per_level=None,
    method: str = "default",
) -> Tensor:
    if method not in METHOD_CODES:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    locs, attn, counts, _ = per_level_view(sampling_locations, attention_weights, num_points_per_level)
    if value.dim() != 4:
        raise ValueError(f"MSDA impl 'cuda': value must be [N, S, M, D], got {tuple(value.shape)}")
    # Before anything reaches the kernel, which reads every level at its start without bounds.
    level_shapes, level_starts = checked_levels(spatial_shapes, level_start_index, value.shape[1], len(counts))
    check_cuda_inputs(value, locs, attn, counts)
    coordinate_dtype(value.dtype, locs.dtype, attn.dtype)  # fail before building the extension
    dev = value.device
    shapes = torch.tensor(level_shapes, dtype=torch.int64, device=dev)
    starts = torch.tensor(level_starts, dtype=torch.int64, device=dev)
    return _MSDAFunction.apply(value, shapes, starts, locs, attn, counts, method)


@functools.lru_cache(maxsize=None)
def cuda_extension_usable() -> bool:
    """True when the CUDA extension is built or builds now; the outcome is logged once."""
    try:
        load_extension()
    except Exception as e:  # noqa: BLE001 (any build failure means: use the reference)
        log.warning("MSDA impl 'auto': the CUDA extension is unavailable (%s); using 'pytorch' for CUDA tensors",
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
        return False
    log.info("MSDA impl 'auto': using the CUDA kernel ('cuda') for CUDA tensors")
    return True


@MSDA_IMPLS.register("auto", methods=METHODS, per_level=True)
def msda_auto(
    value: Tensor,
    spatial_shapes: Shapes,
    level_start_index: Optional[Tensor],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    num_points_per_level=None,
    method: str = "default",
) -> Tensor:
    """`cuda` for CUDA tensors when the extension is built (or builds), `pytorch` otherwise."""
    fn = msda_cuda if value.is_cuda and cuda_extension_usable() else msda_pytorch
    return fn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
              num_points_per_level=num_points_per_level, method=method)
