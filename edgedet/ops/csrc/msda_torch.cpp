// PyTorch binding of the CUDA MSDA kernels (thin wrapper; the kernels live in msda_kernel.cu).
#include <ATen/cuda/CUDAContext.h>
#include <cuda_fp16.h>
#include <torch/extension.h>

#include "msda_kernel.cuh"

namespace {

edgedet::MsdaDims dims_of(const torch::Tensor& value, const torch::Tensor& locs) {
  TORCH_CHECK(value.dim() == 4, "value must be [N, S, M, D]");
  TORCH_CHECK(locs.dim() == 6 && locs.size(5) == 2, "sampling_locations must be [N, Lq, M, L, P, 2]");
  edgedet::MsdaDims d;
  d.batch = value.size(0);
  d.num_values = value.size(1);
  d.num_heads = value.size(2);
  d.head_dim = value.size(3);
  d.num_queries = locs.size(1);
  d.num_levels = locs.size(3);
  d.num_points = locs.size(4);
  return d;
}

void check_inputs(const torch::Tensor& value, const torch::Tensor& shapes, const torch::Tensor& starts,
                  const torch::Tensor& locs, const torch::Tensor& attn) {
  for (const auto* t : {&value, &shapes, &starts, &locs, &attn}) {
    TORCH_CHECK(t->is_cuda(), "all MSDA inputs must be CUDA tensors");
    TORCH_CHECK(t->is_contiguous(), "all MSDA inputs must be contiguous");
  }
  TORCH_CHECK(shapes.scalar_type() == torch::kLong && starts.scalar_type() == torch::kLong,
              "spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(locs.scalar_type() == value.scalar_type() && attn.scalar_type() == value.scalar_type(),
              "value, sampling_locations and attention_weights must share one dtype");
}

}  // namespace

torch::Tensor msda_forward(const torch::Tensor& value, const torch::Tensor& shapes, const torch::Tensor& starts,
                           const torch::Tensor& locs, const torch::Tensor& attn) {
  check_inputs(value, shapes, starts, locs, attn);
  const auto d = dims_of(value, locs);
  auto out = torch::empty({d.batch, d.num_queries, d.num_heads * d.head_dim}, value.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  cudaError_t err;
  const int64_t* s = shapes.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  switch (value.scalar_type()) {
    case torch::kFloat:
      err = edgedet::msda_forward<float, int64_t>(value.data_ptr<float>(), s, st, locs.data_ptr<float>(),
                                                  attn.data_ptr<float>(), out.data_ptr<float>(), d, stream);
      break;
    case torch::kDouble:
      err = edgedet::msda_forward<double, int64_t>(value.data_ptr<double>(), s, st, locs.data_ptr<double>(),
                                                   attn.data_ptr<double>(), out.data_ptr<double>(), d, stream);
      break;
    case torch::kHalf:
      err = edgedet::msda_forward<__half, int64_t>(
          reinterpret_cast<const __half*>(value.data_ptr<at::Half>()), s, st,
          reinterpret_cast<const __half*>(locs.data_ptr<at::Half>()),
          reinterpret_cast<const __half*>(attn.data_ptr<at::Half>()),
          reinterpret_cast<__half*>(out.data_ptr<at::Half>()), d, stream);
      break;
    default:
      TORCH_CHECK(false, "MSDA CUDA forward supports float32, float16 and float64, got ", value.scalar_type());
  }
  TORCH_CHECK(err == cudaSuccess, "MSDA CUDA forward failed: ", cudaGetErrorString(err));
  return out;
}

std::vector<torch::Tensor> msda_backward(const torch::Tensor& value, const torch::Tensor& shapes,
                                         const torch::Tensor& starts, const torch::Tensor& locs,
                                         const torch::Tensor& attn, const torch::Tensor& grad_out) {
  check_inputs(value, shapes, starts, locs, attn);
  const auto d = dims_of(value, locs);
  auto g = grad_out.contiguous();
  auto grad_value = torch::zeros_like(value);
  auto grad_locs = torch::zeros_like(locs);
  auto grad_attn = torch::zeros_like(attn);
  auto stream = at::cuda::getCurrentCUDAStream();
  cudaError_t err;
  const int64_t* s = shapes.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  switch (value.scalar_type()) {
    case torch::kFloat:
      err = edgedet::msda_backward<float, int64_t>(value.data_ptr<float>(), s, st, locs.data_ptr<float>(),
                                                   attn.data_ptr<float>(), g.data_ptr<float>(),
                                                   grad_value.data_ptr<float>(), grad_locs.data_ptr<float>(),
                                                   grad_attn.data_ptr<float>(), d, stream);
      break;
    case torch::kDouble:
      err = edgedet::msda_backward<double, int64_t>(value.data_ptr<double>(), s, st, locs.data_ptr<double>(),
                                                    attn.data_ptr<double>(), g.data_ptr<double>(),
                                                    grad_value.data_ptr<double>(), grad_locs.data_ptr<double>(),
                                                    grad_attn.data_ptr<double>(), d, stream);
      break;
    default:
      TORCH_CHECK(false, "MSDA CUDA backward supports float32 and float64 (train in fp32/AMP), got ",
                  value.scalar_type());
  }
  TORCH_CHECK(err == cudaSuccess, "MSDA CUDA backward failed: ", cudaGetErrorString(err));
  return {grad_value, grad_locs, grad_attn};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &msda_forward, "MSDA forward (CUDA)");
  m.def("backward", &msda_backward, "MSDA backward (CUDA)");
}
