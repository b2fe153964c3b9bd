// Input checks and shapes shared by the CPU and CUDA focal-loss ops.
#pragma once
#include <ATen/ATen.h>

namespace marsops {

enum Reduction : int64_t { kNone = 0, kSum = 1, kMean = 2, kWeightedMean = 3 };

// Logits viewed as (N, C, P) and target as (N, P), both contiguous.
struct FocalShapes {
  at::Tensor logits, target;
  int64_t N, C, P;
};

inline FocalShapes focal_shapes(const at::Tensor& logits, const at::Tensor& target,
                                const c10::optional<at::Tensor>& weight, int64_t reduction) {
  TORCH_CHECK(logits.dim() >= 2, "marsops.focal_loss: logits must be (N, C) or (N, C, *spatial), got shape ",
              logits.sizes());
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "marsops.focal_loss: logits must be floating point, got ",
              logits.scalar_type());
  TORCH_CHECK(!at::isFloatingType(target.scalar_type()) && target.scalar_type() != at::kBool,
              "marsops.focal_loss: target must be an integer tensor, got ", target.scalar_type());
  TORCH_CHECK(target.dim() == logits.dim() - 1 && target.size(0) == logits.size(0) &&
                  target.sizes().slice(1) == logits.sizes().slice(2),
              "marsops.focal_loss: target shape ", target.sizes(), " does not match logits shape ", logits.sizes(),
              " (expected logits shape without the class dimension)");
  TORCH_CHECK(target.device() == logits.device(), "marsops.focal_loss: target is on ", target.device(),
              " but logits are on ", logits.device());
  TORCH_CHECK(reduction >= kNone && reduction <= kWeightedMean, "marsops.focal_loss: bad reduction code ", reduction);
  const int64_t N = logits.size(0), C = logits.size(1);
  TORCH_CHECK(C >= 1, "marsops.focal_loss: logits need at least one class");
  if (weight.has_value()) {
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == C, "marsops.focal_loss: weight must have shape (", C,
                "), got ", weight->sizes());
    TORCH_CHECK(weight->device() == logits.device(), "marsops.focal_loss: weight is on ", weight->device(),
                " but logits are on ", logits.device());
  }
  const int64_t P = N == 0 ? 0 : logits.numel() / (N * C);
  return {logits.contiguous().view({N, C, P}), target.contiguous().view({N, P}), N, C, P};
}

// Shape of the per-pixel loss: the target's shape.
inline at::Tensor empty_loss(const at::Tensor& logits, const at::Tensor& target, int64_t reduction) {
  return reduction == kNone ? at::empty(target.sizes(), logits.options()) : at::empty({}, logits.options());
}

inline at::Tensor empty_grad(const at::Tensor& logits, bool compute_grad) {
  return compute_grad ? at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous))
                      : at::empty({0}, logits.options());
}

}  // namespace marsops
