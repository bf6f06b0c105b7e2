// OpenVINO operation edgedet::MultiScaleDeformableAttention (see msda_kernel.hpp for semantics).
//
// Inputs: value [N, S, M, D] (f32 or f16), spatial_shapes [L, 2] (H, W; i64 or i32),
// level_start_index [L] (i64 or i32), sampling_locations [N, Lq, M, L, P, 2],
// attention_weights [N, Lq, M, L, P]. Output: [N, Lq, M * D], element type of value.
// No attributes. Runs through `evaluate` (the CPU plugin executes it as a reference node).
#pragma once

#include "openvino/op/op.hpp"

namespace edgedet {

class MultiScaleDeformableAttention : public ov::op::Op {
public:
    OPENVINO_OP("MultiScaleDeformableAttention", "edgedet1");

    MultiScaleDeformableAttention() = default;
    explicit MultiScaleDeformableAttention(const ov::OutputVector& args);

    void validate_and_infer_types() override;
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& new_args) const override;
    bool visit_attributes(ov::AttributeVisitor& visitor) override;
    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;
    bool has_evaluate() const override;
};

}  // namespace edgedet
