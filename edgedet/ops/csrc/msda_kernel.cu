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

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(float v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <typename T> __device__ __forceinline__ T from_acc(double v) { return static_cast<T>(v); }

// loc * size + 0.5 rounded step by step (no fused multiply-add), as PyTorch evaluates it, so
// that the discrete index matches the official code at rounding boundaries.
__device__ __forceinline__ float scaled_half_up(float loc, int size) {
  return __fadd_rn(__fmul_rn(loc, static_cast<float>(size)), 0.5f);
}
__device__ __forceinline__ double scaled_half_up(double loc, int size) {
  return __dadd_rn(__dmul_rn(loc, static_cast<double>(size)), 0.5);
}

// The discrete method's pixel (see the header): truncate, clamp to [0, H-1], x also to W-1.
template <typename A>
__device__ __forceinline__ void discrete_pixel(A x, A y, int height, int width, int& px, int& py) {
  long long ix = static_cast<long long>(scaled_half_up(x, width));
  long long iy = static_cast<long long>(scaled_half_up(y, height));
  ix = ix < 0 ? 0 : (ix > height - 1 ? height - 1 : ix);
  iy = iy < 0 ? 0 : (iy > height - 1 ? height - 1 : iy);
  px = static_cast<int>(ix < width - 1 ? ix : width - 1);
  py = static_cast<int>(iy);
}

// Bilinear sample of one channel at (h, w) in pixel coordinates of one level (zero outside).
// `base` points at value[n, level_start, m, d]; pixels are M * D elements apart.
template <typename T, typename A>
__device__ __forceinline__ A bilinear(const T* base, int height, int width, int pixel_stride, A h, A w) {
  const int h0 = static_cast<int>(floor(h));
  const int w0 = static_cast<int>(floor(w));
  const A lh = h - h0, lw = w - w0;
  const A hh = 1 - lh, hw = 1 - lw;
  A v00 = 0, v01 = 0, v10 = 0, v11 = 0;
  const bool top = h0 >= 0, bottom = h0 + 1 <= height - 1, left = w0 >= 0, right = w0 + 1 <= width - 1;
  if (top && left) v00 = to_acc(base[static_cast<int64_t>(h0 * width + w0) * pixel_stride]);
  if (top && right) v01 = to_acc(base[static_cast<int64_t>(h0 * width + w0 + 1) * pixel_stride]);
  if (bottom && left) v10 = to_acc(base[static_cast<int64_t>((h0 + 1) * width + w0) * pixel_stride]);
  if (bottom && right) v11 = to_acc(base[static_cast<int64_t>((h0 + 1) * width + w0 + 1) * pixel_stride]);
  return hh * hw * v00 + hh * lw * v01 + lh * hw * v10 + lh * lw * v11;
}

template <typename T, typename C, typename IndexT>
__global__ void msda_forward_kernel(const T* __restrict__ value, const IndexT* __restrict__ shapes,
                                    const IndexT* __restrict__ starts, const C* __restrict__ locs,
                                    const C* __restrict__ attn, T* __restrict__ out, MsdaDims dm, int64_t total) {
  using A = typename Acc<T>::type;
  const int pixel_stride = dm.num_heads * dm.head_dim;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int d = idx % dm.head_dim;
    const int64_t nqm = idx / dm.head_dim;  // ((n * Lq + q) * M + m)
    const int m = nqm % dm.num_heads;
    const int n = nqm / (static_cast<int64_t>(dm.num_heads) * dm.num_queries);
    const T* value_n = value + static_cast<int64_t>(n) * dm.num_values * pixel_stride + m * dm.head_dim + d;
    int64_t wi = nqm * dm.num_points;
    A acc = 0;
    for (int l = 0; l < dm.num_levels; ++l) {
      const int height = static_cast<int>(shapes[2 * l]);
      const int width = static_cast<int>(shapes[2 * l + 1]);
      const T* base = value_n + static_cast<int64_t>(starts[l]) * pixel_stride;
      for (int p = 0; p < dm.points_per_level[l]; ++p, ++wi) {
        const A x = to_acc(locs[2 * wi]), y = to_acc(locs[2 * wi + 1]);
        const A a = to_acc(attn[wi]);
        if (dm.method == kDiscrete) {
          int px, py;
          discrete_pixel(x, y, height, width, px, py);
          acc += a * to_acc(base[static_cast<int64_t>(py * width + px) * pixel_stride]);
          continue;
        }
        const A h = y * height - A(0.5), w = x * width - A(0.5);
        if (h > -1 && w > -1 && h < height && w < width) {
          acc += a * bilinear<T, A>(base, height, width, pixel_stride, h, w);
        }
      }
    }
    out[idx] = from_acc<T>(acc);
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

// reduce_width: 0 = no reduction (one atomic per channel), else the lane-group size to sum over.
template <typename T, typename C, typename IndexT, typename G>
__global__ void msda_backward_kernel(const T* __restrict__ value, const IndexT* __restrict__ shapes,
                                     const IndexT* __restrict__ starts, const C* __restrict__ locs,
                                     const C* __restrict__ attn, const T* __restrict__ grad_out, G* grad_value,
                                     G* grad_locs, G* grad_attn, MsdaDims dm, int64_t total, int reduce_width) {
  using A = typename Acc<T>::type;
  const int pixel_stride = dm.num_heads * dm.head_dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t padded = (total + blockDim.x - 1) / blockDim.x * blockDim.x;
  // Every thread runs the same number of iterations (padded range), so whole warps reach the
  // shuffles together; threads past the end contribute zeros and touch no memory.
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < padded; idx += stride) {
    const bool active = idx < total;
    const int64_t safe = active ? idx : total - 1;
    const int d = safe % dm.head_dim;
    const int64_t nqm = safe / dm.head_dim;
    const int m = nqm % dm.num_heads;
    const int n = nqm / (static_cast<int64_t>(dm.num_heads) * dm.num_queries);
    const int64_t value_off = static_cast<int64_t>(n) * dm.num_values * pixel_stride + m * dm.head_dim + d;
    const A g = active ? to_acc(grad_out[safe]) : A(0);
    int64_t wi = nqm * dm.num_points;
    for (int l = 0; l < dm.num_levels; ++l) {
      const int height = static_cast<int>(shapes[2 * l]);
      const int width = static_cast<int>(shapes[2 * l + 1]);
      const int64_t level_off = value_off + static_cast<int64_t>(starts[l]) * pixel_stride;
      for (int p = 0; p < dm.points_per_level[l]; ++p, ++wi) {
        const A x = to_acc(locs[2 * wi]), y = to_acc(locs[2 * wi + 1]);
        const A a = to_acc(attn[wi]);
        A g_attn = 0, g_x = 0, g_y = 0;
        if (dm.method == kDiscrete) {
          int px, py;
          discrete_pixel(x, y, height, width, px, py);
          const int64_t off = level_off + static_cast<int64_t>(py * width + px) * pixel_stride;
          if (active) {
            g_attn = g * to_acc(value[off]);
            atomic_add(grad_value + off, static_cast<G>(a * g));
          }
        } else {
          const A h = y * height - A(0.5), w = x * width - A(0.5);
          if (active && h > -1 && w > -1 && h < height && w < width) {
            const int h0 = static_cast<int>(floor(h)), w0 = static_cast<int>(floor(w));
            const A lh = h - h0, lw = w - w0;
            const A wy[2] = {1 - lh, lh};
            const A wx[2] = {1 - lw, lw};
            A sample = 0, grad_h = 0, grad_w = 0;
            for (int i = 0; i < 2; ++i) {
              const int hi = h0 + i;
              if (hi < 0 || hi > height - 1) continue;
              for (int j = 0; j < 2; ++j) {
                const int wj = w0 + j;
                if (wj < 0 || wj > width - 1) continue;
                const int64_t off = level_off + static_cast<int64_t>(hi * width + wj) * pixel_stride;
                const A v = to_acc(value[off]);
                sample += wy[i] * wx[j] * v;
                grad_h += (i == 0 ? -wx[j] : wx[j]) * v;  // d(wy)/dh: -1 for the top row, +1 for the bottom
                grad_w += (j == 0 ? -wy[i] : wy[i]) * v;
                atomic_add(grad_value + off, static_cast<G>(a * wy[i] * wx[j] * g));
              }
            }
            g_attn = g * sample;
            // h = y * H - 0.5 => dh/dy = H; likewise dw/dx = W.
            g_x = g * a * grad_w * width;
            g_y = g * a * grad_h * height;
          }
        }
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
          if (dm.method != kDiscrete) {
            atomic_add(grad_locs + 2 * wi, sx);
            atomic_add(grad_locs + 2 * wi + 1, sy);
          }
        }
      }
    }
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

// TensorRT (int32 or int64 indices, float or half) and PyTorch (int64 indices, every dtype pair).
EDGEDET_MSDA_FORWARD(float, float, int32_t)
EDGEDET_MSDA_FORWARD(__half, __half, int32_t)
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
