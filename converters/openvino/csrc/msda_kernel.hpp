// Fused multi-scale deformable attention forward kernel for CPUs (float32).
//
// Layout (N batch, S tokens, M heads, D channels per head, Lq queries, L levels, P points):
//   value [N, S, M, D], sampling_locations [N, Lq, M, L, P, 2] (x, y) in [0, 1],
//   attention_weights [N, Lq, M, L, P] -> output [N, Lq, M * D].
// Semantics equal grid_sample(bilinear, zeros, align_corners=False) at grid = 2 * loc - 1.
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
    size_t batch = 0, tokens = 0, heads = 0, channels = 0, queries = 0, levels = 0, points = 0;
};

// Runs the whole problem, parallel over (batch, query) on OpenVINO's thread pool. The code path
// (AVX-512, AVX2, generic) is picked once per process from the CPU; the environment variable
// EDGEDET_OV_MSDA_ISA=generic|avx2 caps it. Requires at most 2^24 tokens and non-empty levels.
void msda_forward(const MsdaProblem& problem);

}  // namespace edgedet
