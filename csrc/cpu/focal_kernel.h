// The SIMD focal-loss forward (+ fused gradient) kernel, built once per CPU capability.
//
// Layout (N, C, P): for a fixed class the pixels are contiguous, so one SIMD register holds the
// same class of L neighbouring pixels and every per-pixel formula is evaluated L pixels at a time.
#pragma once
#include "kernels.h"
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
  template <typename V>
  inline V block(int64_t n, int64_t p, FocalStats& st) const {
    constexpr int L = Lanes<V>::n;
    const in_t* xn = x + n * C * P + p;
    acc_t cls_buf[L], wt_buf[L];
    read_labels<L>(n * P + p, cls_buf, wt_buf, st);
    const V cls = load_as<V, acc_t, acc_t>(cls_buf);
    const V wt = load_as<V, acc_t, acc_t>(wt_buf);

    V m = load_as<V, acc_t>(xn);
    for (int64_t c = 1; c < C; ++c) m = v_max(m, load_as<V, acc_t>(xn + c * P));
    V s(0), other(0), xt(0), et(0);
    for (int64_t c = 0; c < C; ++c) {
      const V xc = load_as<V, acc_t>(xn + c * P);
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
      in_t* gn = grad + n * C * P + p;
      for (int64_t c = 0; c < C; ++c) {
        const V pc = load_as<V, acc_t, acc_t>(exps + c * L) * inv_s;
        const V delta = v_where(cls == V(static_cast<acc_t>(c)), V(1), V(0));
        store_as<V, acc_t>(v_where(valid, cs * (delta - pc), V(0)), gn + c * P);
      }
    }
    return loss;
  }

  // Pixels [p0, p1) of sample n.
  FocalStats segment(int64_t n, int64_t p0, int64_t p1) const {
    using Vec = Vectorized<acc_t>;
    FocalStats st;
    Vec vloss(0);
    acc_t sloss = 0;
    int64_t p = p0;
    for (; p + Vec::size() <= p1; p += Vec::size()) vloss = vloss + block<Vec>(n, p, st);
    for (; p < p1; ++p) sloss += block<acc_t>(n, p, st);
    st.loss_sum = static_cast<double>(v_sum(vloss)) + static_cast<double>(sloss);
    return st;
  }
};

template <typename in_t, typename tgt_t>
FocalStats run(const FocalArgs& a) {
  using acc_t = at::opmath_type<in_t>;
  const int64_t N = a.logits.size(0), C = a.logits.size(1), P = a.logits.size(2);
  const int64_t total = N * P;
  // Fixed-size chunks, summed in order: the result does not depend on the thread count.
  constexpr int64_t kChunk = 4096;
  const int64_t num_chunks = (total + kChunk - 1) / kChunk;
  std::vector<FocalStats> parts(num_chunks);
  FocalKernel<in_t, acc_t, tgt_t> base{
      a.logits.const_data_ptr<in_t>(), a.target.const_data_ptr<tgt_t>(),
      a.weight.defined() ? a.weight.const_data_ptr<acc_t>() : nullptr, C, P,
      static_cast<acc_t>(a.gamma), a.ignore_index, static_cast<acc_t>(a.grad_scale),
      a.loss_none.defined() ? a.loss_none.mutable_data_ptr<in_t>() : nullptr,
      a.grad.defined() ? a.grad.mutable_data_ptr<in_t>() : nullptr, nullptr};
  at::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<acc_t> scratch(C * Vectorized<acc_t>::size());
    auto k = base;
    k.exps = scratch.data();
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      for_each_segment(chunk * kChunk, std::min(total, (chunk + 1) * kChunk), P,
                       [&](int64_t n, int64_t p0, int64_t p1) { parts[chunk].merge(k.segment(n, p0, p1)); });
    }
  });
  FocalStats total_stats;
  for (const auto& s : parts) total_stats.merge(s);
  return total_stats;
}

inline FocalStats focal_forward_impl(const FocalArgs& a) {
  FocalStats out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.logits.scalar_type(), "marsops_focal_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_INTEGRAL_TYPES(a.target.scalar_type(), "marsops_focal_cpu_target", [&] {
      out = run<in_t, scalar_t>(a);
    });
  });
  return out;
}

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
