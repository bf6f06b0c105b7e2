// Entry point of libedgedet_ov_msda.so: registers the op for OpenVINO IR and maps the ONNX node
// edgedet::MultiScaleDeformableAttention (domain "edgedet", opset 1) onto it.
#include "msda_op.hpp"
#include "openvino/core/extension.hpp"
#include "openvino/core/op_extension.hpp"
#include "openvino/frontend/onnx/extension/op.hpp"

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>(
    {std::make_shared<ov::OpExtension<edgedet::MultiScaleDeformableAttention>>(),
     std::make_shared<ov::frontend::onnx::OpExtension<edgedet::MultiScaleDeformableAttention>>(
         "MultiScaleDeformableAttention", "edgedet")}));
