// Input checks shared by the CPU and CUDA views_argmax ops.
#pragma once
#include <optional>

#include "flip_common.h"
#include "stable.h"
#include "tta_common.h"

namespace marsops {

struct ViewsArgmaxShapes {
  Tensor outputs;  // as given: read in place through its strides
  Tensor target;   // contiguous (N, [D,] H, W), or undefined
  ViewsGeometry g;
};

inline ViewsArgmaxShapes views_argmax_shapes(const Tensor& outputs, const std::optional<Tensor>& target,
                                             const std::vector<int64_t>& views, bool volume) {
  // (K*N, C, H, W), or (K*N, C, D, H, W): volumes, flipped in depth too when `volume`.
  const int64_t dims = outputs.dim(), K = static_cast<int64_t>(views.size());
  MARSOPS_CHECK((dims == 5 || (dims == 4 && !volume)) && K >= 1 && outputs.size(0) % K == 0, "marsops.flip4_argmax: "
                "expected the outputs of ", K, " views, (", K, "N, C, ", volume ? "D, " : "[D, ]", "H, W), got shape ",
                shape_str(outputs));
  MARSOPS_CHECK(is_floating(outputs.scalar_type()), "marsops.flip4_argmax: outputs must be floating point, got ",
                dtype_str(outputs.scalar_type()));
  const int64_t N = outputs.size(0) / K, C = outputs.size(1);
  MARSOPS_CHECK(C >= 1, "marsops.flip4_argmax: outputs need at least one class");
  const int64_t D = dims == 5 ? outputs.size(2) : 1, H = outputs.size(dims - 2), W = outputs.size(dims - 1);
  const FlipShapes fs{N, 1, D, H, W};
  ViewsGeometry g{N, C, D, H, W, outputs.stride(0), outputs.stride(1), dims == 5 ? outputs.stride(2) : 0,
                  outputs.stride(dims - 2), outputs.stride(dims - 1), view_list(views, fs, volume, "flip4_argmax")};
  ViewsArgmaxShapes s{outputs, Tensor(), g};
  if (target.has_value()) {
    bool match = target->dim() == dims - 1 && target->size(0) == N;
    for (int64_t i = 1; match && i < target->dim(); ++i) match = target->size(i) == outputs.size(i + 1);
    MARSOPS_CHECK(match, "marsops.flip4_argmax: target shape ", shape_str(*target), " does not match outputs shape ",
                  shape_str(outputs), " (expected the outputs' shape without classes, N samples)");
    MARSOPS_CHECK(is_integral(target->scalar_type()), "marsops.flip4_argmax: target must be an integer tensor, got ",
                  dtype_str(target->scalar_type()));
    MARSOPS_CHECK(same_device(*target, outputs), "marsops.flip4_argmax: target is on ", device_str(*target),
                  " but the outputs are on ", device_str(outputs));
    s.target = st::contiguous(*target);
  }
  return s;
}

// The prediction's shape: the target's, (N, [D,] H, W).
inline std::vector<int64_t> views_pred_shape(const Tensor& outputs, const ViewsGeometry& g) {
  return outputs.dim() == 5 ? std::vector<int64_t>{g.N, g.D, g.H, g.W} : std::vector<int64_t>{g.N, g.H, g.W};
}

}  // namespace marsops
