// Shapes and checks shared by the CPU and CUDA flip ops. A batch (N, *, H, W) is viewed as
// (N, M, H, W), M the product of the middle dimensions (channels; 1 for masks).
#pragma once
#include <ATen/ATen.h>

namespace marsops {

struct FlipShapes {
  int64_t N, M, H, W;
};

inline FlipShapes flip_shapes(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() >= 3, "marsops.", op, ": expected a batch (N, H, W) or (N, C, H, W), got shape ", x.sizes());
  const int64_t N = x.size(0), H = x.size(-2), W = x.size(-1);
  const int64_t M = (N == 0 || H == 0 || W == 0) ? 0 : x.numel() / (N * H * W);
  return {N, M, H, W};
}

// Output shape of flip4: the batch dimension times 4.
inline std::vector<int64_t> flip4_shape(const at::Tensor& x) {
  auto s = x.sizes().vec();
  s[0] *= 4;
  return s;
}

// Output shape of flip4_sum: the batch dimension divided by 4.
inline std::vector<int64_t> flip4_sum_shape(const at::Tensor& y) {
  TORCH_CHECK(y.dim() >= 3 && y.size(0) % 4 == 0, "marsops.flip4_merge: expected a (4N, *, H, W) flip4 batch, "
              "got shape ", y.sizes());
  TORCH_CHECK(at::isFloatingType(y.scalar_type()), "marsops.flip4_merge: expected floating-point outputs, got ",
              y.scalar_type());
  auto s = y.sizes().vec();
  s[0] /= 4;
  return s;
}

// Flips only move bytes: calls f with an unsigned integer of x's element size.
template <typename F>
inline void by_element_size(const at::Tensor& x, F&& f) {
  switch (x.element_size()) {
    case 1: return f(uint8_t{});
    case 2: return f(uint16_t{});
    case 4: return f(uint32_t{});
    case 8: return f(uint64_t{});
    default: TORCH_CHECK(false, "marsops flips: unsupported element size ", x.element_size());
  }
}

inline void check_flags(const at::Tensor& x, const at::Tensor& flags) {
  TORCH_CHECK(flags.dim() == 1 && flags.size(0) == x.size(0), "marsops.random_flip: flags must be (N,) = (",
              x.size(0), ",), got ", flags.sizes());
  TORCH_CHECK(flags.scalar_type() == at::kByte, "marsops.random_flip: flags must be uint8, got ", flags.scalar_type());
  TORCH_CHECK(flags.device() == x.device(), "marsops.random_flip: flags are on ", flags.device(), " but the batch is on ",
              x.device());
}

}  // namespace marsops
