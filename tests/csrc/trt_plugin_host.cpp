// The TensorRT MSDA plugins' non-GPU methods, run on the host against the public TensorRT headers
// (tests/test_tensorrt_host.py builds it with g++): the creator's fields and attribute parsing,
// output types and shapes (through an IExprBuilder of our own), format combinations, the shape
// checks of configurePlugin / enqueue, serialisation round trips, and what enqueue hands the kernel.
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

using namespace nvinfer1;
using edgedet::trt::MsdaAttributes;

// ---- Checks ----
static int gChecks = 0, gFailures = 0;
#define CHECK(cond)                                                    \
  do {                                                                 \
    ++gChecks;                                                         \
    if (!(cond)) {                                                     \
      ++gFailures;                                                     \
      std::printf("FAIL line %d: %s\n", __LINE__, #cond);              \
    }                                                                  \
  } while (0)

// ---- An expression builder: constants fold, anything else stays symbolic with its operands ----
struct Expr final : IDimensionExpr, apiv::VDimensionExpr {
  bool constant;
  int64_t value;
  DimensionOperation op;
  Expr const* lhs;
  Expr const* rhs;
  Expr(bool c, int64_t v, DimensionOperation o = DimensionOperation::kSUM, Expr const* a = nullptr,
       Expr const* b = nullptr)
      : constant(c), value(v), op(o), lhs(a), rhs(b) {
    mImpl = this;
  }
  bool isConstant() const override { return constant; }
#if NV_TENSORRT_MAJOR >= 10
  int64_t getConstantValue() const override { return value; }
  bool isSizeTensor() const override { return false; }
#else
  int32_t getConstantValue() const override { return static_cast<int32_t>(value); }
#endif
};

struct ExprBuilder final : IExprBuilder, apiv::VExprBuilder {
  std::deque<Expr> nodes;
  ExprBuilder() { mImpl = this; }
  Expr const* make(bool c, int64_t v, DimensionOperation o = DimensionOperation::kSUM, Expr const* a = nullptr,
                   Expr const* b = nullptr) {
    nodes.emplace_back(c, v, o, a, b);
    return &nodes.back();
  }
  Expr const* symbol() { return make(false, -1); }
#if NV_TENSORRT_MAJOR >= 10
  IDimensionExpr const* constant(int64_t v) override { return make(true, v); }
  IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
    return symbol();
  }
#else
  IDimensionExpr const* constant(int32_t v) override { return make(true, v); }
#endif
  IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& first,
                                  IDimensionExpr const& second) override {
    auto const& a = static_cast<Expr const&>(first);
    auto const& b = static_cast<Expr const&>(second);
    if (a.constant && b.constant && op == DimensionOperation::kPROD) return make(true, a.value * b.value);
    if (a.constant && b.constant && op == DimensionOperation::kSUM) return make(true, a.value + b.value);
    return make(false, -1, op, &a, &b);
  }
};

static Expr const* as_expr(IDimensionExpr const* e) { return static_cast<Expr const*>(e); }

// ---- Helpers ----
static Dims dims_of(std::vector<int64_t> const& d) {
  Dims out{};
  out.nbDims = static_cast<int32_t>(d.size());
  for (size_t i = 0; i < d.size(); ++i) out.d[i] = static_cast<std::remove_reference_t<decltype(out.d[0])>>(d[i]);
  return out;
}

static PluginTensorDesc desc(std::vector<int64_t> const& d, DataType t, TensorFormat f = TensorFormat::kLINEAR) {
  PluginTensorDesc p{};
  p.dims = dims_of(d);
  p.type = t;
  p.format = f;
  p.scale = 1.f;
  return p;
}

#if NV_TENSORRT_MAJOR >= 10
static DataType const kIndexTypes[] = {DataType::kINT32, DataType::kINT64};
static DataType const kAllTypes[] = {DataType::kFLOAT, DataType::kHALF, DataType::kINT8, DataType::kINT32,
                                     DataType::kBOOL, DataType::kBF16, DataType::kINT64};
#else
static DataType const kIndexTypes[] = {DataType::kINT32};
static DataType const kAllTypes[] = {DataType::kFLOAT, DataType::kHALF, DataType::kINT8, DataType::kINT32,
                                     DataType::kBOOL};
#endif

// The five inputs and the output of a case: N=2, S=26 ((4,5) and (2,3)), M=2, D=4, Lq=3.
struct Case {
  bool per_level;
  std::vector<PluginTensorDesc> io;
  explicit Case(bool per_level_, DataType value = DataType::kFLOAT, DataType index = DataType::kINT32)
      : per_level(per_level_) {
    io.push_back(desc({2, 26, 2, 4}, value));
    io.push_back(desc({2, 2}, index));
    io.push_back(desc({2}, index));
    if (per_level) {  // points (3, 1)
      io.push_back(desc({2, 3, 2, 4, 2}, DataType::kFLOAT));
      io.push_back(desc({2, 3, 2, 4}, DataType::kFLOAT));
    } else {  // 2 points per level
      io.push_back(desc({2, 3, 2, 2, 2, 2}, DataType::kFLOAT));
      io.push_back(desc({2, 3, 2, 2, 2}, DataType::kFLOAT));
    }
    io.push_back(desc({2, 3, 8}, value));
  }
  std::vector<Dims> input_dims() const {
    std::vector<Dims> d;
    for (int i = 0; i < 5; ++i) d.push_back(io[i].dims);
    return d;
  }
};

struct Fields {
  std::vector<PluginField> fields;
  PluginFieldCollection fc{};
  PluginFieldCollection const* get() {
    fc.nbFields = static_cast<int32_t>(fields.size());
    fc.fields = fields.data();
    return &fc;
  }
};

static int32_t const kPoints[2] = {3, 1};
static char const kDiscrete[] = "discrete";

// ---- Checks shared by both plugin generations ----
static void check_attribute_parsing() {
  MsdaAttributes a;
  CHECK(a.parse(nullptr) && !a.per_level() && a.method == edgedet::kBilinear);
  Fields f;
  f.fields.emplace_back("num_points_per_level", kPoints, PluginFieldType::kINT32, 2);
  f.fields.emplace_back("method", kDiscrete, PluginFieldType::kCHAR, 8);
  CHECK(a.parse(f.get()) && a.points == std::vector<int32_t>({3, 1}) && a.method == edgedet::kDiscrete);
  f.fields[1].length = 9;  // the length may count the terminating NUL
  CHECK(a.parse(f.get()) && a.method == edgedet::kDiscrete);
  int32_t const method_code = 1;
  f.fields[1] = PluginField("method", &method_code, PluginFieldType::kINT32, 1);
  CHECK(a.parse(f.get()) && a.method == edgedet::kDiscrete);
#if NV_TENSORRT_MAJOR >= 10
  int64_t const points64[3] = {4, 4, 2};
  f.fields[0] = PluginField("num_points_per_level", points64, PluginFieldType::kINT64, 3);
  CHECK(a.parse(f.get()) && a.points == std::vector<int32_t>({4, 4, 2}));
#endif
  // refused: unknown method, a count < 1, more than 16 levels, a float point list
  Fields bad;
  bad.fields.emplace_back("method", "nearest", PluginFieldType::kCHAR, 7);
  CHECK(!a.parse(bad.get()));
  int32_t const zero[2] = {3, 0};
  bad.fields[0] = PluginField("num_points_per_level", zero, PluginFieldType::kINT32, 2);
  CHECK(!a.parse(bad.get()));
  std::vector<int32_t> many(17, 1);
  bad.fields[0] = PluginField("num_points_per_level", many.data(), PluginFieldType::kINT32, 17);
  CHECK(!a.parse(bad.get()));
  float const fl[2] = {3.f, 1.f};
  bad.fields[0] = PluginField("num_points_per_level", fl, PluginFieldType::kFLOAT32, 2);
  CHECK(!a.parse(bad.get()));
}

static void check_shape_checks() {
  MsdaAttributes uniform, per_level;
  per_level.points = {3, 1};
  for (bool pl : {false, true}) {
    MsdaAttributes const& a = pl ? per_level : uniform;
    auto d = Case(pl).input_dims();
    CHECK(a.shapes_ok(d.data()));
    auto unknown = d;  // dynamic extents pass until enqueue
    unknown[0].d[0] = unknown[3].d[0] = unknown[4].d[0] = -1;
    unknown[1].d[0] = unknown[2].d[0] = -1;
    CHECK(a.shapes_ok(unknown.data()));
    auto e = d;
    e[1] = dims_of({3, 2});  // three (H, W) pairs for two levels
    CHECK(!a.shapes_ok(e.data()));
    e = d;
    e[1] = dims_of({2, 3});
    CHECK(!a.shapes_ok(e.data()));
    e = d;
    e[2] = dims_of({3});  // three level starts
    CHECK(!a.shapes_ok(e.data()));
    e = d;
    e[3].d[0] = 5;  // batch differs from the value's
    CHECK(!a.shapes_ok(e.data()));
    e = d;
    e[3].d[2] = 3;  // heads differ
    CHECK(!a.shapes_ok(e.data()));
    e = d;
    e[4].d[1] = 4;  // weights are not locations[:-1]
    CHECK(!a.shapes_ok(e.data()));
    e = d;
    e[0] = dims_of({2, 26, 8});  // value not 4-d
    CHECK(!a.shapes_ok(e.data()));
  }
  auto d = Case(true).input_dims();
  d[3].d[3] = 5;  // K must be 3 + 1
  CHECK(!per_level.shapes_ok(d.data()));
  CHECK(!per_level.shapes_ok(Case(false).input_dims().data()));  // uniform ranks with per-level attributes
  CHECK(!uniform.shapes_ok(Case(true).input_dims().data()));
}

inline PluginTensorDesc& desc_of(PluginTensorDesc& d) { return d; }
inline PluginTensorDesc& desc_of(DynamicPluginTensorDesc& d) { return d.desc; }

// Formats: value FP32/FP16, index types, starts = shapes' type, locations and weights FP32 ALWAYS
// (also in FP16 engines), output = value's type; linear layout only.
template <typename Plugin, typename Desc, typename Wrap>
static void check_formats(Plugin& plugin, Wrap wrap) {
  for (DataType value : {DataType::kFLOAT, DataType::kHALF}) {
    for (DataType index : kIndexTypes) {
      Case c(false, value, index);
      std::vector<Desc> io = wrap(c.io);
      auto accepts = [&](int pos, DataType t, TensorFormat f = TensorFormat::kLINEAR) {
        std::vector<Desc> probe = io;
        PluginTensorDesc& pd = desc_of(probe[pos]);
        pd.type = t;
        pd.format = f;
        return plugin.supportsFormatCombination(pos, probe.data(), 5, 1);
      };
      for (DataType t : kAllTypes) {
        bool const fp = t == DataType::kFLOAT || t == DataType::kHALF;
        bool is_index = false;
        for (DataType it : kIndexTypes) is_index = is_index || it == t;
        CHECK(accepts(0, t) == fp);
        CHECK(accepts(1, t) == is_index);
        CHECK(accepts(2, t) == (t == index));
        CHECK(accepts(3, t) == (t == DataType::kFLOAT));
        CHECK(accepts(4, t) == (t == DataType::kFLOAT));
        CHECK(accepts(5, t) == (t == value));
      }
      for (int pos = 0; pos < 6; ++pos) {
        CHECK(!accepts(pos, desc_of(io[pos]).type, TensorFormat::kCHW32));
      }
      CHECK(!plugin.supportsFormatCombination(0, io.data(), 4, 1));
      CHECK(!plugin.supportsFormatCombination(6, io.data(), 5, 1));
    }
  }
}

// enqueue on host memory: the locations are pixel centres (bilinear) or pixel corners (discrete,
// which rounds loc * size + 0.5 down), so both methods read exactly one pixel
// and the output is sum(weight * value) over points; the launch record says what the kernel got.
template <typename Plugin>
static void check_enqueue(Plugin& plugin, bool per_level, int method, DataType value_type, DataType index_type) {
  Case c(per_level, value_type, index_type);
  int const levels[2][2] = {{4, 5}, {2, 3}};
  int const starts_v[2] = {0, 20};
  std::vector<float> value_f(2 * 26 * 2 * 4);
  for (size_t i = 0; i < value_f.size(); ++i) value_f[i] = static_cast<float>(static_cast<int>(i % 37) - 18) / 8.f;
  std::vector<__half> value_h(value_f.size());
  for (size_t i = 0; i < value_f.size(); ++i) value_h[i] = __float2half(value_f[i]);  // exact: multiples of 1/8
  std::vector<int64_t> idx64 = {4, 5, 2, 3, 0, 20};
  std::vector<int32_t> idx32(idx64.begin(), idx64.end());
  int const points[2] = {per_level ? 3 : 2, per_level ? 1 : 2};
  int const k = points[0] + points[1];
  std::vector<float> locs(2 * 3 * 2 * k * 2), attn(2 * 3 * 2 * k);
  std::vector<float> expected(2 * 3 * 8, 0.f);
  for (int n = 0; n < 2; ++n)
    for (int q = 0; q < 3; ++q)
      for (int m = 0; m < 2; ++m)
        for (int l = 0, p = 0; l < 2; ++l)
          for (int j = 0; j < points[l]; ++j, ++p) {
            int const h = levels[l][0], w = levels[l][1];
            // px < min(H, W): the discrete method clamps x to H - 1 as upstream does (msda.py)
            int const py = (n + 2 * q + j) % h, px = (3 * m + q + 2 * j + l) % (h < w ? h : w);
            size_t const pt = ((static_cast<size_t>(n) * 3 + q) * 2 + m) * k + p;
            float const centre = method == edgedet::kDiscrete ? 0.f : 0.5f;  // discrete: int(loc * size + 0.5)
            locs[2 * pt] = (px + centre) / w;
            locs[2 * pt + 1] = (py + centre) / h;
            attn[pt] = 0.25f * (1 + (p + q) % 3);
            for (int d = 0; d < 4; ++d) {
              size_t const v = ((static_cast<size_t>(n) * 26 + starts_v[l] + py * w + px) * 2 + m) * 4 + d;
              expected[(n * 3 + q) * 8 + m * 4 + d] += attn[pt] * value_f[v];
            }
          }
  bool const half = value_type == DataType::kHALF;
  bool const wide = index_type != DataType::kINT32;
  std::vector<float> out_f(expected.size());
  std::vector<__half> out_h(expected.size());
  void const* inputs[5] = {half ? static_cast<void const*>(value_h.data()) : value_f.data(),
                           wide ? static_cast<void const*>(idx64.data()) : idx32.data(),
                           wide ? static_cast<void const*>(idx64.data() + 4) : idx32.data() + 4, locs.data(),
                           attn.data()};
  void* outputs[1] = {half ? static_cast<void*>(out_h.data()) : out_f.data()};
  edgedet::gLaunch = edgedet::LaunchRecord{};
  CHECK(plugin.enqueue(c.io.data(), &c.io[5], inputs, outputs, nullptr, nullptr) == 0);
  CHECK(edgedet::gLaunch.calls == 1);
  CHECK(edgedet::gLaunch.value_type == (half ? "half" : "float"));
  CHECK(edgedet::gLaunch.coord_type == "float");  // FP32 locations and weights in FP16 engines too
  CHECK(edgedet::gLaunch.index_type == (wide ? "int64" : "int32"));
  auto const& dm = edgedet::gLaunch.dims;
  CHECK(dm.batch == 2 && dm.num_values == 26 && dm.num_heads == 2 && dm.head_dim == 4 && dm.num_queries == 3);
  CHECK(dm.num_levels == 2 && dm.points_per_level[0] == points[0] && dm.points_per_level[1] == points[1] &&
        dm.num_points == k && dm.method == method);
  float worst = 0.f;
  for (size_t i = 0; i < expected.size(); ++i) {
    float const got = half ? __half2float(out_h[i]) : out_f[i];
    float const err = got > expected[i] ? got - expected[i] : expected[i] - got;
    worst = err > worst ? err : worst;
  }
  CHECK(worst <= (half ? 4e-3f : 1e-6f));
  // Disagreeing concrete shapes: refused on the host, nothing launched.
  edgedet::gLaunch = edgedet::LaunchRecord{};
  Case bad = c;
  bad.io[1].dims = dims_of({3, 2});
  CHECK(plugin.enqueue(bad.io.data(), &bad.io[5], inputs, outputs, nullptr, nullptr) != 0);
  bad = c;
  bad.io[4].dims.d[1] = 2;
  CHECK(plugin.enqueue(bad.io.data(), &bad.io[5], inputs, outputs, nullptr, nullptr) != 0);
  CHECK(edgedet::gLaunch.calls == 0);
}

template <typename ShapeFn>
static void check_output_shapes(ShapeFn output_shape) {
  ExprBuilder b;
  Expr const* n = b.symbol();
  Expr const* lq = b.symbol();
  DimsExprs in[5]{};
  auto set = [&](int i, std::vector<Expr const*> d) {
    in[i].nbDims = static_cast<int32_t>(d.size());
    for (size_t j = 0; j < d.size(); ++j) in[i].d[j] = d[j];
  };
  set(0, {n, b.make(true, 26), b.make(true, 8), b.make(true, 32)});
  set(1, {b.make(true, 2), b.make(true, 2)});
  set(2, {b.make(true, 2)});
  set(3, {n, lq, b.make(true, 8), b.make(true, 2), b.make(true, 4), b.make(true, 2)});
  set(4, {n, lq, b.make(true, 8), b.make(true, 2), b.make(true, 4)});
  DimsExprs out = output_shape(in, b);
  CHECK(out.nbDims == 3 && out.d[0] == n && out.d[1] == lq);
  CHECK(out.d[2]->isConstant() && out.d[2]->getConstantValue() == 256);  // M * D
  Expr const* m = b.symbol();  // unknown heads: a product expression of M and D
  in[0].d[2] = m;
  out = output_shape(in, b);
  Expr const* md = as_expr(out.d[2]);
  CHECK(!md->constant && md->op == DimensionOperation::kPROD && md->lhs == m && md->rhs == in[0].d[3]);
}

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
