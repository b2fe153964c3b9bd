// Shapes and checks shared by the CPU and CUDA flip ops. A batch (N, *, H, W) is viewed as
// (N, M, D, H, W): D the depth of a volume (N, *, D, H, W) when `volume`, else 1, and M the
// product of the middle dimensions (channels; 1 for masks).
#pragma once
#include "stable.h"
#include "views.h"

namespace marsops {

struct FlipShapes {
  int64_t N, M, D, H, W;
  int64_t plane() const { return D * H * W; }
};

inline FlipShapes flip_shapes(const Tensor& x, bool volume, const char* op) {
  const int64_t need = volume ? 4 : 3;
  MARSOPS_CHECK(x.dim() >= need, "marsops.", op, ": expected a batch (N, *, ", volume ? "D, " : "",
                "H, W), got shape ", shape_str(x));
  const int64_t d = x.dim(), N = x.size(0), H = x.size(d - 2), W = x.size(d - 1), D = volume ? x.size(d - 3) : 1;
  const int64_t M = (N == 0 || D == 0 || H == 0 || W == 0) ? 0 : x.numel() / (N * D * H * W);
  return {N, M, D, H, W};
}

inline ViewList view_list(const std::vector<int64_t>& views, const FlipShapes& s, bool volume, const char* op) {
  MARSOPS_CHECK(!views.empty() && views.size() <= static_cast<size_t>(kMaxViews), "marsops.", op, ": between 1 and ",
                kMaxViews, " views, got ", views.size());
  ViewList list{static_cast<int>(views.size()), {}};
  for (size_t k = 0; k < views.size(); ++k) {
    const int64_t code = views[k];
    MARSOPS_CHECK(code >= 0 && code < 16, "marsops.", op, ": view codes lie in [0, 16), got ", code);
    MARSOPS_CHECK(volume || !(code & kReverseD), "marsops.", op, ": a depth flip (view ", code, ") needs a volume");
    MARSOPS_CHECK(!(code & kTranspose) || s.H == s.W, "marsops.", op, ": a transposing view (", code,
                  ") needs square images, got H = ", s.H, ", W = ", s.W);
    list.code[k] = static_cast<int8_t>(code);
  }
  return list;
}

// Output shape of flip_views: the batch dimension times the number of views.
inline std::vector<int64_t> flip_views_shape(const Tensor& x, int64_t views) {
  auto s = sizes_of(x);
  s[0] *= views;
  return s;
}

// Output shape of flip_views_sum: the batch dimension divided by the number of views.
inline std::vector<int64_t> flip_views_sum_shape(const Tensor& y, int64_t views) {
  MARSOPS_CHECK(views >= 1 && y.dim() >= 3 && y.size(0) % views == 0, "marsops.flip4_merge: expected a (", views,
                "N, *, H, W) batch of ", views, " views, got shape ", shape_str(y));
  MARSOPS_CHECK(is_floating(y.scalar_type()), "marsops.flip4_merge: expected floating-point outputs, got ",
                dtype_str(y.scalar_type()));
  auto s = sizes_of(y);
  s[0] /= views;
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

// Flips move bytes, so every real dtype works (uint16 / uint32 / uint64 included); complex is refused.
inline void check_flip_dtype(const Tensor& x, const char* op) {
  const auto t = x.scalar_type();
  const bool complex = t == ScalarType::ComplexHalf || t == ScalarType::ComplexFloat || t == ScalarType::ComplexDouble;
  MARSOPS_CHECK(!complex, "marsops.", op, ": complex tensors are not supported, got ", dtype_str(t));
}

}  // namespace marsops
