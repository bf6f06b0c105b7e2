// Multi-scale deformable attention: the per-sample arithmetic, written once.
//
// Everything here is `__host__ __device__` under nvcc and plain inline C++ elsewhere, so the CUDA
// kernels (msda_kernel.cu, also the TensorRT plugin's kernel) and host builds run the same code:
// tests/csrc/msda_host.cpp compiles it with g++ (no CUDA headers), with g++ / nvcc -x c++ and
// cuda_fp16.h, and with nvcc -x cu, and tests/test_msda_host.py compares it with the `pytorch`
// implementation (edgedet/ops/msda.py). No CUDA runtime, TensorRT or PyTorch header is needed.
//
// Layouts and methods: see msda_kernel.cuh. 16-bit types: __half and __nv_bfloat16 come from
// cuda_fp16.h / cuda_bf16.h under nvcc, or on the host when EDGEDET_MSDA_CUDA_HALF is defined
// (their host conversions); a host build without them supplies its own 16-bit types and a
// `to_acc` overload for each, found by argument-dependent lookup. Host builds of the discrete
// method must not fuse multiply-adds (the host branch of msda_scaled_half_up keeps them apart).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#define EDGEDET_HD __host__ __device__ __forceinline__
// The callbacks of msda_backward_point are __device__ functors in the kernel and plain ones on the
// host; this keeps nvcc from checking a host instantiation that is never made.
#define EDGEDET_HD_CALLBACKS _Pragma("nv_exec_check_disable")
#else
#define EDGEDET_HD inline
#define EDGEDET_HD_CALLBACKS
#endif

#if defined(__CUDACC__) || defined(EDGEDET_MSDA_CUDA_HALF)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define EDGEDET_MSDA_HAS_CUDA_HALF 1
#endif

namespace edgedet {

constexpr int kMsdaMaxLevels = 16;

enum MsdaMethod : int { kBilinear = 0, kDiscrete = 1 };

struct MsdaDims {
  int batch;        // N
  int num_values;   // S
  int num_heads;    // M
  int head_dim;     // D
  int num_levels;   // L
  int num_queries;  // Lq
  int num_points;   // P_total = sum of points_per_level
  int points_per_level[kMsdaMaxLevels];
  int method;       // MsdaMethod
};

// Fill `points_per_level` with `points` for every level (the uniform layout); returns false
// when the level count is out of range.
inline bool msda_set_uniform_points(MsdaDims& d, int num_levels, int points) {
  if (num_levels < 1 || num_levels > kMsdaMaxLevels) return false;
  d.num_levels = num_levels;
  d.num_points = num_levels * points;
  for (int l = 0; l < kMsdaMaxLevels; ++l) d.points_per_level[l] = l < num_levels ? points : 0;
  return true;
}

// Per-level point counts; returns false when the level count is out of range or a count < 1.
inline bool msda_set_points(MsdaDims& d, int num_levels, const int64_t* points) {
  if (num_levels < 1 || num_levels > kMsdaMaxLevels) return false;
  d.num_levels = num_levels;
  d.num_points = 0;
  for (int l = 0; l < kMsdaMaxLevels; ++l) {
    const int p = l < num_levels ? static_cast<int>(points[l]) : 0;
    if (l < num_levels && p < 1) return false;
    d.points_per_level[l] = p;
    d.num_points += p;
  }
  return true;
}

// ---- Number types: accumulate in float (double for double), store in T. ----

template <typename T> struct MsdaAcc { using type = float; };
template <> struct MsdaAcc<double> { using type = double; };

EDGEDET_HD float to_acc(float v) { return v; }
EDGEDET_HD double to_acc(double v) { return v; }
#ifdef EDGEDET_MSDA_HAS_CUDA_HALF
EDGEDET_HD float to_acc(__half v) { return __half2float(v); }
EDGEDET_HD float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
#endif

template <typename T> struct MsdaStore {
  template <typename A> EDGEDET_HD static T from(A v) { return static_cast<T>(v); }
};
#ifdef EDGEDET_MSDA_HAS_CUDA_HALF
template <> struct MsdaStore<__half> {
  EDGEDET_HD static __half from(float v) { return __float2half(v); }  // round to nearest even
};
template <> struct MsdaStore<__nv_bfloat16> {
  EDGEDET_HD static __nv_bfloat16 from(float v) { return __float2bfloat16(v); }
};
#endif

EDGEDET_HD float msda_floor(float v) {
#ifdef __CUDA_ARCH__
  return floorf(v);
#else
  return std::floor(v);
#endif
}
EDGEDET_HD double msda_floor(double v) {
#ifdef __CUDA_ARCH__
  return ::floor(v);
#else
  return std::floor(v);
#endif
}

template <typename A> EDGEDET_HD A msda_nan() {
#ifdef __CUDA_ARCH__
  return static_cast<A>(__int_as_float(0x7fc00000));
#else
  return std::numeric_limits<A>::quiet_NaN();
#endif
}

// ---- One output element (n, q, m, d) of the [N, Lq, M * D] output, d fastest. ----

struct MsdaElement {
  int64_t value_offset;  // of value[n, 0, m, d]
  int64_t first_point;   // index of (n, q, m, point 0) in the [N, Lq, M, P_total] weights
};

EDGEDET_HD MsdaElement msda_element(int64_t idx, const MsdaDims& dm) {
  const int64_t d = idx % dm.head_dim;
  const int64_t nqm = idx / dm.head_dim;  // (n * Lq + q) * M + m
  const int64_t m = nqm % dm.num_heads;
  const int64_t n = nqm / (static_cast<int64_t>(dm.num_heads) * dm.num_queries);
  const int64_t pixel_stride = static_cast<int64_t>(dm.num_heads) * dm.head_dim;
  return {n * dm.num_values * pixel_stride + m * dm.head_dim + d, nqm * dm.num_points};
}

// A level whose (H, W, start) would read outside the S value tokens: the caller checks this for
// every level before reading it (garbage shapes then read nothing; the forward output is NaN).
template <typename IndexT>
EDGEDET_HD bool msda_level_ok(IndexT height, IndexT width, IndexT start, int64_t num_values) {
  const int64_t h = height, w = width, s = start;
  return h >= 1 && w >= 1 && h <= num_values && w <= num_values && s >= 0 && s + h * w <= num_values;
}

// loc * size + 0.5 rounded after each step (no fused multiply-add), as PyTorch evaluates it, so
// the discrete index matches the official code at rounding boundaries.
EDGEDET_HD float msda_scaled_half_up(float loc, int size) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(__fmul_rn(loc, static_cast<float>(size)), 0.5f);
#else
  volatile float scaled = loc * static_cast<float>(size);  // volatile: never contracted into an FMA
  return scaled + 0.5f;
#endif
}
EDGEDET_HD double msda_scaled_half_up(double loc, int size) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(__dmul_rn(loc, static_cast<double>(size)), 0.5);
#else
  volatile double scaled = loc * static_cast<double>(size);
  return scaled + 0.5;
#endif
}

// int64 truncation toward zero then clamping to [0, hi], computed without the cast's overflow:
// negatives, NaN and -inf give 0, values >= hi (and +inf) give hi.
template <typename A> EDGEDET_HD int msda_trunc_clamp(A s, int hi) {
  if (!(s >= A(0))) return 0;
  if (s >= static_cast<A>(hi)) return hi;
  return static_cast<int>(s);
}

// The discrete method's pixel: x and y both clamped to [0, H - 1] (upstream's rule, also for x),
// then x also to [0, W - 1] so reads stay inside the map.
template <typename A>
EDGEDET_HD void msda_discrete_pixel(A x, A y, int height, int width, int& px, int& py) {
  const int ix = msda_trunc_clamp(msda_scaled_half_up(x, width), height - 1);
  py = msda_trunc_clamp(msda_scaled_half_up(y, height), height - 1);
  px = ix < width - 1 ? ix : width - 1;
}

// Bilinear corners of location (x, y) on an H x W map: grid_sample's align_corners=False pixel
// coordinates, zero padding. Corner k = 2 * i + j is (h0 + i, w0 + j).
template <typename A> struct MsdaBilinear {
  bool inside;     // the point lies in (-1, H) x (-1, W) and reads at least one pixel
  int pixel[4];    // h * W + w of each corner, -1 where the corner is outside the map
  A weight[4];     // bilinear weights (they sum to 1)
  A d_h[4];        // d weight / d h (h = y * H - 0.5)
  A d_w[4];        // d weight / d w (w = x * W - 0.5)
};

template <typename A>
EDGEDET_HD MsdaBilinear<A> msda_bilinear(A x, A y, int height, int width) {
  MsdaBilinear<A> b{};
  const A h = y * height - A(0.5), w = x * width - A(0.5);
  b.inside = h > -1 && w > -1 && h < height && w < width;  // false for NaN too
  if (!b.inside) return b;
  const int h0 = static_cast<int>(msda_floor(h)), w0 = static_cast<int>(msda_floor(w));
  const A lh = h - h0, lw = w - w0;
  const A wy[2] = {1 - lh, lh};
  const A wx[2] = {1 - lw, lw};
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      const int k = 2 * i + j, hi = h0 + i, wj = w0 + j;
      const bool valid = hi >= 0 && hi <= height - 1 && wj >= 0 && wj <= width - 1;
      b.pixel[k] = valid ? hi * width + wj : -1;
      b.weight[k] = wy[i] * wx[j];
      b.d_h[k] = i == 0 ? -wx[j] : wx[j];
      b.d_w[k] = j == 0 ? -wy[i] : wy[i];
    }
  }
  return b;
}

// The forward value of one element: sum over levels and points of weight * sample.
// `value` points at value[n, 0, m, d]; pixels are M * D elements apart.
template <typename T, typename C, typename IndexT>
EDGEDET_HD typename MsdaAcc<T>::type msda_forward_element(const T* value, const IndexT* shapes, const IndexT* starts,
                                                          const C* locs, const C* attn, int64_t first_point,
                                                          const MsdaDims& dm) {
  using A = typename MsdaAcc<T>::type;
  const int64_t pixel_stride = static_cast<int64_t>(dm.num_heads) * dm.head_dim;
  int64_t wi = first_point;
  A acc = 0;
  for (int l = 0; l < dm.num_levels; ++l) {
    if (!msda_level_ok(shapes[2 * l], shapes[2 * l + 1], starts[l], dm.num_values)) return msda_nan<A>();
    const int height = static_cast<int>(shapes[2 * l]);
    const int width = static_cast<int>(shapes[2 * l + 1]);
    const T* base = value + static_cast<int64_t>(starts[l]) * pixel_stride;
    for (int p = 0; p < dm.points_per_level[l]; ++p, ++wi) {
      const A x = to_acc(locs[2 * wi]), y = to_acc(locs[2 * wi + 1]);
      const A a = to_acc(attn[wi]);
      if (dm.method == kDiscrete) {
        int px, py;
        msda_discrete_pixel(x, y, height, width, px, py);
        acc += a * to_acc(base[static_cast<int64_t>(py * width + px) * pixel_stride]);
        continue;
      }
      const MsdaBilinear<A> b = msda_bilinear(x, y, height, width);
      if (!b.inside) continue;
      A sample = 0;
      for (int k = 0; k < 4; ++k) {
        if (b.pixel[k] >= 0) sample += b.weight[k] * to_acc(base[static_cast<int64_t>(b.pixel[k]) * pixel_stride]);
      }
      acc += a * sample;
    }
  }
  return acc;
}

// The backward pass of one element with output gradient g: add_value(offset, amount) for each
// value element read (offset into value / grad_value), and add_point(point, g_attn, g_x, g_y)
// for EVERY point in order, also when `active` is false (then with zeros and no reads), so the
// kernel's lanes stay in step for their warp reductions. The discrete method has no location
// gradient (g_x = g_y = 0); a level outside the value tokens contributes nothing.
EDGEDET_HD_CALLBACKS
template <typename T, typename C, typename IndexT, typename ValueGrad, typename PointGrad>
EDGEDET_HD void msda_backward_element(const T* value, int64_t value_offset, const IndexT* shapes, const IndexT* starts,
                                      const C* locs, const C* attn, int64_t first_point, const MsdaDims& dm,
                                      bool active, typename MsdaAcc<T>::type g, ValueGrad& add_value,
                                      PointGrad& add_point) {
  using A = typename MsdaAcc<T>::type;
  const int64_t pixel_stride = static_cast<int64_t>(dm.num_heads) * dm.head_dim;
  int64_t wi = first_point;
  for (int l = 0; l < dm.num_levels; ++l) {
    const bool level_ok = msda_level_ok(shapes[2 * l], shapes[2 * l + 1], starts[l], dm.num_values);
    const int height = static_cast<int>(shapes[2 * l]);
    const int width = static_cast<int>(shapes[2 * l + 1]);
    const int64_t level_offset = value_offset + static_cast<int64_t>(starts[l]) * pixel_stride;
    for (int p = 0; p < dm.points_per_level[l]; ++p, ++wi) {
      A g_attn = 0, g_x = 0, g_y = 0;
      if (active && level_ok) {
        const A x = to_acc(locs[2 * wi]), y = to_acc(locs[2 * wi + 1]);
        const A a = to_acc(attn[wi]);
        if (dm.method == kDiscrete) {
          int px, py;
          msda_discrete_pixel(x, y, height, width, px, py);
          const int64_t off = level_offset + static_cast<int64_t>(py * width + px) * pixel_stride;
          g_attn = g * to_acc(value[off]);
          add_value(off, a * g);
        } else {
          const MsdaBilinear<A> b = msda_bilinear(x, y, height, width);
          if (b.inside) {
            A sample = 0, grad_h = 0, grad_w = 0;
            for (int k = 0; k < 4; ++k) {
              if (b.pixel[k] < 0) continue;
              const int64_t off = level_offset + static_cast<int64_t>(b.pixel[k]) * pixel_stride;
              const A v = to_acc(value[off]);
              sample += b.weight[k] * v;
              grad_h += b.d_h[k] * v;
              grad_w += b.d_w[k] * v;
              add_value(off, a * b.weight[k] * g);
            }
            g_attn = g * sample;
            // h = y * H - 0.5 => dh/dy = H; likewise dw/dx = W.
            g_x = g * a * grad_w * width;
            g_y = g * a * grad_h * height;
          }
        }
      }
      add_point(wi, g_attn, g_x, g_y);
    }
  }
}

}  // namespace edgedet
