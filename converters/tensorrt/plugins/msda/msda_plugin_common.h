// Shared by the TensorRT 10 (IPluginV3) and TensorRT 8.6 (IPluginV2DynamicExt) MSDA plugins:
// names, tensor checks and the dtype dispatch onto the framework-free CUDA kernel.
#pragma once

#include <cstdint>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "NvInfer.h"
#include "msda_kernel.cuh"

namespace edgedet {
namespace trt {

// The ONNX node is edgedet::MultiScaleDeformableAttention (domain opset 1); TensorRT's ONNX
// parser looks plugins up by op type and version, so the plugin carries the same name.
constexpr char const* kPluginName = "MultiScaleDeformableAttention";
constexpr char const* kPluginVersion = "1";
constexpr int32_t kNbInputs = 5;  // value, spatial_shapes, level_start_index, sampling_locations, attention_weights

inline bool is_index_type(nvinfer1::DataType t) {
#if NV_TENSORRT_MAJOR >= 10
  return t == nvinfer1::DataType::kINT32 || t == nvinfer1::DataType::kINT64;
#else
  return t == nvinfer1::DataType::kINT32;
#endif
}

// Format support shared by both plugin generations: linear layout everywhere; value,
// locations, weights and the output share FP32 or FP16; shapes/starts share an index type.
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
    default:  // 3, 4: locations and weights; 5: output
      return d.type == io[0].type;
  }
}

inline MsdaDims dims_from(nvinfer1::Dims const& value, nvinfer1::Dims const& locs) {
  MsdaDims m;
  m.batch = static_cast<int>(value.d[0]);
  m.num_values = static_cast<int>(value.d[1]);
  m.num_heads = static_cast<int>(value.d[2]);
  m.head_dim = static_cast<int>(value.d[3]);
  m.num_queries = static_cast<int>(locs.d[1]);
  m.num_levels = static_cast<int>(locs.d[3]);
  m.num_points = static_cast<int>(locs.d[4]);
  return m;
}

template <typename IndexT>
cudaError_t launch_typed(nvinfer1::DataType type, void const* const* in, void* out, MsdaDims const& m, cudaStream_t s) {
  auto shapes = static_cast<IndexT const*>(in[1]);
  auto starts = static_cast<IndexT const*>(in[2]);
  if (type == nvinfer1::DataType::kHALF) {
    return msda_forward<__half, IndexT>(static_cast<__half const*>(in[0]), shapes, starts,
                                        static_cast<__half const*>(in[3]), static_cast<__half const*>(in[4]),
                                        static_cast<__half*>(out), m, s);
  }
  return msda_forward<float, IndexT>(static_cast<float const*>(in[0]), shapes, starts, static_cast<float const*>(in[3]),
                                     static_cast<float const*>(in[4]), static_cast<float*>(out), m, s);
}

// Returns 0 on success (TensorRT's convention for enqueue).
inline int32_t enqueue_msda(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* output,
                            cudaStream_t stream) {
  MsdaDims m = dims_from(inputDesc[0].dims, inputDesc[3].dims);
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
