// TensorRT 10+ plugin (IPluginV3) for edgedet::MultiScaleDeformableAttention.
// The op has no attributes, so nothing is serialised besides the plugin's identity.
#include <cstring>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "NvInferRuntime.h"
#include "msda_plugin_common.h"

using namespace nvinfer1;

namespace edgedet {
namespace trt {

class MsdaPluginV3 final : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
 public:
  explicit MsdaPluginV3(std::string ns = "") : mNamespace(std::move(ns)) {}

  // IPluginV3
  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }
  IPluginV3* clone() noexcept override {
    try {
      return new MsdaPluginV3(mNamespace);
    } catch (std::exception const&) {
      return nullptr;
    }
  }

  // IPluginV3OneCore
  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return 1; }

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*,
                          int32_t nbOutputs) noexcept override {
    if (nbInputs != kNbInputs || nbOutputs != 1) return 1;
    // value [N,S,M,D], shapes [L,2], starts [L], locations [N,Lq,M,L,P,2], weights [N,Lq,M,L,P]
    bool ok = in[0].desc.dims.nbDims == 4 && in[1].desc.dims.nbDims == 2 && in[2].desc.dims.nbDims == 1 &&
              in[3].desc.dims.nbDims == 6 && in[4].desc.dims.nbDims == 5;
    return ok ? 0 : 1;
  }

  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    if (nbOutputs != 1 || nbInputs != kNbInputs) return 1;
    outputTypes[0] = inputTypes[0];
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
                          int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override {
    if (nbInputs != kNbInputs || nbOutputs != 1) return 1;
    // [N, Lq, M * D]
    outputs[0].nbDims = 3;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = inputs[3].d[1];
    outputs[0].d[2] = exprBuilder.operation(DimensionOperation::kPROD, *inputs[0].d[2], *inputs[0].d[3]);
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (nbInputs != kNbInputs || nbOutputs != 1 || pos < 0 || pos > kNbInputs) return false;
    std::vector<PluginTensorDesc> descs(kNbInputs + 1);
    for (int32_t i = 0; i <= pos; ++i) descs[i] = inOut[i].desc;
    return supports_combination(pos, descs.data());
  }

  size_t getWorkspaceSize(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    return 0;
  }

  // IPluginV3OneRuntime
  int32_t onShapeChange(PluginTensorDesc const*, int32_t nbInputs, PluginTensorDesc const*,
                        int32_t nbOutputs) noexcept override {
    return (nbInputs == kNbInputs && nbOutputs == 1) ? 0 : 1;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    return enqueue_msda(inputDesc, inputs, outputs[0], stream);
  }

  IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    mFields.nbFields = 0;
    mFields.fields = nullptr;
    return &mFields;
  }

 private:
  std::string mNamespace;
  PluginFieldCollection mFields{};
};

class MsdaPluginV3Creator final : public IPluginCreatorV3One {
 public:
  MsdaPluginV3Creator() {
    mFields.nbFields = 0;
    mFields.fields = nullptr;
  }
  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }
  PluginFieldCollection const* getFieldNames() noexcept override { return &mFields; }
  IPluginV3* createPlugin(AsciiChar const*, PluginFieldCollection const*, TensorRTPhase) noexcept override {
    try {
      return new MsdaPluginV3(mNamespace);
    } catch (std::exception const&) {
      return nullptr;
    }
  }

 private:
  std::string mNamespace;
  PluginFieldCollection mFields{};
};

}  // namespace trt
}  // namespace edgedet

// Entry points TensorRT looks for when the library is loaded with
// IPluginRegistry::loadLibrary / trtexec --dynamicPlugins / trt.get_plugin_registry().load_library.
extern "C" {
void setLoggerFinder(nvinfer1::ILoggerFinder*) {}

IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static edgedet::trt::MsdaPluginV3Creator creator;
  static IPluginCreatorInterface* const creators[] = {&creator};
  nbCreators = 1;
  return creators;
}
}

// Also register at load time, so a plain dlopen/ctypes.CDLL of the library is enough.
namespace {
struct Registrar {
  Registrar() {
    static edgedet::trt::MsdaPluginV3Creator creator;
    getPluginRegistry()->registerCreator(creator, "");
  }
} gRegistrar;
}  // namespace
