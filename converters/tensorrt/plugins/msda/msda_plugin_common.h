// Shared by the TensorRT 10 (IPluginV3) and TensorRT 8.6 (IPluginV2DynamicExt) MSDA plugins:
// names, attributes, tensor checks and the dtype dispatch onto the framework-free CUDA kernel.
//
// Attributes (the ONNX node's, see converters/onnx/msda_forms.py; TensorRT's ONNX parser hands
// INTS over as kINT32 arrays and STRING as kCHAR):
//   num_points_per_level  ints, present iff the per-level layout (locations [N,Lq,M,K,2],
//                         weights [N,Lq,M,K], K = sum); absent = uniform [N,Lq,M,L,P,2] / [N,Lq,M,L,P]
//   method                "default" (bilinear) or "discrete" (RT-DETRv2's nearest pixel)
#pragma once

#include <cstdint>
#include <cstring>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <string>
#include <vector>

#include "NvInfer.h"
#include "msda_kernel.cuh"

namespace edgedet {
namespace trt {

// The ONNX node is edgedet::MultiScaleDeformableAttention (domain opset 1); TensorRT's ONNX
// parser looks plugins up by op type and version, so the plugin carries the same name.
constexpr char const* kPluginName = "MultiScaleDeformableAttention";
constexpr char const* kPluginVersion = "1";
constexpr int32_t kNbInputs = 5;  // value, spatial_shapes, level_start_index, sampling_locations, attention_weights
constexpr char const* kPointsField = "num_points_per_level";
constexpr char const* kMethodField = "method";

// The plugin's attributes. `points` empty = the uniform layout.
struct MsdaAttributes {
  std::vector<int32_t> points;
  int32_t method = kBilinear;

  bool per_level() const { return !points.empty(); }

  // From a PluginFieldCollection (ONNX attributes at build time, our serialised fields at run
  // time). Returns false on an unknown method or a bad point list.
  bool parse(nvinfer1::PluginFieldCollection const* fc) {
    points.clear();
    method = kBilinear;
    if (fc == nullptr) return true;
    for (int32_t i = 0; i < fc->nbFields; ++i) {
      auto const& f = fc->fields[i];
      if (f.name == nullptr) continue;
      if (std::strcmp(f.name, kPointsField) == 0) {
        if (f.type == nvinfer1::PluginFieldType::kINT32) {
          auto const* p = static_cast<int32_t const*>(f.data);
          points.assign(p, p + f.length);
#if NV_TENSORRT_MAJOR >= 10
        } else if (f.type == nvinfer1::PluginFieldType::kINT64) {
          auto const* p = static_cast<int64_t const*>(f.data);
          for (int32_t k = 0; k < f.length; ++k) points.push_back(static_cast<int32_t>(p[k]));
#endif
        } else {
          return false;
        }
      } else if (std::strcmp(f.name, kMethodField) == 0) {
        if (f.type == nvinfer1::PluginFieldType::kCHAR) {
          std::string m(static_cast<char const*>(f.data), static_cast<size_t>(f.length));
          m = m.c_str();  // drop a trailing NUL if the length counted it
          if (m == "default") method = kBilinear;
          else if (m == "discrete") method = kDiscrete;
          else return false;
        } else if (f.type == nvinfer1::PluginFieldType::kINT32) {
          method = *static_cast<int32_t const*>(f.data);
          if (method != kBilinear && method != kDiscrete) return false;
        } else {
          return false;
        }
      }
    }
    if (points.size() > static_cast<size_t>(kMsdaMaxLevels)) return false;
    for (int32_t p : points) if (p < 1) return false;
    return true;
  }

  // Input ranks, the level count L (spatial_shapes [L, 2], level_start_index [L]) and the point
  // counts agree with the locations [N, Lq, M, L, P, 2] / [N, Lq, M, K, 2] and weights (the
  // locations less the last axis), and N and M with the value [N, S, M, D]. Unknown (-1) extents
  // pass here and are checked again with the concrete ones at enqueue. The shapes' VALUES live on
  // the GPU: the kernel checks each level against S before reading it (msda_sampling.h).
  bool shapes_ok(nvinfer1::Dims const* dims) const {
    if (dims[0].nbDims != 4 || dims[1].nbDims != 2 || dims[2].nbDims != 1) return false;
    auto const& locs = dims[3];
    auto const& weights = dims[4];
    if (per_level() ? (locs.nbDims != 5 || weights.nbDims != 4) : (locs.nbDims != 6 || weights.nbDims != 5)) {
      return false;
    }
    auto agree = [](int64_t a, int64_t b) { return a < 0 || b < 0 || a == b; };
    int64_t levels = static_cast<int64_t>(points.size());
    if (!per_level()) {
      levels = locs.d[3];
      if (levels > kMsdaMaxLevels) return false;
    }
    if (!agree(dims[1].d[0], levels) || !agree(dims[1].d[1], 2) || !agree(dims[2].d[0], levels)) return false;
    if (!agree(locs.d[0], dims[0].d[0]) || !agree(locs.d[2], dims[0].d[2]) || !agree(locs.d[locs.nbDims - 1], 2)) {
      return false;
    }
    for (int32_t i = 0; i < weights.nbDims; ++i) {
      if (!agree(weights.d[i], locs.d[i])) return false;
    }
    if (per_level()) {
      int64_t total = 0;
      for (int32_t p : points) total += p;
      if (!agree(locs.d[3], total)) return false;
    }
    return true;
  }
};

inline bool is_index_type(nvinfer1::DataType t) {
#if NV_TENSORRT_MAJOR >= 10
  return t == nvinfer1::DataType::kINT32 || t == nvinfer1::DataType::kINT64;
#else
  return t == nvinfer1::DataType::kINT32;
#endif
}

// Format support shared by both plugin generations: linear layout everywhere; value and output
// share FP32 or FP16; locations and weights are FP32 always (our mixed-precision rule, as in
// edgedet/ops/msda_cuda.py: in half precision a location on an 80-px map moves by up to 0.04 px,
// so an FP16 engine casts the value only); shapes/starts share an index type.
template <typename Desc>
bool supports_combination(int32_t pos, Desc const* io) {
  auto const& d = io[pos];
  if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
  switch (pos) {
    case 0:
      return d.type == nvinfer1::DataType::kFLOAT || d.type == nvinfer1::DataType::kHALF;
    case 1:
      return is_index_type(d.type);
    case 2:
      return d.type == io[1].type;
    case 3:
    case 4:
      return d.type == nvinfer1::DataType::kFLOAT;
    default:  // 5: the output, in the value's type
      return d.type == io[0].type;
  }
}

inline bool dims_from(nvinfer1::Dims const& value, nvinfer1::Dims const& locs, MsdaAttributes const& attrs,
                      MsdaDims& m) {
  m = MsdaDims{};
  m.batch = static_cast<int>(value.d[0]);
  m.num_values = static_cast<int>(value.d[1]);
  m.num_heads = static_cast<int>(value.d[2]);
  m.head_dim = static_cast<int>(value.d[3]);
  m.num_queries = static_cast<int>(locs.d[1]);
  m.method = attrs.method;
  if (!attrs.per_level()) return msda_set_uniform_points(m, static_cast<int>(locs.d[3]), static_cast<int>(locs.d[4]));
  std::vector<int64_t> pts(attrs.points.begin(), attrs.points.end());
  return msda_set_points(m, static_cast<int>(pts.size()), pts.data()) && m.num_points == locs.d[3];
}

template <typename IndexT>
cudaError_t launch_typed(nvinfer1::DataType type, void const* const* in, void* out, MsdaDims const& m, cudaStream_t s) {
  auto shapes = static_cast<IndexT const*>(in[1]);
  auto starts = static_cast<IndexT const*>(in[2]);
  auto locs = static_cast<float const*>(in[3]);  // FP32 in every engine (supports_combination)
  auto weights = static_cast<float const*>(in[4]);
  if (type == nvinfer1::DataType::kHALF) {
    return msda_forward<__half, float, IndexT>(static_cast<__half const*>(in[0]), shapes, starts, locs, weights,
                                               static_cast<__half*>(out), m, s);
  }
  return msda_forward<float, float, IndexT>(static_cast<float const*>(in[0]), shapes, starts, locs, weights,
                                            static_cast<float*>(out), m, s);
}

// Returns 0 on success (TensorRT's convention for enqueue); 1 when the concrete input shapes
// disagree (checked on the host before anything is launched) or the launch fails.
inline int32_t enqueue_msda(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* output,
                            MsdaAttributes const& attrs, cudaStream_t stream) {
  nvinfer1::Dims dims[kNbInputs];
  for (int32_t i = 0; i < kNbInputs; ++i) dims[i] = inputDesc[i].dims;
  MsdaDims m;
  if (!attrs.shapes_ok(dims) || !dims_from(inputDesc[0].dims, inputDesc[3].dims, attrs, m)) return 1;
  cudaError_t err;
#if NV_TENSORRT_MAJOR >= 10
  if (inputDesc[1].type == nvinfer1::DataType::kINT64) {
    err = launch_typed<int64_t>(inputDesc[0].type, inputs, output, m, stream);
  } else
#endif
  {
    err = launch_typed<int32_t>(inputDesc[0].type, inputs, output, m, stream);
  }
  return err == cudaSuccess ? 0 : 1;
}

}  // namespace trt
}  // namespace edgedet
