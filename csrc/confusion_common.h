// Input checks and shapes shared by the CPU and CUDA confusion-matrix ops.
#pragma once
#include <ATen/ATen.h>

namespace marsops {

// Logits (N, C, P) or predicted labels (N, P), and target (N, P), all contiguous.
struct ConfusionShapes {
  at::Tensor input, target;
  bool from_logits;
  int64_t N, C, P;
};

inline ConfusionShapes confusion_shapes(const at::Tensor& input, const at::Tensor& target, int64_t num_classes) {
  TORCH_CHECK(num_classes >= 1, "marsops.confusion_matrix: num_classes must be >= 1, got ", num_classes);
  TORCH_CHECK(!at::isFloatingType(target.scalar_type()) && target.scalar_type() != at::kBool,
              "marsops.confusion_matrix: target must be an integer tensor, got ", target.scalar_type());
  TORCH_CHECK(target.device() == input.device(), "marsops.confusion_matrix: target is on ", target.device(),
              " but the input is on ", input.device());
  TORCH_CHECK(target.dim() >= 1, "marsops.confusion_matrix: target must be (N, *), got a scalar");
  const bool from_logits = at::isFloatingType(input.scalar_type());
  const int64_t N = target.size(0);
  const int64_t P = N == 0 ? 0 : target.numel() / N;
  if (from_logits) {
    TORCH_CHECK(input.dim() == target.dim() + 1 && input.size(0) == N && input.size(1) == num_classes &&
                    input.sizes().slice(2) == target.sizes().slice(1),
                "marsops.confusion_matrix: logits shape ", input.sizes(), " does not match target shape ",
                target.sizes(), " and num_classes ", num_classes, " (expected (N, num_classes, *target.shape[1:]))");
    return {input.contiguous().view({N, num_classes, P}), target.contiguous().view({N, P}), true, N, num_classes, P};
  }
  TORCH_CHECK(input.scalar_type() != at::kBool, "marsops.confusion_matrix: predictions must be integer labels or "
              "floating-point logits, got bool");
  TORCH_CHECK(input.sizes() == target.sizes(), "marsops.confusion_matrix: predicted labels shape ", input.sizes(),
              " does not match target shape ", target.sizes());
  return {input.contiguous().view({N, P}), target.contiguous().view({N, P}), false, N, num_classes, P};
}

}  // namespace marsops
