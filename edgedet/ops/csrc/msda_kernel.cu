// CUDA kernels for multi-scale deformable attention (see msda_kernel.cuh for layouts and rules).
//
// Both kernels use one thread per output element (n, q, m, d) with d fastest, so the threads of
// a warp read consecutive channels of each sampled pixel (coalesced) and share one sampling
// location and weight (broadcast loads). In the backward pass the D threads of one (n, q, m)
// therefore hold partial location/weight gradients of the same point: they are summed with warp
// shuffles and written with one atomic per point instead of one per channel.
#include "msda_kernel.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace edgedet {
namespace {

constexpr int kThreads = 256;  // a multiple of 32: whole warps enter the shuffle reductions

// The arithmetic per output element is msda_forward_element / msda_backward_element
// (msda_sampling.h, shared with the host tests); these kernels only spread the elements over
// threads and add the gradients atomically.
template <typename T, typename C, typename IndexT>
__global__ void msda_forward_kernel(const T* __restrict__ value, const IndexT* __restrict__ shapes,
                                    const IndexT* __restrict__ starts, const C* __restrict__ locs,
                                    const C* __restrict__ attn, T* __restrict__ out, MsdaDims dm, int64_t total) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const MsdaElement e = msda_element(idx, dm);
    out[idx] = MsdaStore<T>::from(msda_forward_element(value + e.value_offset, shapes, starts, locs, attn,
                                                        e.first_point, dm));
  }
}

__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }

// Sum over the `width` lanes of each aligned lane group (width a power of two <= 32).
template <typename G>
__device__ __forceinline__ G group_sum(G v, int width) {
  for (int offset = width >> 1; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset, width);
  return v;
}

template <typename G>
struct AtomicValueGrad {
  G* grad;
  template <typename A> __device__ void operator()(int64_t offset, A amount) const {
    atomic_add(grad + offset, static_cast<G>(amount));
  }
};

// The location and weight gradients of one point: summed over the lane group, one atomic each.
template <typename G>
struct ReducedPointGrad {
  G* grad_locs;
  G* grad_attn;
  int reduce_width;  // 0 = no reduction (one atomic per channel), else the lane-group size
  bool active;
  bool discrete;
  template <typename A> __device__ void operator()(int64_t wi, A g_attn, A g_x, A g_y) const {
    G sa = static_cast<G>(g_attn), sx = static_cast<G>(g_x), sy = static_cast<G>(g_y);
    bool writer = active;
    if (reduce_width > 0) {
      sa = group_sum(sa, reduce_width);
      sx = group_sum(sx, reduce_width);
      sy = group_sum(sy, reduce_width);
      writer = active && (threadIdx.x % reduce_width) == 0;
    }
    if (writer) {
      atomic_add(grad_attn + wi, sa);
      if (!discrete) {
        atomic_add(grad_locs + 2 * wi, sx);
        atomic_add(grad_locs + 2 * wi + 1, sy);
      }
    }
  }
};

template <typename T, typename C, typename IndexT, typename G>
__global__ void msda_backward_kernel(const T* __restrict__ value, const IndexT* __restrict__ shapes,
                                     const IndexT* __restrict__ starts, const C* __restrict__ locs,
                                     const C* __restrict__ attn, const T* __restrict__ grad_out, G* grad_value,
                                     G* grad_locs, G* grad_attn, MsdaDims dm, int64_t total, int reduce_width) {
  using A = typename MsdaAcc<T>::type;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t padded = (total + blockDim.x - 1) / blockDim.x * blockDim.x;
  AtomicValueGrad<G> add_value{grad_value};
  // Every thread runs the same number of iterations (padded range), so whole warps reach the
  // shuffles together; threads past the end contribute zeros and touch no memory.
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < padded; idx += stride) {
    const bool active = idx < total;
    const int64_t safe = active ? idx : total - 1;
    const MsdaElement e = msda_element(safe, dm);
    const A g = active ? to_acc(grad_out[safe]) : A(0);
    ReducedPointGrad<G> add_point{grad_locs, grad_attn, reduce_width, active, dm.method == kDiscrete};
    msda_backward_element(value, e.value_offset, shapes, starts, locs, attn, e.first_point, dm, active, g, add_value,
                          add_point);
  }
}

int blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8);  // grid-stride loop covers the rest
}

// The lane-group size that holds whole (n, q, m) channel runs: D itself when it divides 32,
// a full warp when D is a multiple of 32 (then D / 32 atomics per point), else 0 (no reduction).
int reduce_width_for(int head_dim) {
  if (head_dim >= 32) return head_dim % 32 == 0 ? 32 : 0;
  return (32 % head_dim == 0) ? head_dim : 0;
}

}  // namespace

template <typename T, typename C, typename IndexT>
cudaError_t msda_forward(const T* value, const IndexT* spatial_shapes, const IndexT* level_start_index,
                         const C* sampling_locations, const C* attention_weights, T* output, const MsdaDims& dims,
                         cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(dims.batch) * dims.num_queries * dims.num_heads * dims.head_dim;
  if (total == 0) return cudaSuccess;
  if (dims.num_levels < 1 || dims.num_levels > kMsdaMaxLevels) return cudaErrorInvalidValue;
  msda_forward_kernel<T, C, IndexT><<<blocks_for(total), kThreads, 0, stream>>>(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights, output, dims, total);
  return cudaGetLastError();
}

template <typename T, typename C, typename IndexT, typename G>
cudaError_t msda_backward(const T* value, const IndexT* spatial_shapes, const IndexT* level_start_index,
                          const C* sampling_locations, const C* attention_weights, const T* grad_output,
                          G* grad_value, G* grad_sampling_locations, G* grad_attention_weights, const MsdaDims& dims,
                          cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(dims.batch) * dims.num_queries * dims.num_heads * dims.head_dim;
  if (total == 0) return cudaSuccess;
  if (dims.num_levels < 1 || dims.num_levels > kMsdaMaxLevels) return cudaErrorInvalidValue;
  msda_backward_kernel<T, C, IndexT, G><<<blocks_for(total), kThreads, 0, stream>>>(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output, grad_value,
      grad_sampling_locations, grad_attention_weights, dims, total, reduce_width_for(dims.head_dim));
  return cudaGetLastError();
}

#define EDGEDET_MSDA_FORWARD(T, C, I)                                                                  \
  template cudaError_t msda_forward<T, C, I>(const T*, const I*, const I*, const C*, const C*, T*, \
                                             const MsdaDims&, cudaStream_t);
#define EDGEDET_MSDA_BACKWARD(T, C, I, G)                                                                       \
  template cudaError_t msda_backward<T, C, I, G>(const T*, const I*, const I*, const C*, const C*, const T*, \
                                                 G*, G*, G*, const MsdaDims&, cudaStream_t);

// TensorRT (int32 or int64 indices; float, or half values with float locations/weights) and PyTorch (int64 indices, every dtype pair).
EDGEDET_MSDA_FORWARD(float, float, int32_t)
EDGEDET_MSDA_FORWARD(__half, float, int32_t)
EDGEDET_MSDA_FORWARD(float, float, int64_t)
EDGEDET_MSDA_FORWARD(double, double, int64_t)
EDGEDET_MSDA_FORWARD(__half, __half, int64_t)
EDGEDET_MSDA_FORWARD(__half, float, int64_t)
EDGEDET_MSDA_FORWARD(__nv_bfloat16, __nv_bfloat16, int64_t)
EDGEDET_MSDA_FORWARD(__nv_bfloat16, float, int64_t)
EDGEDET_MSDA_BACKWARD(float, float, int64_t, float)
EDGEDET_MSDA_BACKWARD(double, double, int64_t, double)
EDGEDET_MSDA_BACKWARD(__half, __half, int64_t, float)
EDGEDET_MSDA_BACKWARD(__half, float, int64_t, float)
EDGEDET_MSDA_BACKWARD(__nv_bfloat16, __nv_bfloat16, int64_t, float)
EDGEDET_MSDA_BACKWARD(__nv_bfloat16, float, int64_t, float)

}  // namespace edgedet
