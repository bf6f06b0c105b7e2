// Multi-scale deformable attention: CUDA kernels with a plain C++ launch API.
//
// This header includes no TensorRT or PyTorch headers on purpose: the PyTorch extension
// (msda_torch.cpp) and the TensorRT plugins (converters/tensorrt/plugins/msda/) are thin
// wrappers around these launchers, and `nvcc -c msda_kernel.cu` compiles anywhere.
//
// Layouts (row-major, contiguous):
//   value               [N, S, M, D]      S = sum over levels of H_l * W_l
//   spatial_shapes      [L, 2]            (H, W) per level
//   level_start_index   [L]
//   sampling_locations  [N, Lq, M, L, P, 2]  (x, y) in [0, 1], (0, 0) = top-left corner
//   attention_weights   [N, Lq, M, L, P]
//   output              [N, Lq, M * D]
// Sampling is bilinear with zero padding (grid_sample, align_corners=False).
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace edgedet {

struct MsdaDims {
  int batch;        // N
  int num_values;   // S
  int num_heads;    // M
  int head_dim;     // D
  int num_levels;   // L
  int num_queries;  // Lq
  int num_points;   // P
};

// T: float, __half or double (accumulation is float for half, T otherwise).
// IndexT: int32_t (TensorRT) or int64_t (ONNX / PyTorch) for spatial_shapes and level_start_index.
template <typename T, typename IndexT>
cudaError_t msda_forward(const T* value, const IndexT* spatial_shapes, const IndexT* level_start_index,
                         const T* sampling_locations, const T* attention_weights, T* output,
                         const MsdaDims& dims, cudaStream_t stream);

// Gradients for training. grad_value, grad_sampling_locations and grad_attention_weights are
// accumulated with atomics, so the caller must zero them first. T: float or double.
template <typename T, typename IndexT>
cudaError_t msda_backward(const T* value, const IndexT* spatial_shapes, const IndexT* level_start_index,
                          const T* sampling_locations, const T* attention_weights, const T* grad_output,
                          T* grad_value, T* grad_sampling_locations, T* grad_attention_weights,
                          const MsdaDims& dims, cudaStream_t stream);

}  // namespace edgedet
