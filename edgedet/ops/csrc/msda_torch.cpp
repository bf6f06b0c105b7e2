// PyTorch binding of the CUDA MSDA kernels (thin wrapper; the kernels live in msda_kernel.cu).
// The dtype rules are decided in Python (edgedet/ops/msda_cuda.py) and only checked here.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/extension.h>

#include <vector>

#include "msda_kernel.cuh"

namespace {

template <typename T> struct CudaType { using type = T; };
template <> struct CudaType<at::Half> { using type = __half; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

template <typename T> auto ptr(const torch::Tensor& t) {
  return reinterpret_cast<const typename CudaType<T>::type*>(t.data_ptr<T>());
}
template <typename T> auto mut_ptr(torch::Tensor& t) {
  return reinterpret_cast<typename CudaType<T>::type*>(t.data_ptr<T>());
}

edgedet::MsdaDims dims_of(const torch::Tensor& value, const torch::Tensor& locs, const std::vector<int64_t>& points,
                          int64_t method) {
  TORCH_CHECK(value.dim() == 4, "value must be [N, S, M, D]");
  TORCH_CHECK(locs.dim() == 5 && locs.size(4) == 2, "sampling_locations must be [N, Lq, M, sum(P_l), 2]");
  TORCH_CHECK(method == edgedet::kBilinear || method == edgedet::kDiscrete, "method must be 0 (default) or 1 (discrete)");
  edgedet::MsdaDims d{};
  d.batch = value.size(0);
  d.num_values = value.size(1);
  d.num_heads = value.size(2);
  d.head_dim = value.size(3);
  d.num_queries = locs.size(1);
  d.method = static_cast<int>(method);
  TORCH_CHECK(edgedet::msda_set_points(d, static_cast<int>(points.size()), points.data()),
              "between 1 and ", edgedet::kMsdaMaxLevels, " levels with at least one point each are supported");
  TORCH_CHECK(locs.size(3) == d.num_points, "sampling_locations hold ", locs.size(3), " points, the levels ",
              d.num_points);
  return d;
}

// The level tensors' sizes; their values were checked against value's S tokens in Python
// (msda_cuda.checked_levels), and the kernel skips a level that would read outside them.
void check_levels(const torch::Tensor& shapes, const torch::Tensor& starts, const edgedet::MsdaDims& d) {
  TORCH_CHECK(shapes.dim() == 2 && shapes.size(0) == d.num_levels && shapes.size(1) == 2,
              "spatial_shapes must be [", d.num_levels, ", 2] for ", d.num_levels, " levels, got ", shapes.sizes());
  TORCH_CHECK(starts.dim() == 1 && starts.size(0) == d.num_levels, "level_start_index must be [", d.num_levels,
              "], got ", starts.sizes());
}

void check_inputs(const torch::Tensor& value, const torch::Tensor& shapes, const torch::Tensor& starts,
                  const torch::Tensor& locs, const torch::Tensor& attn) {
  for (const auto* t : {&value, &shapes, &starts, &locs, &attn}) {
    TORCH_CHECK(t->is_cuda() && t->get_device() == value.get_device(), "all MSDA inputs must be on value's CUDA device");
    TORCH_CHECK(t->is_contiguous(), "all MSDA inputs must be contiguous");
  }
  TORCH_CHECK(shapes.scalar_type() == torch::kLong && starts.scalar_type() == torch::kLong,
              "spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(locs.scalar_type() == attn.scalar_type(), "sampling_locations and attention_weights must share a dtype");
  const auto v = value.scalar_type(), c = locs.scalar_type();
  const bool half = v == torch::kHalf || v == torch::kBFloat16;
  TORCH_CHECK(c == v || (half && c == torch::kFloat), "locations/weights must have value's dtype, or float32 when "
              "value is float16/bfloat16; got value ", v, ", locations ", c);
}

template <typename T, typename C>
cudaError_t forward_typed(const torch::Tensor& value, const torch::Tensor& shapes, const torch::Tensor& starts,
                          const torch::Tensor& locs, const torch::Tensor& attn, torch::Tensor& out,
                          const edgedet::MsdaDims& d, cudaStream_t stream) {
  return edgedet::msda_forward(ptr<T>(value), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), ptr<C>(locs),
                               ptr<C>(attn), mut_ptr<T>(out), d, stream);
}

template <typename T, typename C, typename G>
cudaError_t backward_typed(const torch::Tensor& value, const torch::Tensor& shapes, const torch::Tensor& starts,
                           const torch::Tensor& locs, const torch::Tensor& attn, const torch::Tensor& grad_out,
                           torch::Tensor& gv, torch::Tensor& gl, torch::Tensor& ga, const edgedet::MsdaDims& d,
                           cudaStream_t stream) {
  return edgedet::msda_backward(ptr<T>(value), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), ptr<C>(locs),
                                ptr<C>(attn), ptr<T>(grad_out), gv.data_ptr<G>(), gl.data_ptr<G>(), ga.data_ptr<G>(),
                                d, stream);
}

}  // namespace

torch::Tensor msda_forward(const torch::Tensor& value, const torch::Tensor& shapes, const torch::Tensor& starts,
                           const torch::Tensor& locs, const torch::Tensor& attn, const std::vector<int64_t>& points,
                           int64_t method) {
  check_inputs(value, shapes, starts, locs, attn);
  const auto d = dims_of(value, locs, points, method);
  check_levels(shapes, starts, d);
  const c10::cuda::CUDAGuard guard(value.device());
  auto out = torch::empty({d.batch, d.num_queries, d.num_heads * d.head_dim}, value.options());
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const bool f32c = locs.scalar_type() == torch::kFloat;
  cudaError_t err;
  switch (value.scalar_type()) {
    case torch::kFloat: err = forward_typed<float, float>(value, shapes, starts, locs, attn, out, d, stream); break;
    case torch::kDouble: err = forward_typed<double, double>(value, shapes, starts, locs, attn, out, d, stream); break;
    case torch::kHalf:
      err = f32c ? forward_typed<at::Half, float>(value, shapes, starts, locs, attn, out, d, stream)
                 : forward_typed<at::Half, at::Half>(value, shapes, starts, locs, attn, out, d, stream);
      break;
    case torch::kBFloat16:
      err = f32c ? forward_typed<at::BFloat16, float>(value, shapes, starts, locs, attn, out, d, stream)
                 : forward_typed<at::BFloat16, at::BFloat16>(value, shapes, starts, locs, attn, out, d, stream);
      break;
    default:
      TORCH_CHECK(false, "MSDA CUDA supports float32, float64, float16 and bfloat16 values, got ", value.scalar_type());
  }
  TORCH_CHECK(err == cudaSuccess, "MSDA CUDA forward failed: ", cudaGetErrorString(err));
  return out;
}

// Returns float32 (float64 for float64 inputs) gradients; Python casts them to the inputs' dtypes.
std::vector<torch::Tensor> msda_backward(const torch::Tensor& value, const torch::Tensor& shapes,
                                         const torch::Tensor& starts, const torch::Tensor& locs,
                                         const torch::Tensor& attn, const torch::Tensor& grad_out,
                                         const std::vector<int64_t>& points, int64_t method) {
  check_inputs(value, shapes, starts, locs, attn);
  const auto d = dims_of(value, locs, points, method);
  check_levels(shapes, starts, d);
  const c10::cuda::CUDAGuard guard(value.device());
  auto g = grad_out.to(value.scalar_type()).contiguous();
  const auto acc = value.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  auto gv = torch::zeros(value.sizes(), value.options().dtype(acc));
  auto gl = torch::zeros(locs.sizes(), locs.options().dtype(acc));
  auto ga = torch::zeros(attn.sizes(), attn.options().dtype(acc));
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const bool f32c = locs.scalar_type() == torch::kFloat;
  cudaError_t err;
  switch (value.scalar_type()) {
    case torch::kFloat:
      err = backward_typed<float, float, float>(value, shapes, starts, locs, attn, g, gv, gl, ga, d, stream);
      break;
    case torch::kDouble:
      err = backward_typed<double, double, double>(value, shapes, starts, locs, attn, g, gv, gl, ga, d, stream);
      break;
    case torch::kHalf:
      err = f32c ? backward_typed<at::Half, float, float>(value, shapes, starts, locs, attn, g, gv, gl, ga, d, stream)
                 : backward_typed<at::Half, at::Half, float>(value, shapes, starts, locs, attn, g, gv, gl, ga, d, stream);
      break;
    case torch::kBFloat16:
      err = f32c ? backward_typed<at::BFloat16, float, float>(value, shapes, starts, locs, attn, g, gv, gl, ga, d, stream)
                 : backward_typed<at::BFloat16, at::BFloat16, float>(value, shapes, starts, locs, attn, g, gv, gl, ga, d,
                                                                      stream);
      break;
    default:
      TORCH_CHECK(false, "MSDA CUDA supports float32, float64, float16 and bfloat16 values, got ", value.scalar_type());
  }
  TORCH_CHECK(err == cudaSuccess, "MSDA CUDA backward failed: ", cudaGetErrorString(err));
  return {gv, gl, ga};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &msda_forward, "MSDA forward (CUDA)");
  m.def("backward", &msda_backward, "MSDA backward (CUDA); float accumulators");
}
