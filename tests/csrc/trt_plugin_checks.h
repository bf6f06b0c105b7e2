// Checks shared by both TensorRT plugin generations, for trt_plugin_host.cpp (included after the
// plugin source): an IExprBuilder of our own, tensor descriptors of a small case, attribute
// parsing, shape checks, format combinations, output shapes and enqueue.
#pragma once

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

