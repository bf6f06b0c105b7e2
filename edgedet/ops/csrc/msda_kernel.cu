// CUDA kernels for multi-scale deformable attention (see msda_kernel.cuh for layouts).
//
// Forward: one thread per output element (n, q, m, d) with d fastest, so the 32 threads of a
// warp read 32 consecutive channels of each bilinear corner (coalesced) and share the same
// sampling location and weight (broadcast loads).
#include "msda_kernel.cuh"

#include <cuda_fp16.h>

namespace edgedet {
namespace {

constexpr int kThreads = 256;

template <typename T> __device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename A, typename T> __device__ __forceinline__ A load(const T* p) { return static_cast<A>(to_float(*p)); }
template <> __device__ __forceinline__ double load<double, double>(const double* p) { return *p; }

template <typename T, typename A> __device__ __forceinline__ T store(A v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half store<__half, float>(float v) { return __float2half(v); }

// Bilinear sample of channel d at (h, w) in pixel coordinates of one level (zero outside).
// `base` points at value[n, level_start, m, 0]; rows of the map are W * M * D apart.
template <typename T, typename A>
__device__ A bilinear(const T* base, int height, int width, int row_stride, A h, A w) {
  const int h0 = static_cast<int>(floor(h));
  const int w0 = static_cast<int>(floor(w));
  const A lh = h - h0, lw = w - w0;
  const A hh = 1 - lh, hw = 1 - lw;
  A v00 = 0, v01 = 0, v10 = 0, v11 = 0;
  const bool top = h0 >= 0, bottom = h0 + 1 <= height - 1, left = w0 >= 0, right = w0 + 1 <= width - 1;
  if (top && left) v00 = load<A>(base + (h0 * width + w0) * row_stride);
  if (top && right) v01 = load<A>(base + (h0 * width + w0 + 1) * row_stride);
  if (bottom && left) v10 = load<A>(base + ((h0 + 1) * width + w0) * row_stride);
  if (bottom && right) v11 = load<A>(base + ((h0 + 1) * width + w0 + 1) * row_stride);
  return hh * hw * v00 + hh * lw * v01 + lh * hw * v10 + lh * lw * v11;
}

template <typename T, typename IndexT>
__global__ void msda_forward_kernel(const T* __restrict__ value, const IndexT* __restrict__ shapes,
                                    const IndexT* __restrict__ starts, const T* __restrict__ locs,
                                    const T* __restrict__ attn, T* __restrict__ out, MsdaDims dm, int64_t total) {
  using A = typename Acc<T>::type;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int d = idx % dm.head_dim;
    int64_t rest = idx / dm.head_dim;
    const int m = rest % dm.num_heads;
    rest /= dm.num_heads;
    const int q = rest % dm.num_queries;
    const int n = rest / dm.num_queries;
    const int row_stride = dm.num_heads * dm.head_dim;
    const T* value_n = value + static_cast<int64_t>(n) * dm.num_values * row_stride + m * dm.head_dim + d;
    const int64_t lp = static_cast<int64_t>(dm.num_levels) * dm.num_points;
    const int64_t wi0 = ((static_cast<int64_t>(n) * dm.num_queries + q) * dm.num_heads + m) * lp;
    A acc = 0;
    for (int l = 0; l < dm.num_levels; ++l) {
      const int height = static_cast<int>(shapes[2 * l]);
      const int width = static_cast<int>(shapes[2 * l + 1]);
      const T* base = value_n + static_cast<int64_t>(starts[l]) * row_stride;
      for (int p = 0; p < dm.num_points; ++p) {
        const int64_t wi = wi0 + l * dm.num_points + p;
        const A x = load<A>(locs + 2 * wi), y = load<A>(locs + 2 * wi + 1);
        const A h = y * height - A(0.5), w = x * width - A(0.5);
        if (h > -1 && w > -1 && h < height && w < width) {
          acc += load<A>(attn + wi) * bilinear<T, A>(base, height, width, row_stride, h, w);
        }
      }
    }
    out[((static_cast<int64_t>(n) * dm.num_queries + q) * dm.num_heads + m) * dm.head_dim + d] = store<T, A>(acc);
  }
}

__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }

// Backward: same thread layout. Each thread owns one channel d, scatters into grad_value and
// adds its channel's share of the location/weight gradients (summed over d by atomics).
template <typename T, typename IndexT>
__global__ void msda_backward_kernel(const T* __restrict__ value, const IndexT* __restrict__ shapes,
                                     const IndexT* __restrict__ starts, const T* __restrict__ locs,
                                     const T* __restrict__ attn, const T* __restrict__ grad_out,
                                     T* grad_value, T* grad_locs, T* grad_attn, MsdaDims dm, int64_t total) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int d = idx % dm.head_dim;
    int64_t rest = idx / dm.head_dim;
    const int m = rest % dm.num_heads;
    rest /= dm.num_heads;
    const int q = rest % dm.num_queries;
    const int n = rest / dm.num_queries;
    const int row_stride = dm.num_heads * dm.head_dim;
    const int64_t value_off = static_cast<int64_t>(n) * dm.num_values * row_stride + m * dm.head_dim + d;
    const T g = grad_out[((static_cast<int64_t>(n) * dm.num_queries + q) * dm.num_heads + m) * dm.head_dim + d];
    const int64_t lp = static_cast<int64_t>(dm.num_levels) * dm.num_points;
    const int64_t wi0 = ((static_cast<int64_t>(n) * dm.num_queries + q) * dm.num_heads + m) * lp;
    for (int l = 0; l < dm.num_levels; ++l) {
      const int height = static_cast<int>(shapes[2 * l]);
      const int width = static_cast<int>(shapes[2 * l + 1]);
      const int64_t level_off = value_off + static_cast<int64_t>(starts[l]) * row_stride;
      for (int p = 0; p < dm.num_points; ++p) {
        const int64_t wi = wi0 + l * dm.num_points + p;
        const T x = locs[2 * wi], y = locs[2 * wi + 1];
        const T h = y * height - T(0.5), w = x * width - T(0.5);
        if (!(h > -1 && w > -1 && h < height && w < width)) continue;
        const int h0 = static_cast<int>(floor(h)), w0 = static_cast<int>(floor(w));
        const T lh = h - h0, lw = w - w0, hh = 1 - lh, hw = 1 - lw;
        const T a = attn[wi];
        const int hs[2] = {h0, h0 + 1};
        const int ws[2] = {w0, w0 + 1};
        const T wy[2] = {hh, lh};
        const T wx[2] = {hw, lw};
        T sample = 0, grad_h = 0, grad_w = 0;
        for (int i = 0; i < 2; ++i) {
          for (int j = 0; j < 2; ++j) {
            if (hs[i] < 0 || hs[i] > height - 1 || ws[j] < 0 || ws[j] > width - 1) continue;
            const int64_t off = level_off + (static_cast<int64_t>(hs[i]) * width + ws[j]) * row_stride;
            const T v = value[off];
            sample += wy[i] * wx[j] * v;
            grad_h += (i == 0 ? -wx[j] : wx[j]) * v;  // d(wy)/dh = -1 for the top row, +1 for the bottom
            grad_w += (j == 0 ? -wy[i] : wy[i]) * v;
            atomic_add(grad_value + off, a * wy[i] * wx[j] * g);
          }
        }
        atomic_add(grad_attn + wi, g * sample);
        // h = y * H - 0.5 => dh/dy = H; likewise dw/dx = W.
        atomic_add(grad_locs + 2 * wi, g * a * grad_w * width);
        atomic_add(grad_locs + 2 * wi + 1, g * a * grad_h * height);
      }
    }
  }
}

int blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8);  // grid-stride loop covers the rest
}

}  // namespace

template <typename T, typename IndexT>
cudaError_t msda_forward(const T* value, const IndexT* spatial_shapes, const IndexT* level_start_index,
                         const T* sampling_locations, const T* attention_weights, T* output,
                         const MsdaDims& dims, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(dims.batch) * dims.num_queries * dims.num_heads * dims.head_dim;
  if (total == 0) return cudaSuccess;
  msda_forward_kernel<T, IndexT><<<blocks_for(total), kThreads, 0, stream>>>(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights, output, dims, total);
  return cudaGetLastError();
}

template <typename T, typename IndexT>
cudaError_t msda_backward(const T* value, const IndexT* spatial_shapes, const IndexT* level_start_index,
                          const T* sampling_locations, const T* attention_weights, const T* grad_output,
                          T* grad_value, T* grad_sampling_locations, T* grad_attention_weights,
                          const MsdaDims& dims, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(dims.batch) * dims.num_queries * dims.num_heads * dims.head_dim;
  if (total == 0) return cudaSuccess;
  msda_backward_kernel<T, IndexT><<<blocks_for(total), kThreads, 0, stream>>>(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output, grad_value,
      grad_sampling_locations, grad_attention_weights, dims, total);
  return cudaGetLastError();
}

#define EDGEDET_MSDA_FORWARD(T, I)                                                                   \
  template cudaError_t msda_forward<T, I>(const T*, const I*, const I*, const T*, const T*, T*, \
                                          const MsdaDims&, cudaStream_t);
#define EDGEDET_MSDA_BACKWARD(T, I)                                                                      \
  template cudaError_t msda_backward<T, I>(const T*, const I*, const I*, const T*, const T*, const T*, \
                                           T*, T*, T*, const MsdaDims&, cudaStream_t);

EDGEDET_MSDA_FORWARD(float, int32_t)
EDGEDET_MSDA_FORWARD(float, int64_t)
EDGEDET_MSDA_FORWARD(__half, int32_t)
EDGEDET_MSDA_FORWARD(__half, int64_t)
EDGEDET_MSDA_FORWARD(double, int64_t)
EDGEDET_MSDA_BACKWARD(float, int64_t)
EDGEDET_MSDA_BACKWARD(double, int64_t)

}  // namespace edgedet
