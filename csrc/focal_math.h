// Per-pixel focal-loss math shared by the CPU kernels (scalar and SIMD) and the CUDA kernel,
// so the CPU tests exercise the same formulas the GPU runs.
//
// With p = softmax(x)[t], q = 1 - p and l = -w * q^gamma * log p:
//   dl/dx_j = w * (gamma * q^gamma * p * (log p / q) - q^gamma) * (delta_tj - p_j)
// q is computed as (sum of the other classes' exps) / (sum of all exps), which is exact where
// 1 - p would cancel, and log p / q is replaced by its series -1 - q/2 - q^2/3 - q^3/4 near
// q = 0 (truncation error below 3e-13 for q < 1e-3), so
// no finite input yields NaN or Inf.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define MARSOPS_HD __host__ __device__ __forceinline__
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

// Given log p, p and q = 1 - p of the target class and its weight w, returns the loss and the
// coefficient `coef` such that dl/dx_j = coef * (delta_tj - p_j).
template <typename V, typename S>
MARSOPS_HD void focal_terms(V logp, V p, V q, V w, S gamma, V& loss, V& coef) {
  const V qg = pow_gamma(q, gamma);
  // log(1 - q) / q: its series where q is tiny (the division would be 0/0 at q = 0).
  const V series = V(-1) - q * (V(0.5) + q * (V(1.0 / 3.0) + q * V(0.25)));
  const V ratio = m_where_lt(q, V(1e-3), series, logp / q);
  loss = V(0) - w * qg * logp;
  // gamma == 0 is the cross-entropy: no focal term (which would be 0 * inf for a -inf target logit).
  coef = gamma == S(0) ? V(0) - w * qg : w * (V(gamma) * qg * p * ratio - qg);
}

}  // namespace marsops
