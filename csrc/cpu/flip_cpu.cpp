// CPU implementations of the flip ops. Rows are the unit of work: each input row is read once
// and written to its (possibly reversed, possibly moved) destinations.
#include <cstring>

#include "../flip_common.h"
#include "buffer_pool.h"

namespace marsops::cpu {
namespace {

constexpr int64_t kRowsPerTask = 64;

template <typename T>
inline void copy_row(const T* src, T* dst, int64_t W, bool reverse) {
  if (!reverse) {
    std::memcpy(dst, src, W * sizeof(T));
  } else {
    for (int64_t w = 0; w < W; ++w) dst[W - 1 - w] = src[w];
  }
}

Tensor flip4_cpu(const Tensor& x_in) {
  const auto s = flip_shapes(x_in, "flip4");
  check_flip_dtype(x_in, "flip4");
  const Tensor x = st::contiguous(x_in);
  Tensor out = pooled_empty(flip4_shape(x), x.scalar_type());
  const int64_t rows = s.N * s.M * s.H, block = s.N * s.M * s.H * s.W;  // block: one of the 4 copies
  dispatch_bytes(x, "marsops.flip4", [&](auto tag) {
    using T = decltype(tag);
    const T* src = static_cast<const T*>(x.const_data_ptr());
    T* dst = static_cast<T*>(out.mutable_data_ptr());
    st::parallel_for(0, rows, kRowsPerTask, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t h = r % s.H, plane = r - h;  // plane = first row of this (n, m) image
        const T* row = src + r * s.W;
        T* same = dst + r * s.W;
        T* up_down = dst + (plane + s.H - 1 - h) * s.W;
        copy_row(row, same, s.W, false);                 // as is
        copy_row(row, same + block, s.W, true);          // left-right
        copy_row(row, up_down + 2 * block, s.W, false);  // up-down
        copy_row(row, up_down + 3 * block, s.W, true);   // both
      }
    });
  });
  return out;
}

Tensor flip4_sum_cpu(const Tensor& y_in, double scale) {
  const auto out_shape = flip4_sum_shape(y_in);
  Tensor out = pooled_empty(out_shape, y_in.scalar_type());
  const auto s = flip_shapes(out, "flip4_merge");
  const Tensor y = st::contiguous(y_in);
  const int64_t rows = s.N * s.M * s.H, block = rows * s.W;
  dispatch_floating(y.scalar_type(), "marsops.flip4_merge", [&](auto tag) {
    using T = decltype(tag);
    using acc = acc_t<T>;
    const T* src = static_cast<const T*>(y.const_data_ptr());
    T* dst = static_cast<T*>(out.mutable_data_ptr());
    const acc k = static_cast<acc>(scale);
    st::parallel_for(0, rows, kRowsPerTask, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t h = r % s.H, plane = r - h;
        const T* same = src + r * s.W;
        const T* up_down = src + (plane + s.H - 1 - h) * s.W;
        const T *a = same, *b = same + block, *c = up_down + 2 * block, *d = up_down + 3 * block;
        T* o = dst + r * s.W;
        for (int64_t w = 0; w < s.W; ++w) {
          const int64_t v = s.W - 1 - w;
          o[w] = static_cast<T>(k * (static_cast<acc>(a[w]) + static_cast<acc>(b[v]) + static_cast<acc>(c[w]) +
                                     static_cast<acc>(d[v])));
        }
      }
    });
  });
  return out;
}

Tensor flip_by_flags_cpu(const Tensor& x_in, const Tensor& flags_in) {
  const auto s = flip_shapes(x_in, "random_flip");
  check_flip_dtype(x_in, "random_flip");
  check_flags(x_in, flags_in);
  const Tensor x = st::contiguous(x_in), flags = st::contiguous(flags_in);
  Tensor out = pooled_empty(sizes_of(x), x.scalar_type());
  const uint8_t* f = flags.const_data_ptr<uint8_t>();
  const int64_t rows = s.N * s.M * s.H, per_sample = s.M * s.H;
  dispatch_bytes(x, "marsops.random_flip", [&](auto tag) {
    using T = decltype(tag);
    const T* src = static_cast<const T*>(x.const_data_ptr());
    T* dst = static_cast<T*>(out.mutable_data_ptr());
    st::parallel_for(0, rows, kRowsPerTask, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t flip = f[r / per_sample];
        const int64_t h = r % s.H, plane = r - h;
        const int64_t from = (flip & 2) ? plane + s.H - 1 - h : r;  // bit 1: up-down
        copy_row(src + from * s.W, dst + r * s.W, s.W, flip & 1);   // bit 0: left-right
      }
    });
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(marsops, CPU, m) {
  m.impl("flip4", TORCH_BOX(&flip4_cpu));
  m.impl("flip4_sum", TORCH_BOX(&flip4_sum_cpu));
  m.impl("flip_by_flags", TORCH_BOX(&flip_by_flags_cpu));
}

}  // namespace marsops::cpu
