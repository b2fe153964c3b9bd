// CPU implementation of marsops::confusion_matrix.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../confusion_common.h"
#include "kernels.h"

namespace marsops::cpu {
namespace {

at::Tensor confusion_matrix_cpu(const at::Tensor& input, const at::Tensor& target, int64_t num_classes,
                                c10::optional<int64_t> ignore_index) {
  const auto s = confusion_shapes(input, target, num_classes);
  at::Tensor out = at::zeros({num_classes, num_classes}, target.options().dtype(at::kLong));
  if (s.N * s.P == 0) return out;
  const ConfusionResult r = simd_kernels().confusion(
      {s.input, s.target, num_classes, ignore_index.has_value(), ignore_index.value_or(0)});
  TORCH_CHECK_VALUE(!r.bad_target, "marsops.confusion_matrix: target contains label ", r.bad_value,
                    ", outside [0, ", num_classes, ") and not ignore_index");
  TORCH_CHECK_VALUE(!r.bad_pred, "marsops.confusion_matrix: predictions contain label ", r.bad_value,
                    ", outside [0, ", num_classes, ")");
  std::copy(r.counts.begin(), r.counts.end(), out.mutable_data_ptr<int64_t>());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(marsops, CPU, m) { m.impl("confusion_matrix", &confusion_matrix_cpu); }

}  // namespace marsops::cpu
