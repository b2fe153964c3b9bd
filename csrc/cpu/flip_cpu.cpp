// CPU implementations of the flip ops (views: csrc/views.h). Rows are the unit of work: a view
// without a transpose maps each input row to one output row, copied or reversed, so the input is
// read once for all such views; a transposing view gathers each output row from a column.
#include <cstring>
#include <utility>

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

// One view's row added into the merge: the first view starts the sum, the last one finishes it into
// the output (scaled), so K views cost K passes; each pass is a plain (or reversed) loop the
// compiler vectorises.
enum class Step { kFirst, kMiddle, kLast, kOnly };

template <bool REVERSE, typename T, typename acc>
inline void merge_row(Step step, const T* __restrict__ in, int64_t W, acc* __restrict__ sum, T* __restrict__ out,
                      acc factor) {
  auto at = [&](int64_t w) { return static_cast<acc>(in[REVERSE ? W - 1 - w : w]); };
  switch (step) {
    case Step::kFirst: for (int64_t w = 0; w < W; ++w) sum[w] = at(w); break;
    case Step::kMiddle: for (int64_t w = 0; w < W; ++w) sum[w] += at(w); break;
    case Step::kLast: for (int64_t w = 0; w < W; ++w) out[w] = static_cast<T>(factor * (sum[w] + at(w))); break;
    case Step::kOnly: for (int64_t w = 0; w < W; ++w) out[w] = static_cast<T>(factor * at(w)); break;
  }
}

// Four views without a transpose (flip4_merge) in one pass: the four rows, each maybe reversed
// (bit k of REVERSED), summed in view order and scaled.
template <int REVERSED, typename T, typename acc>
inline void merge_four_rows(const T* const* in, int64_t W, T* __restrict__ out, acc factor) {
  const T* __restrict__ a = in[0];
  const T* __restrict__ b = in[1];
  const T* __restrict__ c = in[2];
  const T* __restrict__ d = in[3];
  auto at = [W](const T* row, bool reverse, int64_t w) { return static_cast<acc>(row[reverse ? W - 1 - w : w]); };
  for (int64_t w = 0; w < W; ++w) {
    out[w] = static_cast<T>(factor * (((at(a, REVERSED & 1, w) + at(b, REVERSED & 2, w)) + at(c, REVERSED & 4, w)) +
                                      at(d, REVERSED & 8, w)));
  }
}

template <typename T, typename acc, int... Rs>
inline void merge_four(int reversed, const T* const* in, int64_t W, T* out, acc factor,
                       std::integer_sequence<int, Rs...>) {
  ((reversed == Rs ? merge_four_rows<Rs>(in, W, out, factor) : void()), ...);
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
    bool transposes = false;
    for (int k = 0; k < list.count; ++k) transposes |= (list.code[k] & kTranspose) != 0;
    st::parallel_for(0, rows, kRowsPerTask, [&](int64_t r0, int64_t r1) {
      std::vector<acc> sum(s.W);
      std::vector<T> column(s.W);  // a transposing view's row, gathered from one of its columns
      for (int64_t r = r0; r < r1; ++r) {
        const Row row = row_of(r, s);
        T* o = dst + r * s.W;
        if (list.count == 4 && !transposes) {
          const T* in[4];
          int reversed = 0;
          for (int k = 0; k < 4; ++k) {
            int64_t d = row.d, h = row.h, unused_w = 0;
            view_target(list.code[k], s.D, s.H, s.W, d, h, unused_w);
            in[k] = src + k * block + (row.first + d * s.H + h) * s.W;
            reversed |= (list.code[k] & kReverseW) ? 1 << k : 0;
          }
          merge_four(reversed, in, s.W, o, factor, std::make_integer_sequence<int, 16>{});
          continue;
        }
        for (int k = 0; k < list.count; ++k) {  // in view order: the merge's rounding is fixed
          const int code = list.code[k];
          const T* view = src + k * block;
          const Step step = list.count == 1 ? Step::kOnly : k == 0 ? Step::kFirst
                            : k == list.count - 1 ? Step::kLast : Step::kMiddle;
          if (code & kTranspose) {
            for (int64_t w = 0; w < s.W; ++w) {
              int64_t d = row.d, h = row.h, ww = w;
              view_target(code, s.D, s.H, s.W, d, h, ww);
              column[w] = view[(row.first + d * s.H + h) * s.W + ww];
            }
            merge_row<false>(step, column.data(), s.W, sum.data(), o, factor);
          } else {  // the row sits whole in one row of the view, reversed by a W flip
            int64_t d = row.d, h = row.h, unused_w = 0;
            view_target(code, s.D, s.H, s.W, d, h, unused_w);
            const T* in = view + (row.first + d * s.H + h) * s.W;
            if (code & kReverseW) {
              merge_row<true>(step, in, s.W, sum.data(), o, factor);
            } else {
              merge_row<false>(step, in, s.W, sum.data(), o, factor);
            }
          }
        }
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
