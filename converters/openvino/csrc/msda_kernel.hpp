// Fused multi-scale deformable attention forward kernel for CPUs (float32).
//
// Layout (N batch, S tokens, M heads, D channels per head, Lq queries, L levels, P_l points of
// level l, K = sum(P_l)): value [N, S, M, D], sampling_locations [N, Lq, M, K, 2] (x, y) in [0, 1],
// attention_weights [N, Lq, M, K] -> output [N, Lq, M * D]; per head, level 0's points come first.
// The uniform layout [N, Lq, M, L, P, 2] is the same memory with P_l = P.
// default: grid_sample(bilinear, zeros, align_corners=False) at grid = 2 * loc - 1.
// discrete: RT-DETRv2's nearest pixel (edgedet.ops.msda): ix = trunc(f32(x * W) + 0.5),
//   iy = trunc(f32(y * H) + 0.5), both clamped to [0, H - 1], ix also to [0, W - 1].
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace edgedet {

struct MsdaProblem {
    const float* value = nullptr;
    const float* sampling_locations = nullptr;
    const float* attention_weights = nullptr;
    float* output = nullptr;
    std::vector<int64_t> heights;       // per level
    std::vector<int64_t> widths;        // per level
    std::vector<int64_t> level_starts;  // per level, token offset in S
    std::vector<int64_t> points;        // per level, sampling points P_l (> 0)
    bool discrete = false;              // method: false = default (bilinear), true = discrete
    size_t batch = 0, tokens = 0, heads = 0, channels = 0, queries = 0, levels = 0;
};

// Runs the whole problem, parallel over (batch, query) on OpenVINO's thread pool. The code path
// (AVX-512, AVX2, generic) is picked once per process from the CPU; the environment variable
// EDGEDET_OV_MSDA_ISA=generic|avx2 caps it. Requires at most 2^24 tokens and non-empty levels.
void msda_forward(const MsdaProblem& problem);

}  // namespace edgedet
