"""`cuda` implementation of the MSDA op: our CUDA kernel through a PyTorch extension.

The extension is compiled on first use with torch.utils.cpp_extension (needs CUDA and nvcc);
importing edgedet never builds or requires it. Sources: `csrc/msda_kernel.cu` (framework-free
kernels, shared with the TensorRT plugin) and `csrc/msda_torch.cpp` (binding).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from edgedet.ops.msda import Shapes, level_start_index_from_shapes, spatial_shapes_as_list
from edgedet.registry import MSDA_IMPLS

CSRC = Path(__file__).parent / "csrc"


@functools.lru_cache(maxsize=1)
def load_extension():
    """Compile (once, cached by torch in its extensions dir) and import the CUDA extension."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "MSDA impl 'cuda' needs a CUDA device; use impl='pytorch' (reference) or 'gather' on this machine"
        )
    from torch.utils.cpp_extension import load

    return load(
        name="edgedet_msda_cuda",
        sources=[str(CSRC / "msda_torch.cpp"), str(CSRC / "msda_kernel.cu")],
        extra_include_paths=[str(CSRC)],
        extra_cuda_cflags=["-O3", "-std=c++17"],
        verbose=False,
    )


class _MSDAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, shapes, starts, locs, attn):
        ext = load_extension()
        ctx.save_for_backward(value, shapes, starts, locs, attn)
        return ext.forward(value, shapes, starts, locs, attn)

    @staticmethod
    def backward(ctx, grad_out):
        value, shapes, starts, locs, attn = ctx.saved_tensors
        grad_value, grad_locs, grad_attn = load_extension().backward(value, shapes, starts, locs, attn, grad_out)
        return grad_value, None, None, grad_locs, grad_attn


@MSDA_IMPLS.register("cuda")
def msda_cuda(
    value: Tensor,
    spatial_shapes: Shapes,
    level_start_index: Optional[Tensor],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    if not value.is_cuda:
        raise RuntimeError("MSDA impl 'cuda' needs CUDA tensors; move the model to a GPU or use impl='pytorch'")
    dev = value.device
    shapes = torch.tensor(spatial_shapes_as_list(spatial_shapes), dtype=torch.int64, device=dev)
    if level_start_index is None:
        starts = torch.tensor(level_start_index_from_shapes(spatial_shapes), dtype=torch.int64, device=dev)
    else:
        starts = level_start_index.to(device=dev, dtype=torch.int64).contiguous()
    return _MSDAFunction.apply(
        value.contiguous(), shapes, starts, sampling_locations.contiguous(), attention_weights.contiguous()
    )
