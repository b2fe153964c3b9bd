// The SIMD focal-loss forward (+ fused gradient) kernel, built once per CPU capability.
//
// One SIMD register holds the same class of L neighbouring pixels, and every per-pixel formula is
// evaluated L pixels at a time. Layout (N, C, P) (contiguous NCHW): those L values are contiguous
// and loaded directly. Class-last layout (N, P, C) (channels_last): a block's L x C values are one
// contiguous run, transposed once into a [C][L] tile; the gradient goes back the same way.
#pragma once
#include "simd.h"

// SIMD overloads of the primitives focal_math.h uses; declared before it so its templates see them.
namespace marsops {
template <typename T>
inline at::vec::Vectorized<T> m_sqrt(const at::vec::Vectorized<T>& v) { return v.sqrt(); }
template <typename T>
inline at::vec::Vectorized<T> m_pow(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b) {
  return a.pow(b);
}
template <typename T>
inline at::vec::Vectorized<T> m_where_lt(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b,
                                         const at::vec::Vectorized<T>& t, const at::vec::Vectorized<T>& f) {
  return at::vec::Vectorized<T>::blendv(f, t, a < b);
}
}  // namespace marsops

#include "../focal_math.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {

template <typename in_t, typename acc_t, typename tgt_t>
struct FocalKernel {
  const in_t* x;
  const tgt_t* y;
  const acc_t* w;  // nullptr: all ones
  int64_t C, P;
  acc_t gamma;
  int64_t ignore_index;
  acc_t grad_scale;
  in_t* loss_none;  // nullptr: reduced
  in_t* grad;       // nullptr: no gradient
  acc_t* exps;      // scratch: C * lanes
  acc_t* tile;      // scratch: C * lanes (class-last layout)

  // Reads labels of `n` pixels, validating them; ignored / invalid ones get class -1, weight 0.
  template <int n>
  inline void read_labels(int64_t pix, acc_t* cls, acc_t* wt, FocalStats& st) const {
    for (int i = 0; i < n; ++i) {
      const int64_t t = static_cast<int64_t>(y[pix + i]);
      const bool ignored = t == ignore_index;
      const bool bad = !ignored && (t < 0 || t >= C);
      if (bad && !st.bad) { st.bad = true; st.bad_label = t; }
      const bool valid = !ignored && !bad;
      cls[i] = valid ? static_cast<acc_t>(t) : acc_t(-1);
      wt[i] = valid ? (w ? w[t] : acc_t(1)) : acc_t(0);
      st.count += valid;
      st.weight_sum += wt[i];
    }
  }

  // Processes the lanes of V at pixel p of sample n; returns the summed loss of those lanes.
  // COUNT: also adds each non-ignored pixel's (label, argmax) pair to hist.
  template <bool COUNT, bool CLASS_LAST, typename V>
  inline V block(int64_t n, int64_t p, FocalStats& st, int64_t* hist) const {
    constexpr int L = Lanes<V>::n;
    acc_t cls_buf[L], wt_buf[L];
    read_labels<L>(n * P + p, cls_buf, wt_buf, st);
    const V cls = load_as<V, acc_t, acc_t>(cls_buf);
    const V wt = load_as<V, acc_t, acc_t>(wt_buf);

    const in_t* xn = x + n * C * P + (CLASS_LAST ? p * C : p);
    if constexpr (CLASS_LAST) gather_tile<L>(xn, C, tile);
    auto logits = [&](int64_t c) {
      if constexpr (CLASS_LAST) {
        return load_as<V, acc_t, acc_t>(tile + c * L);
      } else {
        return load_as<V, acc_t>(xn + c * P);
      }
    };

    V m = logits(0);
    V best = m, pred(0);
    for (int64_t c = 1; c < C; ++c) {
      const V xc = logits(c);
      m = v_max(m, xc);
      if constexpr (COUNT) {  // torch.argmax: the first maximum; a NaN beats every number
        const auto take = (xc > best) | ((xc != xc) & (best == best));
        best = v_where(take, xc, best);
        pred = v_where(take, V(static_cast<acc_t>(c)), pred);
      }
    }
    if constexpr (COUNT) {
      acc_t pred_buf[L];
      store_as<V, acc_t>(pred, pred_buf);
      for (int i = 0; i < L; ++i)
        if (cls_buf[i] >= 0) hist[static_cast<int64_t>(cls_buf[i]) * C + static_cast<int64_t>(pred_buf[i])] += 1;
    }
    V s(0), other(0), xt(0), et(0);
    for (int64_t c = 0; c < C; ++c) {
      const V xc = logits(c);
      const V e = v_exp(xc - m);
      store_as<V, acc_t>(e, exps + c * L);
      const auto is_t = cls == V(static_cast<acc_t>(c));
      s = s + e;
      xt = v_where(is_t, xc, xt);
      et = v_where(is_t, e, et);
      other = other + v_where(is_t, V(0), e);
    }
    const V inv_s = V(1) / s;
    const V logp = xt - m - v_log(s);
    V loss, coef;
    focal_terms(logp, et * inv_s, other * inv_s, wt, gamma, loss, coef);
    // Ignored pixels are selected out, not multiplied by a zero weight: their logits may hold
    // NaN or inf, which must not reach the loss or the gradient (as in F.cross_entropy).
    const auto valid = cls >= V(0);
    loss = v_where(valid, loss, V(0));
    if (loss_none) store_as<V, acc_t>(loss, loss_none + n * P + p);
    if (grad) {
      const V cs = coef * V(grad_scale);
      in_t* gn = grad + n * C * P + (CLASS_LAST ? p * C : p);
      for (int64_t c = 0; c < C; ++c) {
        const V pc = load_as<V, acc_t, acc_t>(exps + c * L) * inv_s;
        const V delta = v_where(cls == V(static_cast<acc_t>(c)), V(1), V(0));
        const V g = v_where(valid, cs * (delta - pc), V(0));
        if constexpr (CLASS_LAST) {
          store_as<V, acc_t>(g, tile + c * L);
        } else {
          store_as<V, acc_t>(g, gn + c * P);
        }
      }
      if constexpr (CLASS_LAST) scatter_tile<L>(tile, C, gn);
    }
    return loss;
  }

  // Pixels [p0, p1) of sample n.
  template <bool COUNT, bool CLASS_LAST>
  FocalStats segment(int64_t n, int64_t p0, int64_t p1, int64_t* hist) const {
    using Vec = Vectorized<acc_t>;
    FocalStats st;
    Vec vloss(0);
    acc_t sloss = 0;
    int64_t p = p0;
    for (; p + Vec::size() <= p1; p += Vec::size()) vloss = vloss + block<COUNT, CLASS_LAST, Vec>(n, p, st, hist);
    for (; p < p1; ++p) sloss += block<COUNT, CLASS_LAST, acc_t>(n, p, st, hist);
    st.loss_sum = static_cast<double>(v_sum(vloss)) + static_cast<double>(sloss);
    return st;
  }
};

template <typename in_t, typename tgt_t>
FocalStats focal_range_typed(const FocalArgs& a, int64_t begin, int64_t end, int64_t* hist) {
  using acc = compute_t<in_t>;
  const int64_t lanes = Vectorized<acc>::size();
  std::vector<acc> scratch(2 * a.C * lanes);
  const FocalKernel<in_t, acc, tgt_t> kernel{
      static_cast<const in_t*>(a.logits), static_cast<const tgt_t*>(a.target), static_cast<const acc*>(a.weight),
      a.C, a.P, static_cast<acc>(a.gamma), a.ignore_index, static_cast<acc>(a.grad_scale),
      static_cast<in_t*>(a.loss_none), static_cast<in_t*>(a.grad), scratch.data(), scratch.data() + a.C * lanes};
  FocalStats st;
  for_each_segment(begin, end, a.P, [&](int64_t n, int64_t p0, int64_t p1) {
    if (a.class_last) {
      st.merge(hist ? kernel.template segment<true, true>(n, p0, p1, hist)
                    : kernel.template segment<false, true>(n, p0, p1, hist));
    } else {
      st.merge(hist ? kernel.template segment<true, false>(n, p0, p1, hist)
                    : kernel.template segment<false, false>(n, p0, p1, hist));
    }
  });
  return st;
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
