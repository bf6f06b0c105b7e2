// CPU kernel: one task per block of (batch, query) rows. Per row, pass 1 computes the corner
// tokens and weights of all M * L * P samples at once (vectorised over samples); pass 2 lets
// every head accumulate its L * P samples into a D-vector held in registers. The four corners of
// a sample are contiguous D-vectors of value ([N, S, M, D] layout), so pass 2 is a multiply-add
// over D in vector registers. Instruction sets are chosen at run time (target attributes +
// cpuid), so one portable -O3 build still uses AVX2/AVX-512 where present.
#include "msda_kernel.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "openvino/core/parallel.hpp"

#if !defined(__GNUC__)
#    error "msda_kernel.cpp needs GCC or Clang (vector extensions and target attributes)"
#endif
#define EDGEDET_ALWAYS_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__) || defined(__i386__)
#    define EDGEDET_X86_DISPATCH 1
#else
#    define EDGEDET_X86_DISPATCH 0  // e.g. aarch64 (Jetson): the portable build vectorises with NEON
#endif

namespace edgedet {
namespace {

// Small fixed-width float vector (GCC/Clang vector extension): the compiler maps it onto
// SSE/AVX/AVX-512/NEON registers of the function's target.
template <int VW>
struct Vec {
    typedef float type __attribute__((vector_size(VW * sizeof(float))));
};

template <int VW>
EDGEDET_ALWAYS_INLINE typename Vec<VW>::type load_vec(const float* p) {
    typename Vec<VW>::type v;
    std::memcpy(&v, p, sizeof(v));  // unaligned load
    return v;
}

// Level geometry per sample of a query, k = m * K + (offset of level l) + p; the same for every query.
struct SampleGeometry {
    std::vector<float> width, height, start, x_limit;  // floats: the locate loop stays in one type
    explicit SampleGeometry(const MsdaProblem& pb) {
        for (size_t m = 0; m < pb.heads; ++m)
            for (size_t l = 0; l < pb.levels; ++l)
                for (int64_t p = 0; p < pb.points[l]; ++p) {
                    width.push_back(static_cast<float>(pb.widths[l]));
                    height.push_back(static_cast<float>(pb.heights[l]));
                    start.push_back(static_cast<float>(pb.level_starts[l]));
                    // discrete: upstream clamps x by H - 1; W - 1 as well keeps tall maps in range
                    x_limit.push_back(static_cast<float>(std::min(pb.heights[l], pb.widths[l]) - 1));
                }
    }
};

// Bilinear corners of every sample of one query: token index and weight of each corner
// (weight 0 for corners in the padding, whose index is clamped to a valid token).
struct QueryCorners {
    std::vector<int32_t> t00, t10, t01, t11;
    std::vector<float> w00, w10, w01, w11;
    explicit QueryCorners(size_t k) : t00(k), t10(k), t01(k), t11(k), w00(k), w10(k), w01(k), w11(k) {}
};

// NaN-safe clamp by value (NaN -> lo); plain selects, so loops using it vectorise.
EDGEDET_ALWAYS_INLINE float clamp_f(float v, float lo, float hi) {
    v = v >= lo ? v : lo;
    return v <= hi ? v : hi;
}

// Pass 1, vectorised over the K samples of one query: all arithmetic in float (token indices are
// exact below 2^24, checked by the caller) and selects instead of branches (if-converted thanks
// to -fno-trapping-math). Clamping to [-1, W] x [-1, H] first makes any input, NaN and huge
// values included, give valid indices.
EDGEDET_ALWAYS_INLINE void locate_query(const SampleGeometry& g, const float* __restrict loc,
                                        const float* __restrict attn, size_t k_count, QueryCorners& c) {
    const float* __restrict wf = g.width.data();
    const float* __restrict hf = g.height.data();
    const float* __restrict st = g.start.data();
    int32_t* __restrict t00 = c.t00.data();
    int32_t* __restrict t10 = c.t10.data();
    int32_t* __restrict t01 = c.t01.data();
    int32_t* __restrict t11 = c.t11.data();
    float* __restrict w00 = c.w00.data();
    float* __restrict w10 = c.w10.data();
    float* __restrict w01 = c.w01.data();
    float* __restrict w11 = c.w11.data();
    const int kn = static_cast<int>(k_count);
    // The outputs never alias the inputs; without this GCC gives up on run-time alias checks.
#pragma GCC ivdep
    for (int k = 0; k < kn; ++k) {
        const float w = wf[k], h = hf[k];
        const float x = clamp_f(loc[2 * k] * w - 0.5f, -1.f, w);
        const float y = clamp_f(loc[2 * k + 1] * h - 0.5f, -1.f, h);
        const float x0 = std::floor(x), y0 = std::floor(y);
        const float fx = x - x0, fy = y - y0, a = attn[k];
        // Corner validity: x0 in [-1, W] and y0 in [-1, H] after the clamp above.
        const float wx0 = ((x0 >= 0.f) & (x0 < w)) ? 1.f - fx : 0.f;
        const float wx1 = x0 + 1.f < w ? fx : 0.f;
        const float wy0 = ((y0 >= 0.f) & (y0 < h)) ? (1.f - fy) * a : 0.f;
        const float wy1 = y0 + 1.f < h ? fy * a : 0.f;
        const float xa = clamp_f(x0, 0.f, w - 1.f), xb = clamp_f(x0 + 1.f, 0.f, w - 1.f);
        const float ya = clamp_f(y0, 0.f, h - 1.f) * w + st[k];
        const float yb = clamp_f(y0 + 1.f, 0.f, h - 1.f) * w + st[k];
        t00[k] = static_cast<int32_t>(ya + xa);
        t10[k] = static_cast<int32_t>(ya + xb);
        t01[k] = static_cast<int32_t>(yb + xa);
        t11[k] = static_cast<int32_t>(yb + xb);
        w00[k] = wx0 * wy0;
        w10[k] = wx1 * wy0;
        w01[k] = wx0 * wy1;
        w11[k] = wx1 * wy1;
    }
}

// Pass 1 of method "discrete": one token per sample, weight = its attention weight. loc * size is
// rounded to float on its own (exact double product, then one rounding) so that no FMA contraction
// can merge it with the + 0.5: the index then equals PyTorch's float32 arithmetic bit for bit.
// Clamping before the floor equals truncation then clamping for every input (NaN -> 0).
EDGEDET_ALWAYS_INLINE void locate_query_discrete(const SampleGeometry& g, const float* __restrict loc,
                                                 const float* __restrict attn, size_t k_count, QueryCorners& c) {
    const float* __restrict wf = g.width.data();
    const float* __restrict hf = g.height.data();
    const float* __restrict xl = g.x_limit.data();
    const float* __restrict st = g.start.data();
    int32_t* __restrict t00 = c.t00.data();
    float* __restrict w00 = c.w00.data();
    const int kn = static_cast<int>(k_count);
#pragma GCC ivdep
    for (int k = 0; k < kn; ++k) {
        const float w = wf[k], h = hf[k];
        const float px = static_cast<float>(static_cast<double>(loc[2 * k]) * static_cast<double>(w));
        const float py = static_cast<float>(static_cast<double>(loc[2 * k + 1]) * static_cast<double>(h));
        const float ix = std::floor(clamp_f(px + 0.5f, 0.f, xl[k]));
        const float iy = std::floor(clamp_f(py + 0.5f, 0.f, h - 1.f));
        t00[k] = static_cast<int32_t>(iy * w + ix + st[k]);
        w00[k] = attn[k];
    }
}

// Pass 2 of method "discrete" for one head: out[D] = sum of the weighted sampled rows.
template <int DC, int VW>
EDGEDET_ALWAYS_INLINE void accumulate_head_discrete(const QueryCorners& c, size_t k_begin, size_t k_end,
                                                    const float* head, size_t row, float* out, size_t d_runtime) {
    const size_t d = DC > 0 ? static_cast<size_t>(DC) : d_runtime;
    constexpr int kVectors = DC > 0 ? DC / VW : 1;
    typedef typename Vec<VW>::type V;
    V acc[kVectors];
    for (int i = 0; i < kVectors; ++i)
        acc[i] = V{};
    if (DC == 0)
        std::memset(out, 0, d * sizeof(float));
    for (size_t k = k_begin; k < k_end; ++k) {
        const float* v = head + static_cast<size_t>(c.t00[k]) * row;
        const float a = c.w00[k];
        if (DC > 0) {
            for (int i = 0; i < kVectors; ++i)
                acc[i] += a * load_vec<VW>(v + i * VW);
        } else {
            for (size_t ch = 0; ch < d; ++ch)
                out[ch] += a * v[ch];
        }
    }
    if (DC > 0)
        for (int i = 0; i < kVectors; ++i)
            std::memcpy(out + i * VW, &acc[i], sizeof(V));
}

// Pass 2 for one head: out[D] = sum over its samples [k_begin, k_end) of the weighted corner rows.
// DC = compile-time D (0: runtime D, scalar loop), VW = floats per vector register, DC % VW == 0;
// with DC > 0 the accumulator is DC / VW vector variables that stay in registers.
template <int DC, int VW>
EDGEDET_ALWAYS_INLINE void accumulate_head(const QueryCorners& c, size_t k_begin, size_t k_end, const float* head,
                                           size_t row, float* out, size_t d_runtime) {
    const size_t d = DC > 0 ? static_cast<size_t>(DC) : d_runtime;
    constexpr int kVectors = DC > 0 ? DC / VW : 1;
    typedef typename Vec<VW>::type V;
    V acc[kVectors];
    for (int i = 0; i < kVectors; ++i)
        acc[i] = V{};
    if (DC == 0)
        std::memset(out, 0, d * sizeof(float));
    for (size_t k = k_begin; k < k_end; ++k) {
        const float* v00 = head + static_cast<size_t>(c.t00[k]) * row;
        const float* v10 = head + static_cast<size_t>(c.t10[k]) * row;
        const float* v01 = head + static_cast<size_t>(c.t01[k]) * row;
        const float* v11 = head + static_cast<size_t>(c.t11[k]) * row;
        const float w00 = c.w00[k], w10 = c.w10[k], w01 = c.w01[k], w11 = c.w11[k];
        if (DC > 0) {
            // Pairwise sums keep the loop-carried dependency on acc to one add per sample.
            for (int i = 0; i < kVectors; ++i)
                acc[i] += (w00 * load_vec<VW>(v00 + i * VW) + w10 * load_vec<VW>(v10 + i * VW)) +
                          (w01 * load_vec<VW>(v01 + i * VW) + w11 * load_vec<VW>(v11 + i * VW));
        } else {
            for (size_t ch = 0; ch < d; ++ch)
                out[ch] += (w00 * v00[ch] + w10 * v10[ch]) + (w01 * v01[ch] + w11 * v11[ch]);
        }
    }
    if (DC > 0)
        for (int i = 0; i < kVectors; ++i)
            std::memcpy(out + i * VW, &acc[i], sizeof(V));
}

template <int DC, int VW, bool Discrete>
EDGEDET_ALWAYS_INLINE void run_rows_impl(const MsdaProblem& pb, size_t begin, size_t end) {
    const size_t m_count = pb.heads, d = pb.channels;
    size_t lp = 0;  // K = sum of the per-level point counts
    for (size_t l = 0; l < pb.levels; ++l)
        lp += static_cast<size_t>(pb.points[l]);
    const size_t k_count = m_count * lp;
    const size_t row = m_count * d;  // stride between consecutive tokens
    const SampleGeometry geometry(pb);
    QueryCorners corners(k_count);
    for (size_t r = begin; r < end; ++r) {  // r = n * Lq + q
        const size_t n = r / pb.queries;
        const float* value_batch = pb.value + n * pb.tokens * row;
        const float* loc = pb.sampling_locations + r * k_count * 2;
        const float* attn = pb.attention_weights + r * k_count;
        float* out = pb.output + r * row;
        if (Discrete) {
            locate_query_discrete(geometry, loc, attn, k_count, corners);
            for (size_t m = 0; m < m_count; ++m)
                accumulate_head_discrete<DC, VW>(corners, m * lp, (m + 1) * lp, value_batch + m * d, row, out + m * d,
                                                 d);
        } else {
            locate_query(geometry, loc, attn, k_count, corners);
            for (size_t m = 0; m < m_count; ++m)
                accumulate_head<DC, VW>(corners, m * lp, (m + 1) * lp, value_batch + m * d, row, out + m * d, d);
        }
    }
}

using RowsFn = void (*)(const MsdaProblem&, size_t, size_t);

// One function per (instruction set, channel count, method); the body is inlined into each so
// that the compiler vectorises it for that target.
#define EDGEDET_DEFINE_ROWS(SUFFIX, ATTR, VW)                                              \
    template <int DC, int W, bool Discrete>                                                \
    ATTR void run_rows_##SUFFIX(const MsdaProblem& pb, size_t begin, size_t end) {         \
        run_rows_impl<DC, W, Discrete>(pb, begin, end);                                    \
    }                                                                                      \
    template <bool Discrete>                                                               \
    RowsFn pick_##SUFFIX(size_t d) {                                                       \
        switch (d) {                                                                       \
        case 8:                                                                            \
            return &run_rows_##SUFFIX<8, 8, Discrete>;                                     \
        case 16:                                                                           \
            return &run_rows_##SUFFIX<16, (VW <= 16 ? VW : 16), Discrete>;                 \
        case 32:                                                                           \
            return &run_rows_##SUFFIX<32, VW, Discrete>;                                   \
        case 64:                                                                           \
            return &run_rows_##SUFFIX<64, VW, Discrete>;                                   \
        default:                                                                           \
            return &run_rows_##SUFFIX<0, 8, Discrete>;                                     \
        }                                                                                  \
    }

EDGEDET_DEFINE_ROWS(generic, , 8)
#if EDGEDET_X86_DISPATCH
EDGEDET_DEFINE_ROWS(avx2, __attribute__((target("avx2,fma"))), 8)
EDGEDET_DEFINE_ROWS(avx512, __attribute__((target("avx512f,avx512vl,avx2,fma"))), 16)
#endif

enum class Variant { generic, avx2, avx512 };

bool cpu_has(Variant v) {
#if EDGEDET_X86_DISPATCH
    __builtin_cpu_init();
    if (v == Variant::avx512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
    if (v == Variant::avx2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return v == Variant::generic;
}

// Best variant of this CPU; EDGEDET_OV_MSDA_ISA=generic|avx2|avx512 caps it (tests use this to
// exercise every code path on one machine).
Variant detect_variant() {
    Variant cap = Variant::avx512;
    if (const char* env = std::getenv("EDGEDET_OV_MSDA_ISA")) {
        const std::string name(env);
        cap = name == "generic" ? Variant::generic : name == "avx2" ? Variant::avx2 : Variant::avx512;
    }
    for (Variant v : {Variant::avx512, Variant::avx2})
        if (static_cast<int>(v) <= static_cast<int>(cap) && cpu_has(v))
            return v;
    return Variant::generic;
}

Variant current_variant() {
    static const Variant variant = detect_variant();
    return variant;
}

template <bool Discrete>
RowsFn pick_rows(size_t d) {
#if EDGEDET_X86_DISPATCH
    switch (current_variant()) {
    case Variant::avx512:
        return pick_avx512<Discrete>(d);
    case Variant::avx2:
        return pick_avx2<Discrete>(d);
    default:
        break;
    }
#endif
    return pick_generic<Discrete>(d);
}

}  // namespace

void msda_forward(const MsdaProblem& problem) {
    const size_t rows = problem.batch * problem.queries;
    if (rows == 0 || problem.heads * problem.channels == 0)
        return;
    const RowsFn fn = problem.discrete ? pick_rows<true>(problem.channels) : pick_rows<false>(problem.channels);
    // Blocks of rows handed out dynamically, which keeps threads balanced when cores are shared.
    constexpr size_t kBlock = 32;
    const size_t blocks = (rows + kBlock - 1) / kBlock;
    ov::parallel_for(blocks, [&](size_t b) {
        fn(problem, b * kBlock, std::min(rows, (b + 1) * kBlock));
    });
}

}  // namespace edgedet
