// Entry point of libedgedet_ov_msda.so: registers the op for OpenVINO IR and maps the ONNX node
// edgedet::MultiScaleDeformableAttention (domain "edgedet", opset 1) onto it. The ONNX mapping is
// written by hand because both attributes are optional there (graphs exported before they existed
// carry none), which the generic attribute-by-name OpExtension does not allow.
#include "msda_op.hpp"
#include "openvino/core/extension.hpp"
#include "openvino/core/op_extension.hpp"
#include "openvino/frontend/onnx/extension/conversion.hpp"

namespace {

ov::OutputVector convert_onnx_msda(const ov::frontend::NodeContext& node) {
    ov::OutputVector inputs;
    for (size_t i = 0; i < node.get_input_size(); ++i)
        inputs.push_back(node.get_input(static_cast<int>(i)));
    auto op = std::make_shared<edgedet::MultiScaleDeformableAttention>(
        inputs, node.get_attribute<std::vector<int64_t>>("num_points_per_level", {}),
        node.get_attribute<std::string>("method", "default"));
    return op->outputs();
}

}  // namespace

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>(
    {std::make_shared<ov::OpExtension<edgedet::MultiScaleDeformableAttention>>(),
     std::make_shared<ov::frontend::onnx::ConversionExtension>("MultiScaleDeformableAttention", "edgedet",
                                                               convert_onnx_msda)}));
