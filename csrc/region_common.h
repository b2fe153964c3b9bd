// Input checks shared by the region-loss ops (Dice, Jaccard, Tversky, and their sums with a focal /
// cross-entropy term).
#pragma once
#include <optional>

#include "focal_common.h"

namespace marsops {

inline FocalShapes region_shapes(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& focal_weight,
                                 double gamma, double label_smoothing) {
  return focal_shapes(logits, target, focal_weight, gamma, kMean, label_smoothing);
}

inline void check_coefficients(const Tensor& coef, int64_t groups, int64_t C, ScalarType compute, const char* name) {
  MARSOPS_CHECK(coef.dim() == 2 && coef.size(0) == groups && coef.size(1) == C && coef.scalar_type() == compute,
                "marsops.region_loss: ", name, " must be (", groups, ", ", C, ") of ", dtype_str(compute), ", got ",
                shape_str(coef), " of ", dtype_str(coef.scalar_type()));
}

}  // namespace marsops
