// Host build of the MSDA kernels' per-sample arithmetic (edgedet/ops/csrc/msda_sampling.h), for
// tests/test_msda_host.py (through ctypes). The loops below visit the output elements the way the
// CUDA kernels spread them over threads, and call the same msda_forward_element /
// msda_backward_element; the atomics become plain additions.
//
// Builds: g++ (software 16-bit types below), g++ or nvcc -x c++ with -DEDGEDET_MSDA_CUDA_HALF and
// the CUDA include directory (cuda_fp16.h's host conversions), nvcc -x cu (the __host__ __device__
// functions as nvcc compiles them).
#include <cmath>
#include <cstdint>
#include <cstring>

#include "msda_sampling.h"

namespace edgedet {
namespace host {

#ifdef EDGEDET_MSDA_HAS_CUDA_HALF
using Half = __half;
using BFloat16 = __nv_bfloat16;
constexpr char const* kHalfTypes = "cuda_fp16";
#else
constexpr char const* kHalfTypes = "software";

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// IEEE binary16, converted with round-to-nearest-even like __float2half.
struct Half {
  uint16_t bits;
  Half() = default;
  explicit Half(float f) {
    const uint32_t x = float_bits(f);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) {
      bits = sign | 0x7e00u;  // NaN
    } else if (ax >= 0x477ff000u) {
      bits = sign | 0x7c00u;  // rounds past 65504: infinity
    } else if (ax < 0x38800000u) {
      // below 2^-14: a subnormal half, in units of 2^-24 (the scaling is exact)
      bits = sign | static_cast<uint16_t>(std::nearbyint(bits_float(ax) * 16777216.0f));
    } else {
      uint32_t r = ax - 0x38000000u;  // rebias the exponent (127 - 15) << 23
      r += 0x0fffu + ((r >> 13) & 1u);
      bits = sign | static_cast<uint16_t>(r >> 13);
    }
  }
};
inline float to_acc(Half h) {
  const uint32_t sign = (h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu, mant = h.bits & 0x3ffu;
  if (exp == 0) {
    const float f = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -f : f;
  }
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// bfloat16: the top half of a float, rounded to nearest even like __float2bfloat16.
struct BFloat16 {
  uint16_t bits;
  BFloat16() = default;
  explicit BFloat16(float f) {
    const uint32_t x = float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
      bits = static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
    } else {
      bits = static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    }
  }
};
inline float to_acc(BFloat16 b) { return bits_float(static_cast<uint32_t>(b.bits) << 16); }
#endif

using edgedet::to_acc;  // float and double, beside the overloads above

static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2, "16-bit storage types");

template <typename G>
struct ValueGrad {
  G* grad;
  template <typename A> void operator()(int64_t offset, A amount) { grad[offset] += static_cast<G>(amount); }
};

template <typename G>
struct PointGrad {
  G* grad_locs;
  G* grad_attn;
  bool discrete;
  template <typename A> void operator()(int64_t wi, A g_attn, A g_x, A g_y) {
    grad_attn[wi] += static_cast<G>(g_attn);
    if (!discrete) {
      grad_locs[2 * wi] += static_cast<G>(g_x);
      grad_locs[2 * wi + 1] += static_cast<G>(g_y);
    }
  }
};

int64_t total_elements(MsdaDims const& dm) {
  return static_cast<int64_t>(dm.batch) * dm.num_queries * dm.num_heads * dm.head_dim;
}

template <typename T, typename C, typename I>
void forward(void const* value, void const* shapes, void const* starts, void const* locs, void const* attn, void* out,
             MsdaDims const& dm) {
  auto const* v = static_cast<T const*>(value);
  auto* o = static_cast<T*>(out);
  for (int64_t idx = 0; idx < total_elements(dm); ++idx) {
    const MsdaElement e = msda_element(idx, dm);
    o[idx] = MsdaStore<T>::from(msda_forward_element(v + e.value_offset, static_cast<I const*>(shapes),
                                                     static_cast<I const*>(starts), static_cast<C const*>(locs),
                                                     static_cast<C const*>(attn), e.first_point, dm));
  }
}

template <typename T, typename C, typename I, typename G>
void backward(void const* value, void const* shapes, void const* starts, void const* locs, void const* attn,
              void const* grad_out, void* grad_value, void* grad_locs, void* grad_attn, MsdaDims const& dm) {
  auto const* g = static_cast<T const*>(grad_out);
  ValueGrad<G> add_value{static_cast<G*>(grad_value)};
  PointGrad<G> add_point{static_cast<G*>(grad_locs), static_cast<G*>(grad_attn), dm.method == kDiscrete};
  for (int64_t idx = 0; idx < total_elements(dm); ++idx) {
    const MsdaElement e = msda_element(idx, dm);
    msda_backward_element(static_cast<T const*>(value), e.value_offset, static_cast<I const*>(shapes),
                          static_cast<I const*>(starts), static_cast<C const*>(locs), static_cast<C const*>(attn),
                          e.first_point, dm, true, to_acc(g[idx]), add_value, add_point);
  }
}

struct ForwardRun {
  void const *value, *shapes, *starts, *locs, *attn;
  void* out;
  MsdaDims const& dm;
  template <typename T, typename C, typename I> void run() { forward<T, C, I>(value, shapes, starts, locs, attn, out, dm); }
};

struct BackwardRun {
  void const *value, *shapes, *starts, *locs, *attn, *grad_out;
  void *gv, *gl, *ga;
  MsdaDims const& dm;
  template <typename T, typename C, typename I> void run() {
    using G = typename MsdaAcc<T>::type;
    backward<T, C, I, G>(value, shapes, starts, locs, attn, grad_out, gv, gl, ga, dm);
  }
};

// dtype codes shared with the Python side
enum : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

bool make_dims(int64_t const* sizes, int num_levels, int64_t const* points, int method, MsdaDims& dm) {
  dm = MsdaDims{};
  dm.batch = static_cast<int>(sizes[0]);
  dm.num_values = static_cast<int>(sizes[1]);
  dm.num_heads = static_cast<int>(sizes[2]);
  dm.head_dim = static_cast<int>(sizes[3]);
  dm.num_queries = static_cast<int>(sizes[4]);
  dm.method = method;
  return (method == kBilinear || method == kDiscrete) && msda_set_points(dm, num_levels, points);
}

// Calls f.template run<T, C, I>() for the supported type combination, or returns 2.
template <typename F>
int dispatch(int value_type, int coord_type, int index_bits, F&& f) {
  auto with_index = [&](auto t, auto c) -> int {
    using T = decltype(t);
    using C = decltype(c);
    if (index_bits == 32) return f.template run<T, C, int32_t>(), 0;
    if (index_bits == 64) return f.template run<T, C, int64_t>(), 0;
    return 2;
  };
  switch (value_type) {
    case kF32: return coord_type == kF32 ? with_index(float{}, float{}) : 2;
    case kF64: return coord_type == kF64 ? with_index(double{}, double{}) : 2;
    case kF16:
      if (coord_type == kF32) return with_index(Half{}, float{});
      return coord_type == kF16 ? with_index(Half{}, Half{}) : 2;
    case kBF16:
      if (coord_type == kF32) return with_index(BFloat16{}, float{});
      return coord_type == kBF16 ? with_index(BFloat16{}, BFloat16{}) : 2;
    default: return 2;
  }
}

}  // namespace host
}  // namespace edgedet

using namespace edgedet;
using namespace edgedet::host;

extern "C" {

// "<16-bit types>;<compiler>": what this build is, so a test can check it got the build it asked for.
char const* edgedet_msda_host_build() {
#if defined(__CUDACC__)
  static char const* compiler = "nvcc-cu";
#elif defined(__NVCC__)
  static char const* compiler = "nvcc-c++";
#else
  static char const* compiler = "c++";
#endif
  static char buf[64];
  std::strcpy(buf, kHalfTypes);
  std::strcat(buf, ";");
  std::strcat(buf, compiler);
  return buf;
}

// sizes = (N, S, M, D, Lq); 0 on success, 1 on bad dims or method, 2 on an unsupported type combination.
int edgedet_msda_host_forward(int value_type, int coord_type, int index_bits, void const* value, void const* shapes,
                              void const* starts, void const* locs, void const* attn, void* out, int64_t const* sizes,
                              int num_levels, int64_t const* points, int method) {
  MsdaDims dm;
  if (!make_dims(sizes, num_levels, points, method, dm)) return 1;
  ForwardRun run{value, shapes, starts, locs, attn, out, dm};
  return dispatch(value_type, coord_type, index_bits, run);
}

// Gradients accumulate into zeroed float64 buffers for float64 inputs, float32 ones otherwise.
int edgedet_msda_host_backward(int value_type, int coord_type, int index_bits, void const* value, void const* shapes,
                               void const* starts, void const* locs, void const* attn, void const* grad_out,
                               void* grad_value, void* grad_locs, void* grad_attn, int64_t const* sizes, int num_levels,
                               int64_t const* points, int method) {
  MsdaDims dm;
  if (!make_dims(sizes, num_levels, points, method, dm)) return 1;
  BackwardRun run{value, shapes, starts, locs, attn, grad_out, grad_value, grad_locs, grad_attn, dm};
  return dispatch(value_type, coord_type, index_bits, run);
}

}  // extern "C"
