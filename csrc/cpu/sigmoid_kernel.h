// The SIMD sigmoid focal loss (binary and multi-label masks), built once per CPU capability. Per
// element, with p = sigmoid(x), target t in [0, 1], positive weight w and q = 1 - p_t:
//   ce   = w t softplus(-x) + (1 - t) softplus(x)         (= -(w t log p + (1 - t) log(1 - p)))
//   q    = t (1 - p) + (1 - t) p                          (no cancellation: 1 - p = sigmoid(-x))
//   loss = a_t q^gamma ce,   a_t = alpha t + (1 - alpha)(1 - t)  (1 without alpha)
//   dloss/dx = a_t (gamma q^(gamma-1) dq/dx ce + q^gamma dce/dx),
//   dce/dx = (1 - t) p - w t (1 - p),   dq/dx = -p (1 - p)(2t - 1)
// with q^(gamma-1) dq/dx computed as q^gamma (dq/dx / q), where |dq/dx / q| <= 1 (q^(gamma-1)
// alone overflows for a tiny q and gamma < 1), and the first term 0 at q = 0, its limit.
#pragma once
#include "softmax_block.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {

// Target values of n elements as the compute type, with a 1/0 validity mask; counts and the first
// bad target go to st. Float targets are soft labels in [0, 1]; integer ones 0, 1 or ignore_index.
template <int n, typename acc_t, typename tgt_t>
inline void read_binary_targets(const tgt_t* y, bool has_ignore, int64_t ignore_index, acc_t* t, acc_t* valid,
                                FocalStats& st) {
  for (int i = 0; i < n; ++i) {
    bool ok;
    if constexpr (std::is_integral_v<tgt_t>) {
      const int64_t label = static_cast<int64_t>(y[i]);
      const bool ignored = has_ignore && label == ignore_index;
      const bool bad = !ignored && label != 0 && label != 1;
      if (bad && !st.bad) {
        st.bad = true;
        st.bad_label = label;
      }
      ok = !ignored && !bad;
      t[i] = ok ? static_cast<acc_t>(label) : acc_t(0);
    } else {
      const acc_t v = static_cast<acc_t>(y[i]);
      ok = v >= acc_t(0) && v <= acc_t(1);  // false for NaN
      if (!ok && !st.bad) st.bad = true;
      t[i] = ok ? v : acc_t(0);
    }
    valid[i] = ok ? acc_t(1) : acc_t(0);
    st.count += ok;
  }
}

template <typename V, typename acc_t>
struct SigmoidFocalTerms {
  V loss, grad;

  SigmoidFocalTerms(V x, V t, V w, acc_t alpha, acc_t gamma, acc_t scale) {
    const V zero(0), one(1);
    // exp(-|x|) in [0, 1]: no overflow. NaN for a NaN logit, as in the scalar tail (at::vec's
    // exp_u20, which v_exp_nonpositive is but for fp32 on AVX2 / AVX-512, clamps a NaN argument
    // to a finite value), so that its loss and gradient are NaN alike.
    const V e = v_where(x != x, x, v_exp_nonpositive(zero - v_abs(x)));
    const V l1 = v_log1p(e);
    const V inv = one / (one + e);
    const auto nonneg = x >= zero;
    const V p = v_where(nonneg, inv, e * inv), omp = v_where(nonneg, e * inv, inv);  // sigmoid(x), sigmoid(-x)
    const V a = w * t, b = one - t;
    const V sp_neg = v_max(zero - x, zero) + l1, sp_pos = v_max(x, zero) + l1;  // -log p, -log(1 - p)
    const V q = t * omp + b * p;
    const V qg = pow_gamma(q, gamma);
    const V at = alpha < 0 ? one : V(alpha) * t + V(acc_t(1) - alpha) * b;
    const V dce = b * p - a * omp;
    // ce = a sp_neg + b sp_pos, with the factors multiplied first: a product then leaves the type's
    // range only where the loss does (a pos_weight > 1 times a logit near the type's limit), and a
    // zero factor gives 0, never 0 * inf.
    V g = qg * dce;
    if (gamma != acc_t(0)) {
      const V dq = zero - p * omp * (t + t - one);
      const V r = v_min(v_max(dq / v_where(q > zero, q, one), zero - one), one);
      const V f = V(gamma) * qg * r;
      // 0 where q does not move (dq = 0: a saturated sigmoid, whose ce may be inf for an inf logit)
      g = g + v_where(f == zero, zero, v_where(q > zero, (f * a) * sp_neg + (f * b) * sp_pos, zero));
    }
    const V k = at * qg;
    loss = (k * a) * sp_neg + (k * b) * sp_pos;
    grad = at * g * V(scale);
  }
};

template <typename in_t, typename acc_t, typename tgt_t>
struct SigmoidKernel {
  const SigmoidArgs& a;

  template <typename V>
  void block(int64_t i, acc_t w, double& loss_acc, FocalStats& st) const {
    constexpr int L = Lanes<V>::n;
    acc_t t_buf[L], valid_buf[L];
    read_binary_targets<L>(static_cast<const tgt_t*>(a.target) + i, a.has_ignore, a.ignore_index, t_buf, valid_buf,
                           st);
    const auto valid = load_as<V, acc_t, acc_t>(valid_buf) > V(0);
    const V x = load_as<V, acc_t, in_t>(static_cast<const in_t*>(a.logits) + i);
    const SigmoidFocalTerms<V, acc_t> f(x, load_as<V, acc_t, acc_t>(t_buf), V(w), static_cast<acc_t>(a.alpha),
                                        static_cast<acc_t>(a.gamma), static_cast<acc_t>(a.grad_scale));
    // Ignored elements are selected out: their logits may hold NaN or inf.
    const V loss = v_where(valid, f.loss, V(0));
    loss_acc += v_sum_double(loss);
    if (a.loss_none) store_as<V, acc_t>(loss, static_cast<in_t*>(a.loss_none) + i);
    if (a.grad) store_as<V, acc_t>(v_where(valid, f.grad, V(0)), static_cast<saved_grad_t<in_t>*>(a.grad) + i);
  }

  FocalStats range(int64_t begin, int64_t end) const {
    using Vec = Vectorized<acc_t>;
    FocalStats st;
    double loss = 0;  // in double (simd.h, v_sum_double)
    const acc_t* pw = static_cast<const acc_t*>(a.pos_weight);
    for_each_segment(begin, end, a.P, [&](int64_t plane, int64_t p0, int64_t p1) {
      const acc_t w = pw ? pw[plane % a.C] : acc_t(1);
      const int64_t base = plane * a.P;
      int64_t p = p0;
      for (; p + Vec::size() <= p1; p += Vec::size()) block<Vec>(base + p, w, loss, st);
      for (; p < p1; ++p) block<acc_t>(base + p, w, loss, st);
    });
    st.loss_sum = loss;
    return st;
  }
};

inline FocalStats sigmoid_focal_range(const SigmoidArgs& a, int64_t begin, int64_t end) {
  FocalStats out;
  with_floating(a.logits_dtype, [&](auto x_tag) {
    using in_t = decltype(x_tag);
    using acc = compute_t<in_t>;
    auto run = [&](auto y_tag) { out = SigmoidKernel<in_t, acc, decltype(y_tag)>{a}.range(begin, end); };
    const ScalarType td = a.target_dtype;
    if (td == ScalarType::Float || td == ScalarType::Double || td == ScalarType::Half || td == ScalarType::BFloat16) {
      with_floating(a.target_dtype, run);
    } else {
      with_integral(a.target_dtype, run);
    }
  });
  return out;
}

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
