// CPU implementations of the flip ops (views: csrc/views.h). Rows are the unit of work: a view
// without a transpose maps each input row to one output row, copied or reversed, so the input is
// read once for all such views; a transposing view gathers each output row from a column.
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

// Row r of a (planes, H, W) layout as (plane of the sample, index of the D*H rows within it).
struct Row {
  int64_t first;  // first row of its (n, m) volume
  int64_t d, h;
};

inline Row row_of(int64_t r, const FlipShapes& s) {
  const int64_t h = r % s.H, d = (r / s.H) % s.D;
  return {r - h - d * s.H, d, h};
}

// Output row `r` of view `code`, for a transposing view: out[w] = x[view_source(d, h, w)].
template <typename T>
inline void gather_row(const T* x, T* out, int code, const Row& row, const FlipShapes& s) {
  for (int64_t w = 0; w < s.W; ++w) {
    int64_t d = row.d, h = row.h, ww = w;
    view_source(code, s.D, s.H, s.W, d, h, ww);
    out[w] = x[(row.first + d * s.H + h) * s.W + ww];
  }
}

Tensor flip_views_cpu(const Tensor& x_in, std::vector<int64_t> views, bool volume) {
  const auto s = flip_shapes(x_in, volume, "flip4");
  check_flip_dtype(x_in, "flip4");
  const ViewList list = view_list(views, s, volume, "flip4");
  const Tensor x = st::contiguous(x_in);
  Tensor out = pooled_empty(flip_views_shape(x, list.count), x.scalar_type());
  const int64_t rows = s.N * s.M * s.D * s.H, block = rows * s.W;  // block: one view of the batch
  dispatch_bytes(x, "marsops.flip4", [&](auto tag) {
    using T = decltype(tag);
    const T* src = static_cast<const T*>(x.const_data_ptr());
    T* dst = static_cast<T*>(out.mutable_data_ptr());
    st::parallel_for(0, rows, kRowsPerTask, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const Row row = row_of(r, s);
        for (int k = 0; k < list.count; ++k) {
          const int code = list.code[k];
          if (code & kTranspose) {
            gather_row(src, dst + k * block + r * s.W, code, row, s);
          } else {  // input row r lands on one output row, reversed by a W flip
            int64_t d = row.d, h = row.h, w = 0;
            view_target(code, s.D, s.H, s.W, d, h, w);
            copy_row(src + r * s.W, dst + k * block + (row.first + d * s.H + h) * s.W, s.W, code & kReverseW);
          }
        }
      }
    });
  });
  return out;
}

Tensor flip_views_sum_cpu(const Tensor& y_in, std::vector<int64_t> views, bool volume, double scale) {
  const int64_t K = static_cast<int64_t>(views.size());
  MARSOPS_CHECK(K >= 1, "marsops.flip4_merge: no views");
  const auto out_shape = flip_views_sum_shape(y_in, K);
  Tensor out = pooled_empty(out_shape, y_in.scalar_type());
  const auto s = flip_shapes(out, volume, "flip4_merge");
  const ViewList list = view_list(views, s, volume, "flip4_merge");
  const Tensor y = st::contiguous(y_in);
  const int64_t rows = s.N * s.M * s.D * s.H, block = rows * s.W;
  dispatch_floating(y.scalar_type(), "marsops.flip4_merge", [&](auto tag) {
    using T = decltype(tag);
    using acc = acc_t<T>;
    const T* src = static_cast<const T*>(y.const_data_ptr());
    T* dst = static_cast<T*>(out.mutable_data_ptr());
    const acc factor = static_cast<acc>(scale);
    st::parallel_for(0, rows, kRowsPerTask, [&](int64_t r0, int64_t r1) {
      std::vector<acc> sum(s.W);
      for (int64_t r = r0; r < r1; ++r) {
        const Row row = row_of(r, s);
        std::fill(sum.begin(), sum.end(), acc(0));
        for (int k = 0; k < list.count; ++k) {  // in view order: the merge's rounding is fixed
          const int code = list.code[k];
          const T* view = src + k * block;
          for (int64_t w = 0; w < s.W; ++w) {
            int64_t d = row.d, h = row.h, ww = w;
            view_target(code, s.D, s.H, s.W, d, h, ww);
            sum[w] += static_cast<acc>(view[(row.first + d * s.H + h) * s.W + ww]);
          }
        }
        T* o = dst + r * s.W;
        for (int64_t w = 0; w < s.W; ++w) o[w] = static_cast<T>(factor * sum[w]);
      }
    });
  });
  return out;
}

Tensor flip_by_flags_cpu(const Tensor& x_in, const Tensor& flags_in, bool volume) {
  const auto s = flip_shapes(x_in, volume, "random_flip");
  check_flip_dtype(x_in, "random_flip");
  check_flags(x_in, flags_in);
  const Tensor x = st::contiguous(x_in), flags = st::contiguous(flags_in);
  Tensor out = pooled_empty(sizes_of(x), x.scalar_type());
  const uint8_t* f = flags.const_data_ptr<uint8_t>();
  // Bits a sample may not use here are ignored (no depth flip of images, no transpose of rectangles).
  const int allowed = kReverseW | kReverseH | (volume ? kReverseD : 0) | (s.H == s.W ? kTranspose : 0);
  const int64_t rows = s.N * s.M * s.D * s.H, per_sample = s.M * s.D * s.H;
  dispatch_bytes(x, "marsops.random_flip", [&](auto tag) {
    using T = decltype(tag);
    const T* src = static_cast<const T*>(x.const_data_ptr());
    T* dst = static_cast<T*>(out.mutable_data_ptr());
    st::parallel_for(0, rows, kRowsPerTask, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int code = f[r / per_sample] & allowed;
        const Row row = row_of(r, s);
        if (code & kTranspose) {
          gather_row(src, dst + r * s.W, code, row, s);
        } else {
          int64_t d = row.d, h = row.h, w = 0;
          view_source(code, s.D, s.H, s.W, d, h, w);
          copy_row(src + (row.first + d * s.H + h) * s.W, dst + r * s.W, s.W, code & kReverseW);
        }
      }
    });
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(marsops, CPU, m) {
  m.impl("flip_views", TORCH_BOX(&flip_views_cpu));
  m.impl("flip_views_sum", TORCH_BOX(&flip_views_sum_cpu));
  m.impl("flip_by_flags", TORCH_BOX(&flip_by_flags_cpu));
}

}  // namespace marsops::cpu
