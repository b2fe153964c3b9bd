// CPU implementations of the flip ops. Rows are the unit of work: each input row is read once
// and written to its (possibly reversed, possibly moved) destinations.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "../flip_common.h"
#include "buffer_pool.h"

namespace marsops::cpu {
namespace {

template <typename T>
inline void copy_row(const T* src, T* dst, int64_t W, bool reverse) {
  if (!reverse) {
    std::memcpy(dst, src, W * sizeof(T));
  } else {
    for (int64_t w = 0; w < W; ++w) dst[W - 1 - w] = src[w];
  }
}

at::Tensor flip4_cpu(const at::Tensor& x_in) {
  const auto s = flip_shapes(x_in, "flip4");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = pooled_empty(flip4_shape(x), x.options());
  const int64_t rows = s.N * s.M * s.H, block = s.N * s.M * s.H * s.W;  // block: one of the 4 copies
  by_element_size(x, [&](auto tag) {
    using T = decltype(tag);
    const T* src = static_cast<const T*>(x.const_data_ptr());
    T* dst = static_cast<T*>(out.mutable_data_ptr());
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t h = r % s.H, plane = r - h;  // plane = first row of this (n, m) image
        const T* row = src + r * s.W;
        T* same = dst + r * s.W;
        T* up_down = dst + (plane + s.H - 1 - h) * s.W;
        copy_row(row, same, s.W, false);                      // as is
        copy_row(row, same + block, s.W, true);               // left-right
        copy_row(row, up_down + 2 * block, s.W, false);       // up-down
        copy_row(row, up_down + 3 * block, s.W, true);        // both
      }
    });
  });
  return out;
}

at::Tensor flip4_sum_cpu(const at::Tensor& y_in, double scale) {
  at::Tensor out = pooled_empty(flip4_sum_shape(y_in), y_in.options());
  const auto s = flip_shapes(out, "flip4_merge");
  const at::Tensor y = y_in.contiguous();
  const int64_t rows = s.N * s.M * s.H, block = rows * s.W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "marsops_flip4_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = y.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const acc_t k = static_cast<acc_t>(scale);
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t h = r % s.H, plane = r - h;
        const scalar_t* same = src + r * s.W;
        const scalar_t* up_down = src + (plane + s.H - 1 - h) * s.W;
        const scalar_t *a = same, *b = same + block, *c = up_down + 2 * block, *d = up_down + 3 * block;
        scalar_t* o = dst + r * s.W;
        for (int64_t w = 0; w < s.W; ++w) {
          const int64_t v = s.W - 1 - w;
          o[w] = static_cast<scalar_t>(k * (static_cast<acc_t>(a[w]) + static_cast<acc_t>(b[v]) +
                                            static_cast<acc_t>(c[w]) + static_cast<acc_t>(d[v])));
        }
      }
    });
  });
  return out;
}

at::Tensor flip_by_flags_cpu(const at::Tensor& x_in, const at::Tensor& flags_in) {
  const auto s = flip_shapes(x_in, "random_flip");
  check_flags(x_in, flags_in);
  const at::Tensor x = x_in.contiguous(), flags = flags_in.contiguous();
  at::Tensor out = pooled_empty(x.sizes(), x.options());
  const uint8_t* f = flags.const_data_ptr<uint8_t>();
  const int64_t rows = s.N * s.M * s.H, per_sample = s.M * s.H;
  by_element_size(x, [&](auto tag) {
    using T = decltype(tag);
    const T* src = static_cast<const T*>(x.const_data_ptr());
    T* dst = static_cast<T*>(out.mutable_data_ptr());
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
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

TORCH_LIBRARY_IMPL(marsops, CPU, m) {
  m.impl("flip4", &flip4_cpu);
  m.impl("flip4_sum", &flip4_sum_cpu);
  m.impl("flip_by_flags", &flip_by_flags_cpu);
}

}  // namespace marsops::cpu
