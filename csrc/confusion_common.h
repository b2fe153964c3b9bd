// Input checks and shapes shared by the CPU and CUDA confusion-matrix ops.
#pragma once
#include "stable.h"

namespace marsops {

// Logits (N, C, P) or, when class_last, (N, P, C) (channels_last logits, read in place), or
// predicted labels (N, P); target (N, P); all contiguous.
struct ConfusionShapes {
  Tensor input, target;
  bool from_logits;
  int64_t N, C, P;
  bool class_last;
};

inline ConfusionShapes confusion_shapes(const Tensor& input, const Tensor& target, int64_t num_classes) {
  MARSOPS_CHECK(num_classes >= 1, "marsops.confusion_matrix: num_classes must be >= 1, got ", num_classes);
  MARSOPS_CHECK(is_integral(target.scalar_type()), "marsops.confusion_matrix: target must be an integer tensor, got ",
                dtype_str(target.scalar_type()));
  MARSOPS_CHECK(same_device(target, input), "marsops.confusion_matrix: target is on ", device_str(target),
                " but the input is on ", device_str(input));
  MARSOPS_CHECK(target.dim() >= 1, "marsops.confusion_matrix: target must be (N, *), got a scalar");
  const bool from_logits = is_floating(input.scalar_type());
  const int64_t N = target.size(0);
  const int64_t P = N == 0 ? 0 : target.numel() / N;
  const Tensor target_flat = st::view(st::contiguous(target), {N, P});
  if (from_logits) {
    bool match = input.dim() == target.dim() + 1 && input.size(0) == N && input.size(1) == num_classes;
    for (int64_t d = 1; match && d < target.dim(); ++d) match = input.size(d + 1) == target.size(d);
    MARSOPS_CHECK(match, "marsops.confusion_matrix: logits shape ", shape_str(input), " does not match target shape ",
                  shape_str(target), " and num_classes ", num_classes,
                  " (expected (N, num_classes, *target.shape[1:]))");
    if (is_class_last(input)) {
      return {st::view(classes_last(input), {N, P, num_classes}), target_flat, true, N,
              num_classes, P, true};
    }
    return {st::view(st::contiguous(input), {N, num_classes, P}), target_flat, true, N, num_classes, P, false};
  }
  MARSOPS_CHECK(is_integral(input.scalar_type()), "marsops.confusion_matrix: predictions must be integer labels or "
                "floating-point logits, got ", dtype_str(input.scalar_type()));
  bool match = input.dim() == target.dim();
  for (int64_t d = 0; match && d < target.dim(); ++d) match = input.size(d) == target.size(d);
  MARSOPS_CHECK(match, "marsops.confusion_matrix: predicted labels shape ", shape_str(input),
                " does not match target shape ", shape_str(target));
  return {st::view(st::contiguous(input), {N, P}), target_flat, false, N, num_classes, P, false};
}

}  // namespace marsops
