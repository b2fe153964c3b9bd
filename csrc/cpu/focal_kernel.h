// The SIMD focal-loss forward (+ fused gradient, + confusion counts) kernel, built once per CPU
// capability. One SIMD register holds the same class of L neighbouring pixels, and every
// per-pixel formula is evaluated L pixels at a time (softmax_block.h).
#pragma once
#include "softmax_block.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {

template <typename in_t, typename acc_t, typename tgt_t>
struct FocalKernel {
  const in_t* x;
  const tgt_t* y;   // the labels of pixels [y_first, ...) of the flattened (N, P) index
  int64_t y_first;
  const acc_t* w;  // nullptr: all ones
  int64_t C, P;
  acc_t gamma, eps;
  int64_t ignore_index;
  acc_t grad_scale;
  in_t* loss_none;  // nullptr: reduced
  saved_grad_t<in_t>* grad;  // nullptr: no gradient (fp32 for fp16 logits: csrc/saved_grad.h)
  acc_t* scratch;   // 3 * C * lanes: exponentials, transposed logits, smoothing coefficients
  bool labels_checked;  // FocalArgs::labels_checked: no counts, no validation

  // Processes the lanes of V at pixel p of sample n; returns the summed loss of those lanes.
  // COUNT: also adds each non-ignored pixel's (label, argmax) pair to hist. KC > 0: C as a
  // compile-time constant (BlockSoftmax).
  template <bool COUNT, bool CLASS_LAST, int KC, typename V>
  [[gnu::always_inline]] inline V block(int64_t n, int64_t p, FocalStats& st, int64_t* hist) const {
    constexpr int L = Lanes<V>::n;
    acc_t cls_buf[L], wt_buf[L];
    if (labels_checked) {
      read_checked_labels<L>(y + (n * P + p - y_first), ignore_index, w, KC > 0 ? KC : C, cls_buf, wt_buf);
    } else {
      read_labels<L>(y + (n * P + p - y_first), C, ignore_index, w, cls_buf, wt_buf, st);
    }
    const V cls = load_as<V, acc_t, acc_t>(cls_buf);
    const int64_t offset = n * C * P + (CLASS_LAST ? p * C : p);
    using Softmax = BlockSoftmax<CLASS_LAST, COUNT, V, in_t, acc_t, KC>;
    const Softmax sm(x + offset, C, P, scratch + C * L, scratch, cls);
    if constexpr (COUNT) {
      acc_t pred_buf[L];
      store_as<V, acc_t>(sm.pred, pred_buf);
      for (int i = 0; i < L; ++i)
        if (cls_buf[i] >= 0) hist[static_cast<int64_t>(cls_buf[i]) * C + static_cast<int64_t>(pred_buf[i])] += 1;
    }
    const FocalPixels<V, acc_t> fp(sm, cls, load_as<V, acc_t, acc_t>(wt_buf), w, gamma, eps, scratch + 2 * C * L,
                                   grad_scale);
    if (loss_none) store_as<V, acc_t>(fp.loss, loss_none + n * P + p);
    if (grad) {
      saved_grad_t<in_t>* gn = grad + offset;
      [[maybe_unused]] V g_rows[Softmax::kRegisterRows ? KC : 1];  // class-last: transposed from registers
      V c_v(0);  // the class index as a vector, counted rather than converted each class
      for (int64_t c = 0; c < sm.classes(); ++c, c_v = c_v + V(1)) {
        const V g = fp.grad(c, sm.exp(c), lanes_eq(cls, c_v));
        if constexpr (Softmax::kRegisterRows) {
          g_rows[c] = g;
        } else if constexpr (CLASS_LAST) {
          store_as<V, acc_t>(g, sm.tile + c * L);  // the logits are no longer needed: reuse the tile
        } else {
          store_as<V, acc_t>(g, gn + c * P);
        }
      }
      if constexpr (Softmax::kRegisterRows) {
        class_last::scatter_rows<KC>(g_rows, gn);
      } else if constexpr (CLASS_LAST && Softmax::kFixedTranspose) {
        class_last::scatter<KC, L>(sm.tile, gn);
      } else if constexpr (CLASS_LAST) {
        scatter_tile<L>(sm.tile, C, gn);
      }
    }
    return fp.loss;
  }

  // Pixels [p0, p1) of sample n.
  template <bool COUNT, bool CLASS_LAST, int KC>
  FocalStats segment(int64_t n, int64_t p0, int64_t p1, int64_t* hist) const {
    using Vec = Vectorized<acc_t>;
    constexpr int L = Vec::size();
    FocalStats st;
    // In double (simd.h, v_sum_double), one running sum per lane (independent adds, where one sum
    // of every lane in turn was a chain of L dependent double adds per block), added up in lane
    // order at the end of the segment: the order depends on the segment only, not on the threads.
    double lanes[L] = {};
    int64_t p = p0;
    for (; p + L <= p1; p += L) add_lanes_double(block<COUNT, CLASS_LAST, KC, Vec>(n, p, st, hist), lanes);
    double loss = 0;
    for (int i = 0; i < L; ++i) loss += lanes[i];
    for (; p < p1; ++p) loss += v_sum_double(block<COUNT, CLASS_LAST, KC, acc_t>(n, p, st, hist));
    st.loss_sum = loss;
    return st;
  }
};

// The largest C given its own compile-time copy of the focal kernel (fp32 logits; int64 labels,
// other label dtypes widened to them).
constexpr int kMaxFixedFocalClasses = 8;

// fp32 logits whose labels are another integer dtype (int32, uint8 masks) and few classes: the
// range's labels widened to int64 first, so the compile-time copies (and, on AVX2 / AVX-512, the
// vector label reads) serve them too (1.4-1.6x slower without). focal_cpu.cpp's ranges are its
// chunks of 4096 pixels, so the copy stays small.
template <typename tgt_t>
FocalStats focal_range_widened(const FocalArgs& a, int64_t begin, int64_t end, int64_t* hist);

// target_first: a.target holds the labels from this flattened pixel index on (a widened range).
template <typename in_t, typename tgt_t>
FocalStats focal_range_typed(const FocalArgs& a, int64_t begin, int64_t end, int64_t* hist,
                             int64_t target_first = 0) {
  if constexpr (std::is_same_v<in_t, float> && !std::is_same_v<tgt_t, int64_t>) {
    if (a.C <= kMaxFixedFocalClasses) return focal_range_widened<tgt_t>(a, begin, end, hist);
  }
  using acc = compute_t<in_t>;
  std::vector<acc> scratch(3 * a.C * Vectorized<acc>::size());
  const FocalKernel<in_t, acc, tgt_t> kernel{
      static_cast<const in_t*>(a.logits), static_cast<const tgt_t*>(a.target), target_first,
      static_cast<const acc*>(a.weight),
      a.C, a.P, static_cast<acc>(a.gamma), static_cast<acc>(a.label_smoothing), a.ignore_index,
      static_cast<acc>(a.grad_scale), static_cast<in_t*>(a.loss_none), static_cast<saved_grad_t<in_t>*>(a.grad),
      scratch.data(), a.labels_checked};
  FocalStats st;
  auto run = [&](auto kc) {
    constexpr int KC = decltype(kc)::value;
    for_each_segment(begin, end, a.P, [&](int64_t n, int64_t p0, int64_t p1) {
      if (a.class_last) {
        st.merge(hist ? kernel.template segment<true, true, KC>(n, p0, p1, hist)
                      : kernel.template segment<false, true, KC>(n, p0, p1, hist));
      } else {
        st.merge(hist ? kernel.template segment<true, false, KC>(n, p0, p1, hist)
                      : kernel.template segment<false, false, KC>(n, p0, p1, hist));
      }
    });
  };
  // fp32 logits with int64 labels (the common case) and few classes: C at compile time.
  if constexpr (std::is_same_v<in_t, float> && std::is_same_v<tgt_t, int64_t>) {
    if (with_class_count<kMaxFixedFocalClasses>(a.C, run)) return st;
  }
  run(std::integral_constant<int, 0>{});
  return st;
}

template <typename tgt_t>
FocalStats focal_range_widened(const FocalArgs& a, int64_t begin, int64_t end, int64_t* hist) {
  const tgt_t* y = static_cast<const tgt_t*>(a.target);
  std::vector<int64_t> wide(end - begin);
  for (int64_t i = begin; i < end; ++i) wide[i - begin] = static_cast<int64_t>(y[i]);
  FocalArgs w = a;
  w.target = wide.data();
  w.target_dtype = ScalarType::Long;
  return focal_range_typed<float, int64_t>(w, begin, end, hist, begin);
}

inline FocalStats focal_range(const FocalArgs& a, int64_t begin, int64_t end, int64_t* hist) {
  FocalStats out;
  with_floating(a.logits_dtype, [&](auto x_tag) {
    with_integral(a.target_dtype, [&](auto y_tag) {
      out = focal_range_typed<decltype(x_tag), decltype(y_tag)>(a, begin, end, hist);
    });
  });
  return out;
}

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
