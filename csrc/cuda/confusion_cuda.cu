// CUDA implementation of marsops::confusion_matrix, host side (the kernel: confusion_kernels.cuh).
// A call is one memset and one kernel; a label outside [0, C) stops the kernel (device-side
// assertion).
#include <cassert>

#include "../confusion_common.h"
#include "confusion_kernels.cuh"
#include "cuda_utils.cuh"

namespace marsops::cuda {
namespace {

template <typename x_t, typename tgt_t, bool FROM_LOGITS>
void count_pairs(const ConfusionShapes& s, const Tensor& out, std::optional<int64_t> ignore_index, cudaStream_t stream) {
  const int64_t C = s.C, total = s.N * s.P;
  launch(confusion_kernel<x_t, tgt_t, FROM_LOGITS>, grid_stride_on(out, total, shared_bins_bytes(C, true)), stream,
         s.input.const_data_ptr<x_t>(), s.target.const_data_ptr<tgt_t>(), total, C, s.P, s.class_last ? C : 1,
         s.class_last ? 1 : s.P, ignore_index.has_value(), ignore_index.value_or(0), shared_bins(C),
         static_cast<unsigned long long*>(out.mutable_data_ptr()));
}

Tensor confusion_matrix_cuda(const Tensor& input, const Tensor& target, int64_t num_classes,
                             std::optional<int64_t> ignore_index) {
  const auto s = confusion_shapes(input, target, num_classes);
  const DeviceGuard guard(target.get_device_index());
  Tensor out = empty_on(target, {num_classes, num_classes}, ScalarType::Long);
  const cudaStream_t stream = current_stream(target);
  STD_CUDA_CHECK(cudaMemsetAsync(out.mutable_data_ptr(), 0, num_classes * num_classes * sizeof(int64_t), stream));
  if (s.N * s.P == 0) return out;
  dispatch_integral(s.target.scalar_type(), "marsops.confusion_matrix", [&](auto y_tag) {
    using tgt_t = decltype(y_tag);
    if (s.from_logits) {
      dispatch_floating(s.input.scalar_type(), "marsops.confusion_matrix", [&](auto x_tag) {
        count_pairs<decltype(x_tag), tgt_t, true>(s, out, ignore_index, stream);
      });
    } else {
      dispatch_integral(s.input.scalar_type(), "marsops.confusion_matrix", [&](auto x_tag) {
        count_pairs<decltype(x_tag), tgt_t, false>(s, out, ignore_index, stream);
      });
    }
  });
  return out;
}

}  // namespace

MARSOPS_CUDA_OPS_IMPL(m) { m.impl("confusion_matrix", TORCH_BOX(&confusion_matrix_cuda)); }

}  // namespace marsops::cuda
