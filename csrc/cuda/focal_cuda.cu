// CUDA implementation of marsops::focal_loss_forward, host side (the kernels: focal_kernels.cuh).
// A call is one memset and one kernel (two with the label pre-pass of the mean reductions), and
// nothing waits for the host.
#include <cassert>
#include <type_traits>

#include "../focal_common.h"
#include "cuda_utils.cuh"
#include "focal_kernels.cuh"

namespace marsops::cuda {
namespace {

std::tuple<Tensor, Tensor, Tensor> focal_loss_forward_cuda(const Tensor& logits_in, const Tensor& target_in,
                                                           const std::optional<Tensor>& weight, double gamma,
                                                           int64_t ignore_index, int64_t reduction, bool compute_grad,
                                                           bool count_confusion, double label_smoothing) {
  MARSOPS_CHECK(logits_in.scalar_type() != ScalarType::Double, "marsops.focal_loss: the CUDA kernel computes in "
                "fp32; float64 logits are supported by the cpu and reference backends");
  const auto s = focal_shapes(logits_in, target_in, weight, gamma, reduction, label_smoothing);
  const DeviceGuard guard(logits_in.get_device_index());
  const ScalarType dtype = logits_in.scalar_type();
  Tensor loss = empty_loss(logits_in, target_in, reduction);
  auto device_empty = [&](const std::vector<int64_t>& sizes, ScalarType t) { return empty_on(logits_in, sizes, t); };
  Tensor grad = compute_grad ? empty_gradient(logits_in, s.class_last, device_empty) : empty_on(logits_in, {0}, dtype);
  Tensor confusion = empty_on(logits_in, count_confusion ? std::vector<int64_t>{s.C, s.C} : std::vector<int64_t>{0},
                              ScalarType::Long);
  const cudaStream_t stream = current_stream(logits_in);
  if (count_confusion) {
    STD_CUDA_CHECK(cudaMemsetAsync(confusion.mutable_data_ptr(), 0, s.C * s.C * sizeof(int64_t), stream));
  }
  const int64_t total = s.N * s.P;
  if (total == 0) {
    if (reduction != kNone) st::fill_(loss, 0.0);
    return {loss, grad, confusion};
  }
  Tensor w;  // kept alive until the kernels ran
  if (weight.has_value()) w = st::contiguous(st::to(*weight, ScalarType::Float));
  const float* w_ptr = w.defined() ? w.const_data_ptr<float>() : nullptr;
  const bool prepass = compute_grad && (reduction == kMean || reduction == kWeightedMean);
  const LaunchConfig pre_config = grid_stride_on(logits_in, total);
  const LaunchConfig config = grid_stride_on(logits_in, total, shared_bins_bytes(s.C, count_confusion));
  const FocalWorkspace layout = focal_workspace(config.grid, prepass);
  Tensor workspace = empty_on(logits_in, {layout.bytes}, ScalarType::Byte);
  char* base = static_cast<char*>(workspace.mutable_data_ptr());
  double* main_partial = reinterpret_cast<double*>(base + layout.main_partial);
  double* pre_partial = reinterpret_cast<double*>(base + layout.pre_partial);
  float* scale = reinterpret_cast<float*>(base + layout.scale);
  unsigned int* counters = reinterpret_cast<unsigned int*>(base + layout.counters);
  STD_CUDA_CHECK(cudaMemsetAsync(counters, 0, 2 * sizeof(unsigned int), stream));
  dispatch_integral(s.target.scalar_type(), "marsops.focal_loss", [&](auto y_tag) {
    using tgt_t = decltype(y_tag);
    const tgt_t* y = s.target.const_data_ptr<tgt_t>();
    if (prepass) {
      launch(target_stats_kernel<tgt_t>, pre_config, stream, y, w_ptr, total, s.C, ignore_index,
             reduction == kWeightedMean, pre_partial, scale, counters + 1);
    }
    dispatch_floating(dtype, "marsops.focal_loss", [&](auto x_tag) {
      using in_t = decltype(x_tag);
      if constexpr (!std::is_same_v<in_t, double>) {
        launch(focal_forward_kernel<in_t, tgt_t>, config, stream, s.logits.const_data_ptr<in_t>(), y, w_ptr, total,
               s.C, s.P, s.class_last ? s.C : 1, s.class_last ? 1 : s.P, static_cast<float>(gamma),
               static_cast<float>(label_smoothing), ignore_index, prepass ? scale : nullptr, reduction,
               static_cast<in_t*>(loss.mutable_data_ptr()),
               compute_grad ? static_cast<saved_grad_t<in_t>*>(grad.mutable_data_ptr()) : nullptr, main_partial,
               counters, count_confusion ? static_cast<unsigned long long*>(confusion.mutable_data_ptr()) : nullptr,
               shared_bins(s.C));
      }
    });
  });
  return {loss, grad, confusion};
}

}  // namespace

MARSOPS_CUDA_OPS_IMPL(m) { m.impl("focal_loss_forward", TORCH_BOX(&focal_loss_forward_cuda)); }

}  // namespace marsops::cuda
