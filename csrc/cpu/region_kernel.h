// The SIMD region-loss kernels (Dice, Jaccard, Tversky, and their sums with a focal /
// cross-entropy term), built once per CPU capability. Two passes over the logits, no softmax
// buffer: the first sums, per class c (and per image when asked),
//   I_c = sum p_c [y = c],   S_c = sum p_c,   T_c = sum [y = c]   over the non-ignored pixels
// (plus the focal term's sums); the loss and dL/dI_c, dL/dS_c follow from these (marsops/losses.py),
// and the second pass writes the gradient: with A = dL/dI, B = dL/dS and p = softmax(x),
//   dL/dx_j = p_j (A_j [y = j] + B_j - A_y p_y - sum_c p_c B_c)   (+ the focal term's gradient).
#pragma once
#include "softmax_block.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {

template <typename in_t, typename acc_t, typename tgt_t>
struct RegionKernel {
  const RegionArgs& a;
  const in_t* x;
  const tgt_t* y;
  const acc_t* fw;  // focal class weights, or nullptr
  acc_t* scratch;   // 3 * C * lanes: exponentials, transposed logits, smoothing coefficients
  acc_t* sums;      // 3 * C * lanes: the per-class vector accumulators of a segment (pass 1)

  int64_t group(int64_t n) const { return a.per_image ? n : 0; }

  template <bool CLASS_LAST, typename V>
  V stats_block(int64_t n, int64_t p, FocalStats& st) const {
    constexpr int L = Lanes<V>::n;
    const int64_t C = a.C;
    acc_t cls_buf[L], wt_buf[L];
    read_labels<L>(y + n * a.P + p, C, a.ignore_index, fw, cls_buf, wt_buf, st);
    const V cls = load_as<V, acc_t, acc_t>(cls_buf);
    const auto valid = cls >= V(0);
    const BlockSoftmax<CLASS_LAST, false, V, in_t, acc_t> sm(x + n * C * a.P + (CLASS_LAST ? p * C : p), C, a.P,
                                                              scratch + C * L, scratch, cls);
    constexpr int VL = Vectorized<acc_t>::size();  // the accumulators' width (the scalar tail uses lane 0)
    for (int64_t c = 0; c < C; ++c) {
      // Ignored pixels are selected out: their logits may hold NaN or inf.
      const V pc = v_where(valid, sm.prob(c), V(0));
      const V is_c = v_where(cls == V(static_cast<acc_t>(c)), V(1), V(0));
      add_region_sums<V, acc_t>(sums + 3 * c * VL, pc * is_c, pc, is_c);
    }
    if (!a.focal) return V(0);
    const FocalPixels<V, acc_t> fp(sm, cls, load_as<V, acc_t, acc_t>(wt_buf), fw, static_cast<acc_t>(a.gamma),
                                   static_cast<acc_t>(a.label_smoothing), scratch + 2 * C * L, acc_t(1));
    return fp.loss;
  }

  // Pass 1 over pixels [p0, p1) of sample n: adds to the group's row of stats, whose first row
  // is group first_group.
  template <bool CLASS_LAST>
  FocalStats stats_segment(int64_t n, int64_t p0, int64_t p1, double* stats, int64_t first_group) const {
    using Vec = Vectorized<acc_t>;
    constexpr int L = Vec::size();
    std::fill(sums, sums + 3 * a.C * L, acc_t(0));
    FocalStats st;
    double loss = 0;  // the focal term's, in double (simd.h, v_sum_double)
    int64_t p = p0;
    for (; p + L <= p1; p += L) loss += v_sum_double(stats_block<CLASS_LAST, Vec>(n, p, st));
    for (; p < p1; ++p) loss += v_sum_double(stats_block<CLASS_LAST, acc_t>(n, p, st));
    flush_region_sums(sums, a.C, stats + (group(n) - first_group) * a.C * 3);
    st.loss_sum = loss;
    return st;
  }

  template <bool CLASS_LAST, typename V>
  void grad_block(int64_t n, int64_t p) const {
    constexpr int L = Lanes<V>::n;
    const int64_t C = a.C;
    FocalStats unused;
    acc_t cls_buf[L], wt_buf[L];
    read_labels<L>(y + n * a.P + p, C, a.ignore_index, fw, cls_buf, wt_buf, unused);
    const V cls = load_as<V, acc_t, acc_t>(cls_buf);
    const auto valid = cls >= V(0);
    const int64_t offset = n * C * a.P + (CLASS_LAST ? p * C : p);
    const BlockSoftmax<CLASS_LAST, false, V, in_t, acc_t> sm(x + offset, C, a.P, scratch + C * L, scratch, cls);
    const acc_t* A = static_cast<const acc_t*>(a.coef_i) + group(n) * C;
    const acc_t* B = static_cast<const acc_t*>(a.coef_s) + group(n) * C;
    acc_t a_y[L];  // A of each lane's label
    for (int i = 0; i < L; ++i) a_y[i] = cls_buf[i] >= 0 ? A[static_cast<int64_t>(cls_buf[i])] : acc_t(0);
    V pb(0);  // sum_c p_c B_c
    for (int64_t c = 0; c < C; ++c) pb = pb + sm.prob(c) * V(B[c]);
    const V shared = load_as<V, acc_t, acc_t>(a_y) * (sm.et * sm.inv_s) + pb;  // A_y p_y + sum_c p_c B_c
    const bool focal = a.focal && a.focal_scale != 0;
    const FocalPixels<V, acc_t> fp = focal ? FocalPixels<V, acc_t>(sm, cls, load_as<V, acc_t, acc_t>(wt_buf), fw,
                                                                    static_cast<acc_t>(a.gamma),
                                                                    static_cast<acc_t>(a.label_smoothing),
                                                                    scratch + 2 * C * L,
                                                                    static_cast<acc_t>(a.focal_scale))
                                           : FocalPixels<V, acc_t>();
    saved_grad_t<in_t>* gn = static_cast<saved_grad_t<in_t>*>(a.grad) + offset;
    for (int64_t c = 0; c < C; ++c) {
      const V pc = sm.prob(c);
      const auto is_label = lanes_eq(cls, V(static_cast<acc_t>(c)));
      V g = pc * (v_where(is_label, V(A[c]), V(0)) + V(B[c]) - shared);
      if (focal) g = g + fp.grad(c, sm.exp(c), is_label);
      g = v_where(valid, g, V(0));  // ignored pixels: exactly 0, whatever their logits hold
      if constexpr (CLASS_LAST) {
        store_as<V, acc_t>(g, sm.tile + c * L);
      } else {
        store_as<V, acc_t>(g, gn + c * a.P);
      }
    }
    if constexpr (CLASS_LAST) scatter_tile<L>(sm.tile, C, gn);
  }

  template <bool CLASS_LAST>
  void grad_segment(int64_t n, int64_t p0, int64_t p1) const {
    using Vec = Vectorized<acc_t>;
    int64_t p = p0;
    for (; p + Vec::size() <= p1; p += Vec::size()) grad_block<CLASS_LAST, Vec>(n, p);
    for (; p < p1; ++p) grad_block<CLASS_LAST, acc_t>(n, p);
  }
};

template <typename Body>
inline void with_region_types(const RegionArgs& a, Body&& body) {
  with_floating(a.logits_dtype, [&](auto x_tag) {
    with_integral(a.target_dtype, [&](auto y_tag) { body(x_tag, y_tag); });
  });
}

inline FocalStats region_stats_range(const RegionArgs& a, int64_t begin, int64_t end, double* stats,
                                     int64_t first_group) {
  FocalStats out;
  with_region_types(a, [&](auto x_tag, auto y_tag) {
    using in_t = decltype(x_tag);
    using acc = compute_t<in_t>;
    const int64_t L = Vectorized<acc>::size();
    std::vector<acc> scratch(3 * a.C * L), sums(3 * a.C * L);
    const RegionKernel<in_t, acc, decltype(y_tag)> k{a, static_cast<const in_t*>(a.logits),
                                                     static_cast<const decltype(y_tag)*>(a.target),
                                                     static_cast<const acc*>(a.focal_weight), scratch.data(),
                                                     sums.data()};
    for_each_segment(begin, end, a.P, [&](int64_t n, int64_t p0, int64_t p1) {
      out.merge(a.class_last ? k.template stats_segment<true>(n, p0, p1, stats, first_group)
                             : k.template stats_segment<false>(n, p0, p1, stats, first_group));
    });
  });
  return out;
}

inline void region_grad_range(const RegionArgs& a, int64_t begin, int64_t end) {
  with_region_types(a, [&](auto x_tag, auto y_tag) {
    using in_t = decltype(x_tag);
    using acc = compute_t<in_t>;
    const int64_t L = Vectorized<acc>::size();
    std::vector<acc> scratch(3 * a.C * L);
    const RegionKernel<in_t, acc, decltype(y_tag)> k{a, static_cast<const in_t*>(a.logits),
                                                     static_cast<const decltype(y_tag)*>(a.target),
                                                     static_cast<const acc*>(a.focal_weight), scratch.data(), nullptr};
    for_each_segment(begin, end, a.P, [&](int64_t n, int64_t p0, int64_t p1) {
      if (a.class_last) {
        k.template grad_segment<true>(n, p0, p1);
      } else {
        k.template grad_segment<false>(n, p0, p1);
      }
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
