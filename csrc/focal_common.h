// Input checks and shapes shared by the CPU and CUDA focal-loss ops.
#pragma once
#include <optional>

#include "reduction.h"
#include "saved_grad.h"
#include "stable.h"

namespace marsops {


// Logits viewed as (N, C, P) contiguous, or as (N, P, C) contiguous when class_last (channels_last
// logits, read in place); target as (N, P) contiguous.
struct FocalShapes {
  Tensor logits, target;
  int64_t N, C, P;
  bool class_last;
};

inline FocalShapes focal_shapes(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                                double gamma, int64_t reduction, double label_smoothing = 0.0) {
  MARSOPS_CHECK(label_smoothing >= 0 && label_smoothing <= 1, "marsops.focal_loss: label_smoothing must be in "
                "[0, 1], got ", label_smoothing);
  MARSOPS_CHECK(logits.dim() >= 2, "marsops.focal_loss: logits must be (N, C) or (N, C, *spatial), got shape ",
                shape_str(logits));
  MARSOPS_CHECK(is_floating(logits.scalar_type()), "marsops.focal_loss: logits must be floating point, got ",
                dtype_str(logits.scalar_type()));
  MARSOPS_CHECK(is_integral(target.scalar_type()), "marsops.focal_loss: target must be an integer tensor, got ",
                dtype_str(target.scalar_type()));
  bool shapes_match = target.dim() == logits.dim() - 1 && target.size(0) == logits.size(0);
  for (int64_t d = 1; shapes_match && d < target.dim(); ++d) shapes_match = target.size(d) == logits.size(d + 1);
  MARSOPS_CHECK(shapes_match, "marsops.focal_loss: target shape ", shape_str(target), " does not match logits shape ",
                shape_str(logits), " (expected logits shape without the class dimension)");
  MARSOPS_CHECK(same_device(target, logits), "marsops.focal_loss: target is on ", device_str(target),
                " but logits are on ", device_str(logits));
  MARSOPS_CHECK(reduction >= kNone && reduction <= kWeightedMean, "marsops.focal_loss: bad reduction code ",
                reduction);
  MARSOPS_CHECK(gamma >= 0, "marsops.focal_loss: gamma must be >= 0, got ", gamma);
  const int64_t N = logits.size(0), C = logits.size(1);
  MARSOPS_CHECK(C >= 1, "marsops.focal_loss: logits need at least one class");
  if (weight.has_value()) {
    MARSOPS_CHECK(weight->dim() == 1 && weight->size(0) == C, "marsops.focal_loss: weight must have shape (", C,
                  ",), got ", shape_str(*weight));
    MARSOPS_CHECK(is_floating(weight->scalar_type()), "marsops.focal_loss: weight must be floating point, got ",
                  dtype_str(weight->scalar_type()));
    MARSOPS_CHECK(same_device(*weight, logits), "marsops.focal_loss: weight is on ", device_str(*weight),
                  " but logits are on ", device_str(logits));
  }
  const int64_t P = N == 0 ? 0 : logits.numel() / (N * C);
  const Tensor y = st::view(st::contiguous(target), {N, P});
  if (is_class_last(logits)) return {st::view(classes_last(logits), {N, P, C}), y, N, C, P, true};
  return {st::view(st::contiguous(logits), {N, C, P}), y, N, C, P, false};
}

// The gradient, uninitialised, in the logits' layout (class-last stays class-last) and the saved
// gradient's dtype (saved_grad.h), allocated by `alloc(sizes, dtype)` as a contiguous tensor.
template <typename Alloc>
Tensor empty_gradient(const Tensor& logits, bool class_last, Alloc alloc) {
  const ScalarType dtype = saved_grad_dtype(logits.scalar_type());
  if (!class_last) return alloc(sizes_of(logits), dtype);
  return classes_second(alloc(sizes_of(classes_last(logits)), dtype));
}

// The per-pixel loss has the target's shape; reduced losses are 0-dim.
inline Tensor empty_loss(const Tensor& logits, const Tensor& target, int64_t reduction) {
  return reduction == kNone ? empty_on(logits, sizes_of(target), logits.scalar_type())
                            : empty_on(logits, {}, logits.scalar_type());
}

}  // namespace marsops
