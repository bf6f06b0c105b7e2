// CPU kernel: one task per block of (batch, query) rows; per row, every head accumulates its
// L * P bilinear samples into a D-vector held in registers. The four corners of a sample are
// contiguous D-vectors of value ([N, S, M, D] layout), so the inner loop is a fused
// multiply-add over D that the compiler vectorises. Instruction sets are chosen at run time
// (target attributes + cpuid), so one portable build still uses AVX2/AVX-512 where present.
#include "msda_kernel.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "openvino/core/parallel.hpp"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#    define EDGEDET_X86_DISPATCH 1
#    define EDGEDET_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#    define EDGEDET_X86_DISPATCH 0
#    define EDGEDET_ALWAYS_INLINE inline
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

// Bilinear corners of one sample: four token rows and their weights (0 for padding corners).
struct Sample {
    const float *v00, *v10, *v01, *v11;
    float w00, w10, w01, w11;
};

// Returns false when every corner lies in the padding (or the location is NaN).
EDGEDET_ALWAYS_INLINE bool locate(const float* loc, float a, int64_t h, int64_t w, const float* level_base, size_t row,
                                  Sample& s) {
    const float wf = static_cast<float>(w);
    const float hf = static_cast<float>(h);
    const float x = loc[0] * wf - 0.5f;
    const float y = loc[1] * hf - 0.5f;
    // Outside (-1, W) x (-1, H) every corner is padding; checked in float so that huge values
    // never reach the integer conversion.
    if (!(x > -1.f && y > -1.f && x < wf && y < hf))
        return false;
    const float x0f = std::floor(x);
    const float y0f = std::floor(y);
    const float fx = x - x0f;
    const float fy = y - y0f;
    const int64_t x0 = static_cast<int64_t>(x0f);
    const int64_t y0 = static_cast<int64_t>(y0f);
    // Invalid corners get weight 0 and a valid row, keeping the channel loop branch-free.
    const bool vx0 = x0 >= 0, vx1 = x0 + 1 < w, vy0 = y0 >= 0, vy1 = y0 + 1 < h;
    const int64_t xa = vx0 ? x0 : 0, xb = vx1 ? x0 + 1 : w - 1;
    const int64_t ya = (vy0 ? y0 : 0) * w, yb = (vy1 ? y0 + 1 : h - 1) * w;
    s.w00 = (vx0 && vy0) ? (1.f - fx) * (1.f - fy) * a : 0.f;
    s.w10 = (vx1 && vy0) ? fx * (1.f - fy) * a : 0.f;
    s.w01 = (vx0 && vy1) ? (1.f - fx) * fy * a : 0.f;
    s.w11 = (vx1 && vy1) ? fx * fy * a : 0.f;
    s.v00 = level_base + static_cast<size_t>(ya + xa) * row;
    s.v10 = level_base + static_cast<size_t>(ya + xb) * row;
    s.v01 = level_base + static_cast<size_t>(yb + xa) * row;
    s.v11 = level_base + static_cast<size_t>(yb + xb) * row;
    return true;
}

// Accumulates one head of one query into out[D]. DC = compile-time D (0: runtime `d`, scalar
// loop), VW = floats per vector register; DC % VW == 0. With DC > 0 the accumulator is DC / VW
// vector variables, which stay in registers across all L * P samples.
template <int DC, int VW>
EDGEDET_ALWAYS_INLINE void accumulate_head(const MsdaProblem& pb,
                                           const float* value_head,  // value[n, 0, m, 0]
                                           const float* loc,         // [L, P, 2]
                                           const float* attn,        // [L, P]
                                           float* out,               // [D]
                                           size_t d_runtime) {
    const size_t d = DC > 0 ? static_cast<size_t>(DC) : d_runtime;
    const size_t row = pb.heads * d;  // stride between consecutive tokens
    constexpr int kVectors = DC > 0 ? DC / VW : 1;
    typedef typename Vec<VW>::type V;
    V acc[kVectors];
    for (int i = 0; i < kVectors; ++i)
        acc[i] = V{};
    if (DC == 0)
        std::memset(out, 0, d * sizeof(float));
    Sample s;
    for (size_t l = 0; l < pb.levels; ++l) {
        const int64_t h = pb.heights[l];
        const int64_t w = pb.widths[l];
        if (h <= 0 || w <= 0)
            continue;
        const float* level_base = value_head + static_cast<size_t>(pb.level_starts[l]) * row;
        for (size_t p = 0; p < pb.points; ++p, loc += 2, ++attn) {
            if (!locate(loc, attn[0], h, w, level_base, row, s))
                continue;
            if (DC > 0) {
                // Pairwise sums keep the loop-carried dependency on acc to one add per sample.
                for (int i = 0; i < kVectors; ++i)
                    acc[i] += (s.w00 * load_vec<VW>(s.v00 + i * VW) + s.w10 * load_vec<VW>(s.v10 + i * VW)) +
                              (s.w01 * load_vec<VW>(s.v01 + i * VW) + s.w11 * load_vec<VW>(s.v11 + i * VW));
            } else {
                for (size_t c = 0; c < d; ++c)
                    out[c] += (s.w00 * s.v00[c] + s.w10 * s.v10[c]) + (s.w01 * s.v01[c] + s.w11 * s.v11[c]);
            }
        }
    }
    if (DC > 0)
        for (int i = 0; i < kVectors; ++i)
            std::memcpy(out + i * VW, &acc[i], sizeof(V));
}

template <int DC, int VW>
EDGEDET_ALWAYS_INLINE void run_rows_impl(const MsdaProblem& pb, size_t begin, size_t end) {
    const size_t m_count = pb.heads, d = pb.channels;
    const size_t lp = pb.levels * pb.points;
    for (size_t r = begin; r < end; ++r) {  // r = n * Lq + q
        const size_t n = r / pb.queries;
        const float* value_batch = pb.value + n * pb.tokens * m_count * d;
        const float* loc = pb.sampling_locations + r * m_count * lp * 2;
        const float* attn = pb.attention_weights + r * m_count * lp;
        float* out = pb.output + r * m_count * d;
        for (size_t m = 0; m < m_count; ++m)
            accumulate_head<DC, VW>(pb, value_batch + m * d, loc + m * lp * 2, attn + m * lp, out + m * d, d);
    }
}

using RowsFn = void (*)(const MsdaProblem&, size_t, size_t);

// One function per (instruction set, channel count); the body is inlined into each so that the
// compiler vectorises it for that target.
#define EDGEDET_DEFINE_ROWS(SUFFIX, ATTR, VW)                                              \
    template <int DC, int W>                                                               \
    ATTR void run_rows_##SUFFIX(const MsdaProblem& pb, size_t begin, size_t end) {         \
        run_rows_impl<DC, W>(pb, begin, end);                                              \
    }                                                                                      \
    RowsFn pick_##SUFFIX(size_t d) {                                                       \
        switch (d) {                                                                       \
        case 8:                                                                            \
            return &run_rows_##SUFFIX<8, 8>;                                               \
        case 16:                                                                           \
            return &run_rows_##SUFFIX<16, (VW <= 16 ? VW : 16)>;                           \
        case 32:                                                                           \
            return &run_rows_##SUFFIX<32, VW>;                                             \
        case 64:                                                                           \
            return &run_rows_##SUFFIX<64, VW>;                                             \
        default:                                                                           \
            return &run_rows_##SUFFIX<0, 8>;                                               \
        }                                                                                  \
    }

EDGEDET_DEFINE_ROWS(generic, , 8)
#if EDGEDET_X86_DISPATCH
EDGEDET_DEFINE_ROWS(avx2, __attribute__((target("avx2,fma"))), 8)
EDGEDET_DEFINE_ROWS(avx512, __attribute__((target("avx512f,avx512vl,avx2,fma"))), 16)
#endif

enum class Variant { generic, avx2, avx512 };

Variant detect_variant() {
#if EDGEDET_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"))
        return Variant::avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return Variant::avx2;
#endif
    return Variant::generic;
}

Variant current_variant() {
    static const Variant variant = detect_variant();
    return variant;
}

RowsFn pick_rows(size_t d) {
#if EDGEDET_X86_DISPATCH
    switch (current_variant()) {
    case Variant::avx512:
        return pick_avx512(d);
    case Variant::avx2:
        return pick_avx2(d);
    default:
        break;
    }
#endif
    return pick_generic(d);
}

}  // namespace

const char* msda_kernel_variant() {
    switch (current_variant()) {
    case Variant::avx512:
        return "avx512";
    case Variant::avx2:
        return "avx2";
    default:
        return "generic";
    }
}

void msda_forward(const MsdaProblem& problem) {
    const size_t rows = problem.batch * problem.queries;
    if (rows == 0 || problem.heads * problem.channels == 0)
        return;
    const RowsFn fn = pick_rows(problem.channels);
    // Blocks of rows handed out dynamically: balances threads when cores are shared or
    // rows differ in cost (samples in the padding are skipped).
    constexpr size_t kBlock = 32;
    const size_t blocks = (rows + kBlock - 1) / kBlock;
    ov::parallel_for(blocks, [&](size_t b) {
        fn(problem, b * kBlock, std::min(rows, (b + 1) * kBlock));
    });
}

}  // namespace edgedet
