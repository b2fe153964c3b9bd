// Input checks shared by the CPU and CUDA flip4_argmax ops.
#pragma once
#include <optional>

#include "stable.h"
#include "tta_common.h"

namespace marsops {

struct Flip4ArgmaxShapes {
  Tensor outputs, target;  // outputs contiguous (4N, C, M, H, W); target contiguous (N, M, H, W) or undefined
  Flip4Geometry g;
};

inline Flip4ArgmaxShapes flip4_argmax_shapes(const Tensor& outputs, const std::optional<Tensor>& target) {
  MARSOPS_CHECK(outputs.dim() >= 4 && outputs.size(0) % 4 == 0, "marsops.flip4_argmax: expected flip4 outputs "
                "(4N, C, *, H, W), got shape ", shape_str(outputs));
  MARSOPS_CHECK(is_floating(outputs.scalar_type()), "marsops.flip4_argmax: outputs must be floating point, got ",
                dtype_str(outputs.scalar_type()));
  const int64_t d = outputs.dim(), N = outputs.size(0) / 4, C = outputs.size(1);
  const int64_t H = outputs.size(d - 2), W = outputs.size(d - 1);
  MARSOPS_CHECK(C >= 1, "marsops.flip4_argmax: outputs need at least one class");
  const int64_t M = (N == 0 || H == 0 || W == 0) ? 0 : outputs.numel() / (4 * N * C * H * W);
  Flip4ArgmaxShapes s{st::view(st::contiguous(outputs), {4 * N, C, M, H, W}), Tensor(), {N, C, M, H, W}};
  if (target.has_value()) {
    bool match = target->dim() == d - 1 && target->size(0) == N;
    for (int64_t i = 1; match && i < target->dim(); ++i) match = target->size(i) == outputs.size(i + 1);
    MARSOPS_CHECK(match, "marsops.flip4_argmax: target shape ", shape_str(*target), " does not match outputs shape ",
                  shape_str(outputs), " (expected (N, *, H, W) with 4N outputs)");
    MARSOPS_CHECK(is_integral(target->scalar_type()), "marsops.flip4_argmax: target must be an integer tensor, got ",
                  dtype_str(target->scalar_type()));
    MARSOPS_CHECK(same_device(*target, outputs), "marsops.flip4_argmax: target is on ", device_str(*target),
                  " but the outputs are on ", device_str(outputs));
    s.target = st::view(st::contiguous(*target), {N, M, H, W});
  }
  return s;
}

// The prediction's shape: the target's, (N, *, H, W).
inline std::vector<int64_t> flip4_pred_shape(const Tensor& outputs) {
  auto s = sizes_of(outputs);
  s.erase(s.begin() + 1);
  s[0] /= 4;
  return s;
}

}  // namespace marsops
