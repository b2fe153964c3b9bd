// CUDA implementation of marsops::views_argmax, host side (the kernel: tta_kernels.cuh). A label
// outside [0, C) stops the kernel (device-side assertion).
#include <cassert>

#include "../tta_checks.h"
#include "cuda_utils.cuh"
#include "tta_kernels.cuh"

namespace marsops::cuda {
namespace {

std::tuple<Tensor, Tensor> views_argmax_cuda(const Tensor& outputs, const std::optional<Tensor>& target,
                                             std::optional<int64_t> ignore_index, bool softmax, bool want_pred,
                                             std::vector<int64_t> views, bool volume) {
  const auto s = views_argmax_shapes(outputs, target, views, volume);
  const ViewsGeometry g = s.g;
  const DeviceGuard guard(outputs.get_device_index());
  const cudaStream_t stream = current_stream(outputs);
  Tensor pred = empty_on(outputs, want_pred ? views_pred_shape(outputs, g) : std::vector<int64_t>{0}, ScalarType::Long);
  const bool count = target.has_value();
  Tensor confusion = empty_on(outputs, count ? std::vector<int64_t>{g.C, g.C} : std::vector<int64_t>{0},
                              ScalarType::Long);
  if (count) STD_CUDA_CHECK(cudaMemsetAsync(confusion.mutable_data_ptr(), 0, g.C * g.C * sizeof(int64_t), stream));
  const int64_t total = g.N * g.D * g.H * g.W;
  if (total == 0) return {pred, confusion};
  const LaunchConfig config = grid_stride_on(outputs, total, shared_bins_bytes(g.C, count));
  dispatch_floating(outputs.scalar_type(), "marsops.flip4_argmax", [&](auto x_tag) {
    using T = decltype(x_tag);
    auto run = [&](auto t_tag) {
      using tgt_t = decltype(t_tag);
      launch(views_argmax_kernel<T, tgt_t>, config, stream, static_cast<const T*>(s.outputs.const_data_ptr()), g,
             softmax, count ? static_cast<const tgt_t*>(s.target.const_data_ptr()) : nullptr,
             ignore_index.has_value(), ignore_index.value_or(0),
             want_pred ? pred.mutable_data_ptr<int64_t>() : nullptr,
             count ? static_cast<unsigned long long*>(confusion.mutable_data_ptr()) : nullptr,
             count && shared_bins(g.C));
    };
    if (count) {
      dispatch_integral(s.target.scalar_type(), "marsops.flip4_argmax", run);
    } else {
      run(int64_t{});
    }
  });
  return {pred, confusion};
}

}  // namespace

MARSOPS_CUDA_OPS_IMPL(m) { m.impl("views_argmax", TORCH_BOX(&views_argmax_cuda)); }

}  // namespace marsops::cuda
