// Shapes and checks shared by the CPU and CUDA flip ops. A batch (N, *, H, W) is viewed as
// (N, M, H, W), M the product of the middle dimensions (channels; 1 for masks).
#pragma once
#include "stable.h"

namespace marsops {

struct FlipShapes {
  int64_t N, M, H, W;
};

inline FlipShapes flip_shapes(const Tensor& x, const char* op) {
  MARSOPS_CHECK(x.dim() >= 3, "marsops.", op, ": expected a batch (N, H, W) or (N, C, H, W), got shape ",
                shape_str(x));
  const int64_t N = x.size(0), H = x.size(-2 + x.dim()), W = x.size(-1 + x.dim());
  const int64_t M = (N == 0 || H == 0 || W == 0) ? 0 : x.numel() / (N * H * W);
  return {N, M, H, W};
}

// Output shape of flip4: the batch dimension times 4.
inline std::vector<int64_t> flip4_shape(const Tensor& x) {
  auto s = sizes_of(x);
  s[0] *= 4;
  return s;
}

// Output shape of flip4_sum: the batch dimension divided by 4.
inline std::vector<int64_t> flip4_sum_shape(const Tensor& y) {
  MARSOPS_CHECK(y.dim() >= 3 && y.size(0) % 4 == 0, "marsops.flip4_merge: expected a (4N, *, H, W) flip4 batch, "
                "got shape ", shape_str(y));
  MARSOPS_CHECK(is_floating(y.scalar_type()), "marsops.flip4_merge: expected floating-point outputs, got ",
                dtype_str(y.scalar_type()));
  auto s = sizes_of(y);
  s[0] /= 4;
  return s;
}

inline void check_flags(const Tensor& x, const Tensor& flags) {
  MARSOPS_CHECK(flags.dim() == 1 && flags.size(0) == x.size(0), "marsops.random_flip: flags must be (N,) = (",
                x.size(0), ",), got ", shape_str(flags));
  MARSOPS_CHECK(flags.scalar_type() == ScalarType::Byte, "marsops.random_flip: flags must be uint8, got ",
                dtype_str(flags.scalar_type()));
  MARSOPS_CHECK(same_device(flags, x), "marsops.random_flip: flags are on ", device_str(flags),
                " but the batch is on ", device_str(x));
}

inline void check_flip_dtype(const Tensor& x, const char* op) {
  const auto t = x.scalar_type();
  MARSOPS_CHECK(is_floating(t) || is_integral(t) || t == ScalarType::Bool, "marsops.", op,
                ": expected a real floating, integer or bool tensor, got ", dtype_str(t));
}

}  // namespace marsops
