// Multi-scale deformable attention: CUDA kernels with a plain C++ launch API.
//
// The per-sample arithmetic lives in msda_sampling.h (host and device, tested on the CPU).
// This header includes no TensorRT or PyTorch headers on purpose: the PyTorch extension
// (msda_torch.cpp) and the TensorRT plugins (converters/tensorrt/plugins/msda/) are thin
// wrappers around these launchers, and `nvcc -c msda_kernel.cu` compiles anywhere.
//
// Layouts (row-major, contiguous), P_total = sum over levels of P_l:
//   value               [N, S, M, D]      S = sum over levels of H_l * W_l
//   spatial_shapes      [L, 2]            (H, W) per level
//   level_start_index   [L]               a level whose extent falls outside [0, S) is never
//                                         read: the forward output is then NaN (the caller,
//                                         e.g. msda_cuda.py, checks them before launching)
//   sampling_locations  [N, Lq, M, P_total, 2]  (x, y) in [0, 1], (0, 0) = top-left corner;
//                       level 0's points first, then level 1's, ... The uniform layout
//                       [N, Lq, M, L, P, 2] is the same memory with P_l = P.
//   attention_weights   [N, Lq, M, P_total]
//   output              [N, Lq, M * D]
// Methods:
//   kBilinear: bilinear, zero padding (grid_sample, align_corners=False at 2 * loc - 1).
//   kDiscrete: RT-DETRv2's nearest pixel: i = int(loc * size + 0.5) (truncation toward zero),
//              x and y both clamped to [0, H - 1] as the official code does (its quirk on
//              rectangular maps), x then also to [0, W - 1] so memory reads stay inside the map
//              (the official code would fail with an index error there). Gradients flow to the
//              value and the weights only (the index is piecewise constant in the location).
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "msda_sampling.h"  // MsdaDims, the point-count setters and the per-sample arithmetic

namespace edgedet {

// T (value, output): float, double, __half or __nv_bfloat16.
// C (locations, weights): T, or float when T is __half / __nv_bfloat16 (mixed precision:
//   half-precision values, float32 locations and weights, as autocast hands them over).
// Accumulation is in float (double for double).
// IndexT: int32_t (TensorRT) or int64_t (ONNX / PyTorch) for spatial_shapes and level_start_index.
template <typename T, typename C, typename IndexT>
cudaError_t msda_forward(const T* value, const IndexT* spatial_shapes, const IndexT* level_start_index,
                         const C* sampling_locations, const C* attention_weights, T* output, const MsdaDims& dims,
                         cudaStream_t stream);

// Gradients for training, accumulated in G (float, or double for double inputs) so that
// half-precision inputs lose nothing to half-precision atomics; the caller zeroes the three
// gradient buffers and casts them to the inputs' dtypes. The location and weight gradients of
// each (query, head, point) are reduced over the D channels inside a warp before one atomic
// (D a power of two or a multiple of 32; other D fall back to one atomic per channel).
template <typename T, typename C, typename IndexT, typename G>
cudaError_t msda_backward(const T* value, const IndexT* spatial_shapes, const IndexT* level_start_index,
                          const C* sampling_locations, const C* attention_weights, const T* grad_output,
                          G* grad_value, G* grad_sampling_locations, G* grad_attention_weights, const MsdaDims& dims,
                          cudaStream_t stream);

}  // namespace edgedet
