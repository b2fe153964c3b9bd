// Per-pixel focal-loss math shared by the CPU kernels (scalar and SIMD) and the CUDA kernel,
// so the CPU tests exercise the same formulas the GPU runs.
//
// With p = softmax(x)[t], q = 1 - p and l = -w * q^gamma * log p:
//   dl/dx_j = w * (gamma * q^gamma * p * (log p / q) - q^gamma) * (delta_tj - p_j)
// q is computed as (sum of the other classes' exps) / (sum of all exps), which is exact where
// 1 - p would cancel, and log p / q is replaced by its series -1 - q/2 - q^2/3 - q^3/4 near
// q = 0 (truncation error below 3e-13 for q < 1e-3), and p * (log p / q) by its limit 0 where p
// underflows to 0, so no finite input yields a NaN or an infinite gradient.
//
// -log p = (m - x) + log s (m: the largest logit, s: the sum of exp(x_c - m)). For finite logits
// more than the type's largest value apart, m - x overflows to -inf; the loss w q^gamma (-log p)
// is then computed as w q^gamma m - w q^gamma x + w q^gamma log s (m > 0 > x there): infinite only
// where the loss itself leaves the type's range, and exactly 0 for a zero weight.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define MARSOPS_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined on the CPU too: the SIMD kernels pass whole vectors, which a call would move
// through the stack (GCC left focal_terms out of line, ~9% of the focal kernel's time).
#define MARSOPS_HD [[gnu::always_inline]] inline
#else
#define MARSOPS_HD inline
#endif

namespace marsops {

// Scalar primitives. The SIMD CPU kernel defines the same names for at::vec::Vectorized.
MARSOPS_HD float m_sqrt(float v) { return sqrtf(v); }
MARSOPS_HD double m_sqrt(double v) { return sqrt(v); }
MARSOPS_HD float m_pow(float a, float b) { return powf(a, b); }
MARSOPS_HD double m_pow(double a, double b) { return pow(a, b); }
template <typename T>
MARSOPS_HD T m_where_lt(T a, T b, T if_true, T if_false) { return a < b ? if_true : if_false; }
template <typename T>
MARSOPS_HD T m_where_eq(T a, T b, T if_true, T if_false) { return a == b ? if_true : if_false; }

// q^gamma with the common gammas special-cased (gamma is uniform across a launch, so the
// branch is free) and 0^0 = 1.
template <typename V, typename S>
MARSOPS_HD V pow_gamma(V q, S gamma) {
  if (gamma == S(0)) return V(1);
  if (gamma == S(0.5)) return m_sqrt(q);
  if (gamma == S(1)) return q;
  if (gamma == S(2)) return q * q;
  return m_pow(q, V(gamma));
}

// The gradient coefficient `coef` such that dl/dx_j = coef * (delta_tj - p_j), from log p, p, q = 1 - p
// and q^gamma of the target class and its weight w.
template <typename V, typename S>
MARSOPS_HD V focal_coef(V logp, V p, V q, V qg, V w, S gamma) {
  // log(1 - q) / q: its series where q is tiny (the division would be 0/0 at q = 0).
  const V series = V(-1) - q * (V(0.5) + q * (V(1.0 / 3.0) + q * V(0.25)));
  const V ratio = m_where_lt(q, V(1e-3), series, logp / q);
  // p * log(p) / q tends to 0 with p; where p underflowed to 0, log p may be -inf (0 * inf).
  const V p_ratio = m_where_lt(V(0), p, p * ratio, V(0));
  // gamma == 0 is the cross-entropy: no focal term (which would be 0 * inf for a -inf target logit).
  return gamma == S(0) ? V(0) - w * qg : w * (V(gamma) * qg * p_ratio - qg);
}

// Given log p, p and q = 1 - p of the target class and its weight w, returns the loss and the
// coefficient `coef` such that dl/dx_j = coef * (delta_tj - p_j).
template <typename V, typename S>
MARSOPS_HD void focal_terms(V logp, V p, V q, V w, S gamma, V& loss, V& coef) {
  const V qg = pow_gamma(q, gamma);
  loss = V(0) - w * qg * logp;
  coef = focal_coef(logp, p, q, qg, w, gamma);
}

// The same from the class's logit x, the largest logit m and log s (log p = x - m - log s), with
// the loss computed without overflow where x - m alone overflows (see the top of this file).
template <typename V, typename S>
MARSOPS_HD void focal_terms(V x, V m, V log_s, V p, V q, V w, S gamma, V& loss, V& coef) {
  const V logp = x - m - log_s;
  const V qg = pow_gamma(q, gamma);
  const V a = w * qg;
  // x - m where x is finite or +inf, 0 where x is -inf (whose loss is infinite in truth)
  const V gap = m_where_lt(V(-INFINITY), x, x - m, V(0));
  loss = m_where_eq(gap, V(-INFINITY), a * m - a * x + a * log_s, V(0) - a * logp);
  coef = focal_coef(logp, p, q, qg, w, gamma);
}

}  // namespace marsops
