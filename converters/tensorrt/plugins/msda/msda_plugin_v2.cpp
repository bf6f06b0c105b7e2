// TensorRT 8.6 plugin (IPluginV2DynamicExt), for JetPack 5 devices, for
// edgedet::MultiScaleDeformableAttention. TensorRT 10+ builds use msda_plugin_v3.cpp.
#include <exception>
#include <string>

#include "NvInferRuntime.h"
#include "msda_plugin_common.h"

using namespace nvinfer1;

namespace edgedet {
namespace trt {

class MsdaPluginV2 final : public IPluginV2DynamicExt {
 public:
  MsdaPluginV2() = default;

  // IPluginV2
  AsciiChar const* getPluginType() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t initialize() noexcept override { return 0; }
  void terminate() noexcept override {}
  size_t getSerializationSize() const noexcept override { return 0; }  // no attributes
  void serialize(void*) const noexcept override {}
  void destroy() noexcept override { delete this; }
  void setPluginNamespace(AsciiChar const* ns) noexcept override { mNamespace = ns ? ns : ""; }
  AsciiChar const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }

  // IPluginV2Ext
  DataType getOutputDataType(int32_t, DataType const* inputTypes, int32_t) const noexcept override {
    return inputTypes[0];
  }

  // IPluginV2DynamicExt
  IPluginV2DynamicExt* clone() const noexcept override {
    try {
      auto* p = new MsdaPluginV2();
      p->setPluginNamespace(mNamespace.c_str());
      return p;
    } catch (std::exception const&) {
      return nullptr;
    }
  }

  DimsExprs getOutputDimensions(int32_t, DimsExprs const* inputs, int32_t, IExprBuilder& exprBuilder) noexcept override {
    DimsExprs out;
    out.nbDims = 3;  // [N, Lq, M * D]
    out.d[0] = inputs[0].d[0];
    out.d[1] = inputs[3].d[1];
    out.d[2] = exprBuilder.operation(DimensionOperation::kPROD, *inputs[0].d[2], *inputs[0].d[3]);
    return out;
  }

  bool supportsFormatCombination(int32_t pos, PluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (nbInputs != kNbInputs || nbOutputs != 1 || pos < 0 || pos > kNbInputs) return false;
    return supports_combination(pos, inOut);
  }

  void configurePlugin(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*, int32_t) noexcept override {}

  size_t getWorkspaceSize(PluginTensorDesc const*, int32_t, PluginTensorDesc const*, int32_t) const noexcept override {
    return 0;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    return enqueue_msda(inputDesc, inputs, outputs[0], stream);
  }

 private:
  std::string mNamespace;
};

class MsdaPluginV2Creator final : public IPluginCreator {
 public:
  MsdaPluginV2Creator() {
    mFields.nbFields = 0;
    mFields.fields = nullptr;
  }
  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  PluginFieldCollection const* getFieldNames() noexcept override { return &mFields; }
  IPluginV2* createPlugin(AsciiChar const*, PluginFieldCollection const*) noexcept override {
    return make();
  }
  IPluginV2* deserializePlugin(AsciiChar const*, void const*, size_t) noexcept override { return make(); }
  void setPluginNamespace(AsciiChar const* ns) noexcept override { mNamespace = ns ? ns : ""; }
  AsciiChar const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }

 private:
  IPluginV2* make() noexcept {
    try {
      auto* p = new MsdaPluginV2();
      p->setPluginNamespace(mNamespace.c_str());
      return p;
    } catch (std::exception const&) {
      return nullptr;
    }
  }
  std::string mNamespace;
  PluginFieldCollection mFields{};
};

REGISTER_TENSORRT_PLUGIN(MsdaPluginV2Creator);

}  // namespace trt
}  // namespace edgedet
