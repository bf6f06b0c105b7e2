// The TensorRT MSDA plugins' non-GPU methods, run on the host against the public TensorRT headers
// (tests/test_tensorrt_host.py builds it with g++): the creator's fields and attribute parsing,
// output types and shapes (through an IExprBuilder of our own), format combinations, the shape
// checks of configurePlugin / enqueue, serialisation round trips, and what enqueue hands the kernel
// (the checks both plugin generations share are in trt_plugin_checks.h).
//
// -DEDGEDET_TRT_PLUGIN_V3: the IPluginV3 plugin (TensorRT >= 10); otherwise IPluginV2DynamicExt.
// No TensorRT library is linked. The one TensorRT symbol the plugin sources reference,
// getPluginRegistry() (registration at load time), is defined below returning nullptr, which the
// plugins skip. The kernel launcher msda_forward is defined below as a host function that records
// its arguments and runs the shared per-sample arithmetic (msda_sampling.h) on host memory.
#ifndef EDGEDET_MSDA_CUDA_HALF
#define EDGEDET_MSDA_CUDA_HALF  // the shared arithmetic reads __half on the host (cuda_fp16.h)
#endif
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "NvInferRuntime.h"
#include "msda_kernel.cuh"

// ---- What enqueue hands the kernel ----
namespace edgedet {
struct LaunchRecord {
  int calls = 0;
  std::string value_type, coord_type, index_type;
  MsdaDims dims{};
};
LaunchRecord gLaunch;

template <typename T> char const* type_name() {
  if (std::is_same<T, float>::value) return "float";
  if (std::is_same<T, __half>::value) return "half";
  if (std::is_same<T, int32_t>::value) return "int32";
  if (std::is_same<T, int64_t>::value) return "int64";
  return "other";
}

template <typename T, typename C, typename IndexT>
cudaError_t msda_forward(const T* value, const IndexT* shapes, const IndexT* starts, const C* locs, const C* attn,
                         T* output, const MsdaDims& dims, cudaStream_t) {
  gLaunch.calls += 1;
  gLaunch.value_type = type_name<T>();
  gLaunch.coord_type = type_name<C>();
  gLaunch.index_type = type_name<IndexT>();
  gLaunch.dims = dims;
  const int64_t total = static_cast<int64_t>(dims.batch) * dims.num_queries * dims.num_heads * dims.head_dim;
  for (int64_t idx = 0; idx < total; ++idx) {
    const MsdaElement e = msda_element(idx, dims);
    output[idx] = MsdaStore<T>::from(
        msda_forward_element(value + e.value_offset, shapes, starts, locs, attn, e.first_point, dims));
  }
  return cudaSuccess;
}
}  // namespace edgedet

#ifdef EDGEDET_TRT_PLUGIN_V3
#include "msda_plugin_v3.cpp"
#else
#include "msda_plugin_v2.cpp"
#endif

extern "C" nvinfer1::IPluginRegistry* getPluginRegistry() noexcept { return nullptr; }

#include "trt_plugin_checks.h"

#ifdef EDGEDET_TRT_PLUGIN_V3
// ============================== IPluginV3 ==============================
static PluginFieldCollection const* per_level_fields(Fields& f) {
  f.fields.clear();
  f.fields.emplace_back("num_points_per_level", kPoints, PluginFieldType::kINT32, 2);
  f.fields.emplace_back("method", kDiscrete, PluginFieldType::kCHAR, 8);
  return f.get();
}

static IPluginV3OneBuild* build_of(IPluginV3* p) {
  return static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
}
static IPluginV3OneRuntime* runtime_of(IPluginV3* p) {
  return static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
}
static IPluginV3OneCore* core_of(IPluginV3* p) {
  return static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
}

static std::vector<DynamicPluginTensorDesc> dynamic(std::vector<PluginTensorDesc> const& io) {
  std::vector<DynamicPluginTensorDesc> out(io.size());
  for (size_t i = 0; i < io.size(); ++i) {
    out[i].desc = io[i];
    out[i].min = out[i].max = out[i].opt = io[i].dims;
  }
  return out;
}

static void check_plugin_api() {
  int32_t count = 0;
  IPluginCreatorInterface* const* creators = getCreators(count);
  CHECK(count == 1 && creators[0] != nullptr);
  CHECK(getCreators(count)[0] == creators[0]);  // one creator per process
  auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
  CHECK(std::strcmp(creator->getPluginName(), "MultiScaleDeformableAttention") == 0);
  CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0);
  PluginFieldCollection const* names = creator->getFieldNames();
  CHECK(names->nbFields == 2 && std::strcmp(names->fields[0].name, "num_points_per_level") == 0 &&
        names->fields[0].type == PluginFieldType::kINT32 && std::strcmp(names->fields[1].name, "method") == 0 &&
        names->fields[1].type == PluginFieldType::kCHAR);
  CHECK(!edgedetRegisterMsdaPlugin());  // no registry here (getPluginRegistry() is nullptr): refused, no crash

  Fields f;
  std::unique_ptr<IPluginV3> uniform(creator->createPlugin("msda", nullptr, TensorRTPhase::kBUILD));
  std::unique_ptr<IPluginV3> per_level(creator->createPlugin("msda", per_level_fields(f), TensorRTPhase::kBUILD));
  CHECK(uniform && per_level);
  Fields bad;
  bad.fields.emplace_back("method", "bilinear", PluginFieldType::kCHAR, 8);
  CHECK(creator->createPlugin("msda", bad.get(), TensorRTPhase::kBUILD) == nullptr);
  for (auto kind : {PluginCapabilityType::kCORE, PluginCapabilityType::kBUILD, PluginCapabilityType::kRUNTIME}) {
    CHECK(per_level->getCapabilityInterface(kind) != nullptr);
  }
  CHECK(std::strcmp(core_of(per_level.get())->getPluginName(), "MultiScaleDeformableAttention") == 0);
  IPluginV3OneBuild* build = build_of(per_level.get());
  CHECK(build->getNbOutputs() == 1);
  for (DataType t : {DataType::kFLOAT, DataType::kHALF}) {
    DataType in[5] = {t, DataType::kINT32, DataType::kINT32, DataType::kFLOAT, DataType::kFLOAT};
    DataType out = DataType::kINT8;
    CHECK(build->getOutputDataTypes(&out, 1, in, 5) == 0 && out == t);
  }

  check_output_shapes([&](DimsExprs const* in, IExprBuilder& b) {
    DimsExprs out[1]{};
    CHECK(build_of(uniform.get())->getOutputShapes(in, 5, nullptr, 0, out, 1, b) == 0);
    return out[0];
  });
  check_formats<IPluginV3OneBuild, DynamicPluginTensorDesc>(*build, dynamic);

  // configurePlugin refuses disagreeing shapes at build time
  for (bool pl : {false, true}) {
    IPluginV3OneBuild* b = build_of(pl ? per_level.get() : uniform.get());
    auto io = dynamic(Case(pl).io);
    CHECK(b->configurePlugin(io.data(), 5, &io[5], 1) == 0);
    io[1].desc.dims = dims_of({3, 2});
    CHECK(b->configurePlugin(io.data(), 5, &io[5], 1) != 0);
    io = dynamic(Case(!pl).io);
    CHECK(b->configurePlugin(io.data(), 5, &io[5], 1) != 0);
  }

  // serialisation: fields out, a plugin back from them at run time, the same fields again
  auto* runtime = runtime_of(per_level.get());
  PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
  CHECK(saved->nbFields == 2);
  std::unique_ptr<IPluginV3> restored(creator->createPlugin("msda", saved, TensorRTPhase::kRUNTIME));
  CHECK(restored != nullptr);
  PluginFieldCollection const* again = runtime_of(restored.get())->getFieldsToSerialize();
  CHECK(again->nbFields == saved->nbFields);
  for (int32_t i = 0; i < again->nbFields && i < saved->nbFields; ++i) {
    auto const& a = again->fields[i];
    auto const& s = saved->fields[i];
    size_t const bytes = a.type == PluginFieldType::kINT32 ? 4u * a.length : static_cast<size_t>(a.length);
    CHECK(std::strcmp(a.name, s.name) == 0 && a.type == s.type && a.length == s.length &&
          std::memcmp(a.data, s.data, bytes) == 0);
  }
  CHECK(runtime_of(uniform.get())->getFieldsToSerialize()->nbFields == 1);  // uniform: the method only
  std::unique_ptr<IPluginV3> clone(per_level->clone());
  std::unique_ptr<IPluginV3> attached(runtime->attachToContext(nullptr));
  CHECK(clone && attached);

  for (IPluginV3* p : {restored.get(), clone.get(), attached.get()}) {
    for (DataType index : kIndexTypes) {
      check_enqueue(*runtime_of(p), true, edgedet::kDiscrete, DataType::kHALF, index);
    }
  }
  for (DataType t : {DataType::kFLOAT, DataType::kHALF}) {
    check_enqueue(*runtime_of(uniform.get()), false, edgedet::kBilinear, t, DataType::kINT32);
    check_enqueue(*runtime_of(per_level.get()), true, edgedet::kDiscrete, t, DataType::kINT32);
  }
}
#else
// ============================== IPluginV2DynamicExt ==============================
static std::vector<DynamicPluginTensorDesc> dynamic(std::vector<PluginTensorDesc> const& io) {
  std::vector<DynamicPluginTensorDesc> out(io.size());
  for (size_t i = 0; i < io.size(); ++i) {
    out[i].desc = io[i];
    out[i].min = out[i].max = io[i].dims;
  }
  return out;
}

struct Destroy {
  void operator()(IPluginV2* p) const { p->destroy(); }
};
using PluginPtr = std::unique_ptr<IPluginV2DynamicExt, Destroy>;

static PluginPtr as_dynamic(IPluginV2* p) { return PluginPtr(dynamic_cast<IPluginV2DynamicExt*>(p)); }

static std::vector<char> bytes_of(IPluginV2DynamicExt& p) {
  std::vector<char> b(p.getSerializationSize());
  p.serialize(b.data());
  return b;
}

static void check_plugin_api() {
  edgedet::trt::MsdaPluginV2Creator creator;
  CHECK(std::strcmp(creator.getPluginName(), "MultiScaleDeformableAttention") == 0);
  CHECK(std::strcmp(creator.getPluginVersion(), "1") == 0);
  PluginFieldCollection const* names = creator.getFieldNames();
  CHECK(names->nbFields == 2 && std::strcmp(names->fields[0].name, "num_points_per_level") == 0 &&
        names->fields[1].type == PluginFieldType::kCHAR);
  Fields f;
  f.fields.emplace_back("num_points_per_level", kPoints, PluginFieldType::kINT32, 2);
  f.fields.emplace_back("method", kDiscrete, PluginFieldType::kCHAR, 8);
  PluginPtr per_level = as_dynamic(creator.createPlugin("msda", f.get()));
  PluginPtr uniform = as_dynamic(creator.createPlugin("msda", nullptr));
  CHECK(per_level && uniform);
  Fields bad;
  bad.fields.emplace_back("method", "bilinear", PluginFieldType::kCHAR, 8);
  CHECK(creator.createPlugin("msda", bad.get()) == nullptr);
  CHECK(std::strcmp(per_level->getPluginType(), "MultiScaleDeformableAttention") == 0);
  CHECK(per_level->getNbOutputs() == 1);
  for (DataType t : {DataType::kFLOAT, DataType::kHALF}) {
    DataType in[5] = {t, DataType::kINT32, DataType::kINT32, DataType::kFLOAT, DataType::kFLOAT};
    CHECK(per_level->getOutputDataType(0, in, 5) == t);
  }

  check_output_shapes([&](DimsExprs const* in, IExprBuilder& b) {
    return uniform->getOutputDimensions(0, in, 5, b);
  });
  check_formats<IPluginV2DynamicExt, PluginTensorDesc>(*per_level, [](std::vector<PluginTensorDesc> const& io) {
    return io;
  });

  // serialisation: bytes out, a plugin back from them, the same bytes again; malformed bytes refused
  for (IPluginV2DynamicExt* p : {per_level.get(), uniform.get()}) {
    std::vector<char> b = bytes_of(*p);
    PluginPtr restored = as_dynamic(creator.deserializePlugin("msda", b.data(), b.size()));
    CHECK(restored && bytes_of(*restored) == b);
  }
  std::vector<char> b = bytes_of(*per_level);
  CHECK(b.size() == 4 * sizeof(int32_t));  // count, 3, 1, method
  CHECK(creator.deserializePlugin("msda", b.data(), b.size() - 1) == nullptr);
  std::vector<char> wrong = b;
  int32_t const many = 17, method = 5;
  std::memcpy(wrong.data(), &many, 4);
  CHECK(creator.deserializePlugin("msda", wrong.data(), wrong.size()) == nullptr);
  wrong = b;
  std::memcpy(wrong.data() + 12, &method, 4);
  CHECK(creator.deserializePlugin("msda", wrong.data(), wrong.size()) == nullptr);
  PluginPtr restored = as_dynamic(creator.deserializePlugin("msda", b.data(), b.size()));
  PluginPtr clone(per_level->clone());
  CHECK(restored && clone);

  // configurePlugin cannot refuse in V2: enqueue refuses what it flagged
  for (bool pl : {false, true}) {
    PluginPtr p(pl ? per_level->clone() : uniform->clone());
    auto io = dynamic(Case(pl).io);
    p->configurePlugin(io.data(), 5, &io[5], 1);
    check_enqueue(*p, pl, pl ? edgedet::kDiscrete : edgedet::kBilinear, DataType::kHALF, DataType::kINT32);
    auto wrong_io = dynamic(Case(!pl).io);
    p->configurePlugin(wrong_io.data(), 5, &wrong_io[5], 1);
    Case c(pl);
    std::vector<float> dummy(1024);
    void const* inputs[5] = {dummy.data(), dummy.data(), dummy.data(), dummy.data(), dummy.data()};
    void* outputs[1] = {dummy.data()};
    edgedet::gLaunch = edgedet::LaunchRecord{};
    CHECK(p->enqueue(c.io.data(), &c.io[5], inputs, outputs, nullptr, nullptr) != 0 && edgedet::gLaunch.calls == 0);
  }
  for (IPluginV2DynamicExt* p : {restored.get(), clone.get()}) {
    check_enqueue(*p, true, edgedet::kDiscrete, DataType::kFLOAT, DataType::kINT32);
  }
  check_enqueue(*uniform, false, edgedet::kBilinear, DataType::kFLOAT, DataType::kINT32);
}
#endif

int main() {
  check_attribute_parsing();
  check_shape_checks();
  check_plugin_api();
  std::printf("trt-host TensorRT %d.%d %s: %d checks, %d failures\n", NV_TENSORRT_MAJOR, NV_TENSORRT_MINOR,
#ifdef EDGEDET_TRT_PLUGIN_V3
              "IPluginV3",
#else
              "IPluginV2DynamicExt",
#endif
              gChecks, gFailures);
  return gFailures == 0 ? 0 : 1;
}
