// OpenVINO operation edgedet::MultiScaleDeformableAttention (see msda_kernel.hpp for semantics).
//
// Inputs: value [N, S, M, D] (f32, f16 or bf16; bf16/f16 are widened and accumulated in f32), spatial_shapes [L, 2] (H, W; i64 or i32),
// level_start_index [L] (i64 or i32), sampling_locations, attention_weights. Output:
// [N, Lq, M * D], element type of value. Runs through `evaluate` (the CPU plugin executes it as a
// reference node). Attributes (both optional in ONNX; absent = the original DETR-family op):
//   num_points_per_level  ints; empty: uniform layout, locations [N, Lq, M, L, P, 2] and weights
//                         [N, Lq, M, L, P]; (P_0..P_{L-1}): per-level layout, locations
//                         [N, Lq, M, K, 2] and weights [N, Lq, M, K], K = sum(P_l)
//   method                "default" (bilinear) or "discrete" (RT-DETRv2 nearest pixel)
#pragma once

#include <string>
#include <vector>

#include "openvino/op/op.hpp"

namespace edgedet {

class MultiScaleDeformableAttention : public ov::op::Op {
public:
    OPENVINO_OP("MultiScaleDeformableAttention", "edgedet1");

    MultiScaleDeformableAttention() = default;
    explicit MultiScaleDeformableAttention(const ov::OutputVector& args,
                                           std::vector<int64_t> num_points_per_level = {},
                                           std::string method = "default");

    void validate_and_infer_types() override;
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& new_args) const override;
    bool visit_attributes(ov::AttributeVisitor& visitor) override;
    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;
    bool has_evaluate() const override;

    const std::vector<int64_t>& num_points_per_level() const { return m_num_points_per_level; }
    const std::string& method() const { return m_method; }

private:
    std::vector<int64_t> m_num_points_per_level;
    std::string m_method = "default";
};

}  // namespace edgedet
