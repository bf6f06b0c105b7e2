// TensorRT 8.6 plugin (IPluginV2DynamicExt), for JetPack 5 devices, for
// edgedet::MultiScaleDeformableAttention. TensorRT 10+ builds use msda_plugin_v3.cpp.
// Attributes (msda_plugin_common.h) are serialised as: int32 level count (0 = uniform layout),
// that many int32 point counts, int32 method.
#include <cstring>
#include <exception>
#include <string>
#include <utility>

#include "NvInferRuntime.h"
#include "msda_plugin_common.h"

using namespace nvinfer1;

namespace edgedet {
namespace trt {

class MsdaPluginV2 final : public IPluginV2DynamicExt {
 public:
  explicit MsdaPluginV2(MsdaAttributes attrs) : mAttrs(std::move(attrs)) {}

  // From serialize()'s bytes; `ok` is false when they are malformed.
  MsdaPluginV2(void const* data, size_t length, bool& ok) {
    auto const* p = static_cast<char const*>(data);
    int32_t count = 0;
    ok = length >= 2 * sizeof(int32_t);
    if (ok) std::memcpy(&count, p, sizeof(int32_t));
    ok = ok && count >= 0 && count <= kMsdaMaxLevels && length == (static_cast<size_t>(count) + 2) * sizeof(int32_t);
    if (!ok) return;
    mAttrs.points.resize(count);
    std::memcpy(mAttrs.points.data(), p + sizeof(int32_t), count * sizeof(int32_t));
    std::memcpy(&mAttrs.method, p + (count + 1) * sizeof(int32_t), sizeof(int32_t));
    ok = mAttrs.method == kBilinear || mAttrs.method == kDiscrete;
  }

  // IPluginV2
  AsciiChar const* getPluginType() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t initialize() noexcept override { return 0; }
  void terminate() noexcept override {}
  size_t getSerializationSize() const noexcept override {
    return (mAttrs.points.size() + 2) * sizeof(int32_t);
  }
  void serialize(void* buffer) const noexcept override {
    auto* p = static_cast<char*>(buffer);
    int32_t count = static_cast<int32_t>(mAttrs.points.size());
    std::memcpy(p, &count, sizeof(int32_t));
    std::memcpy(p + sizeof(int32_t), mAttrs.points.data(), count * sizeof(int32_t));
    std::memcpy(p + (count + 1) * sizeof(int32_t), &mAttrs.method, sizeof(int32_t));
  }
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
      auto* p = new MsdaPluginV2(mAttrs);
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

  void configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*,
                       int32_t) noexcept override {
    // V2 cannot refuse here; enqueue checks the shapes again and fails the launch instead.
    if (nbInputs == kNbInputs) {
      Dims dims[kNbInputs];
      for (int32_t i = 0; i < kNbInputs; ++i) dims[i] = in[i].desc.dims;
      mShapesOk = mAttrs.shapes_ok(dims);
    }
  }

  size_t getWorkspaceSize(PluginTensorDesc const*, int32_t, PluginTensorDesc const*, int32_t) const noexcept override {
    return 0;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    if (!mShapesOk) return 1;
    return enqueue_msda(inputDesc, inputs, outputs[0], mAttrs, stream);
  }

 private:
  MsdaAttributes mAttrs;
  bool mShapesOk = true;
  std::string mNamespace;
};

class MsdaPluginV2Creator final : public IPluginCreator {
 public:
  MsdaPluginV2Creator() {
    mFieldNames.emplace_back(kPointsField, nullptr, PluginFieldType::kINT32, 0);
    mFieldNames.emplace_back(kMethodField, nullptr, PluginFieldType::kCHAR, 0);
    mFields.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFields.fields = mFieldNames.data();
  }
  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  PluginFieldCollection const* getFieldNames() noexcept override { return &mFields; }
  IPluginV2* createPlugin(AsciiChar const*, PluginFieldCollection const* fc) noexcept override {
    try {
      MsdaAttributes attrs;
      if (!attrs.parse(fc)) return nullptr;
      return named(new MsdaPluginV2(std::move(attrs)));
    } catch (std::exception const&) {
      return nullptr;
    }
  }
  IPluginV2* deserializePlugin(AsciiChar const*, void const* data, size_t length) noexcept override {
    try {
      bool ok = false;
      auto* p = new MsdaPluginV2(data, length, ok);
      if (!ok) {
        delete p;
        return nullptr;
      }
      return named(p);
    } catch (std::exception const&) {
      return nullptr;
    }
  }
  void setPluginNamespace(AsciiChar const* ns) noexcept override { mNamespace = ns ? ns : ""; }
  AsciiChar const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }

 private:
  IPluginV2* named(MsdaPluginV2* p) noexcept {
    p->setPluginNamespace(mNamespace.c_str());
    return p;
  }
  std::string mNamespace;
  std::vector<PluginField> mFieldNames;
  PluginFieldCollection mFields{};
};

}  // namespace trt
}  // namespace edgedet

// TensorRT 8.x loads V2 plugins with a plain dlopen: register while loading, but only if no
// creator of this name/version is registered yet (e.g. a second copy of the library), so the
// creator is registered once per process.
namespace {
struct Registrar {
  Registrar() {
    auto* registry = getPluginRegistry();
    if (registry != nullptr && registry->getPluginCreator(edgedet::trt::kPluginName, edgedet::trt::kPluginVersion, "") == nullptr) {
      static edgedet::trt::MsdaPluginV2Creator creator;
      registry->registerCreator(creator, "");
    }
  }
} gRegistrar;
}  // namespace
