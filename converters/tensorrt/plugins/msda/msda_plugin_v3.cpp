// TensorRT 10+ plugin (IPluginV3) for edgedet::MultiScaleDeformableAttention.
// Attributes (msda_plugin_common.h): num_points_per_level and method, serialised as fields.
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
  MsdaPluginV3(MsdaAttributes attrs, std::string ns) : mAttrs(std::move(attrs)), mNamespace(std::move(ns)) {}

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
      return new MsdaPluginV3(mAttrs, mNamespace);
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
    Dims dims[kNbInputs];
    for (int32_t i = 0; i < kNbInputs; ++i) dims[i] = in[i].desc.dims;
    return mAttrs.shapes_ok(dims) ? 0 : 1;
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
    return enqueue_msda(inputDesc, inputs, outputs[0], mAttrs, stream);
  }

  IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    mMethodName = mAttrs.method == kDiscrete ? "discrete" : "default";
    mSerial.clear();
    if (mAttrs.per_level()) {
      mSerial.emplace_back(kPointsField, mAttrs.points.data(), PluginFieldType::kINT32,
                           static_cast<int32_t>(mAttrs.points.size()));
    }
    mSerial.emplace_back(kMethodField, mMethodName.c_str(), PluginFieldType::kCHAR,
                         static_cast<int32_t>(mMethodName.size()));
    mFields.nbFields = static_cast<int32_t>(mSerial.size());
    mFields.fields = mSerial.data();
    return &mFields;
  }

 private:
  MsdaAttributes mAttrs;
  std::string mNamespace;
  std::string mMethodName;
  std::vector<PluginField> mSerial;
  PluginFieldCollection mFields{};
};

class MsdaPluginV3Creator final : public IPluginCreatorV3One {
 public:
  MsdaPluginV3Creator() {
    mFieldNames.emplace_back(kPointsField, nullptr, PluginFieldType::kINT32, 0);
    mFieldNames.emplace_back(kMethodField, nullptr, PluginFieldType::kCHAR, 0);
    mFields.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFields.fields = mFieldNames.data();
  }
  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }
  PluginFieldCollection const* getFieldNames() noexcept override { return &mFields; }
  IPluginV3* createPlugin(AsciiChar const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
    try {
      MsdaAttributes attrs;
      if (!attrs.parse(fc)) return nullptr;  // unknown method or bad point counts: TensorRT reports the failure
      return new MsdaPluginV3(std::move(attrs), mNamespace);
    } catch (std::exception const&) {
      return nullptr;
    }
  }

 private:
  std::string mNamespace;
  std::vector<PluginField> mFieldNames;
  PluginFieldCollection mFields{};
};

}  // namespace trt
}  // namespace edgedet

// Entry points. TensorRT registers the creators `getCreators` returns when the library is loaded
// with IPluginRegistry::loadLibrary / trtexec --dynamicPlugins / trt.get_plugin_registry().load_library
// (edgedet's runtime and builder do that, once per process). Nothing registers at dlopen time, so
// the creator is never registered twice; a C++ program that dlopens the library itself calls
// edgedetRegisterMsdaPlugin(), which registers only if no creator of this name/version exists.
namespace {
edgedet::trt::MsdaPluginV3Creator& the_creator() {
  static edgedet::trt::MsdaPluginV3Creator creator;
  return creator;
}
}  // namespace

extern "C" {
void setLoggerFinder(nvinfer1::ILoggerFinder*) {}

IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static IPluginCreatorInterface* const creators[] = {&the_creator()};
  nbCreators = 1;
  return creators;
}

bool edgedetRegisterMsdaPlugin() {
  auto* registry = getPluginRegistry();
  if (registry == nullptr) return false;
  if (registry->getCreator(edgedet::trt::kPluginName, edgedet::trt::kPluginVersion, "") != nullptr) return true;
  return registry->registerCreator(the_creator(), "");
}
}
