// The per-block pieces the softmax losses share (focal_kernel.h, region_kernel.h), built once per
// CPU capability. A block is L neighbouring pixels of one sample, one SIMD register per class:
// their logits (NCHW: loaded directly; class-last: transposed once into a [C][L] tile, or into
// registers for fp32 and a compile-time C up to 8 on AVX2 / AVX-512), their
// softmax (max, exponentials kept in a [C][L] scratch, sum), and the focal terms of their labels
// with optional label smoothing.
#pragma once
#include <limits>

#include "simd.h"

// SIMD overloads of the primitives focal_math.h uses; declared before it so its templates see them.
namespace marsops {
template <typename T>
inline at::vec::Vectorized<T> m_sqrt(const at::vec::Vectorized<T>& v) { return v.sqrt(); }
template <typename T>
inline at::vec::Vectorized<T> m_pow(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b) {
  return a.pow(b);
}
// The selects by simd.h's lane conditions (a mask register for fp32 on AVX-512).
template <typename T>
inline at::vec::Vectorized<T> m_where_lt(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b,
                                         const at::vec::Vectorized<T>& t, const at::vec::Vectorized<T>& f) {
  return cpu::CPU_CAPABILITY::v_where(cpu::CPU_CAPABILITY::lanes_lt(a, b), t, f);
}
template <typename T>
inline at::vec::Vectorized<T> m_where_eq(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b,
                                         const at::vec::Vectorized<T>& t, const at::vec::Vectorized<T>& f) {
  return cpu::CPU_CAPABILITY::v_where(cpu::CPU_CAPABILITY::lanes_eq(a, b), t, f);
}
}  // namespace marsops

#include "../focal_math.h"
#include "../saved_grad.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {

// The region losses' per-class vector accumulators (region_kernel.h, dense_region_kernel.h): three
// vectors of VL lanes per class, [I, S, T]; a scalar tail adds to lane 0.
template <typename V, typename acc_t>
inline void add_region_sums(acc_t* acc, const V& qt, const V& q, const V& t) {
  constexpr int VL = Vectorized<acc_t>::size();
  store_as<V, acc_t>(load_as<V, acc_t, acc_t>(acc) + qt, acc);
  store_as<V, acc_t>(load_as<V, acc_t, acc_t>(acc + VL) + q, acc + VL);
  store_as<V, acc_t>(load_as<V, acc_t, acc_t>(acc + 2 * VL) + t, acc + 2 * VL);
}

// Adds the lanes of C classes' accumulators to a (C, 3) row of float64 sums.
template <typename acc_t>
inline void flush_region_sums(const acc_t* sums, int64_t C, double* row) {
  constexpr int VL = Vectorized<acc_t>::size();
  for (int64_t j = 0; j < 3 * C; ++j) {
    double total = 0;
    for (int i = 0; i < VL; ++i) total += sums[j * VL + i];
    row[j] += total;
  }
}

// Reads the labels of `n` pixels, validating them: ignored / invalid ones get class -1 and weight
// 0; counts, weight sums and the first bad label go to st.
template <int n, typename acc_t, typename tgt_t>
inline void read_labels(const tgt_t* y, int64_t C, int64_t ignore_index, const acc_t* w, acc_t* cls, acc_t* wt,
                        FocalStats& st) {
  for (int i = 0; i < n; ++i) {
    const int64_t t = static_cast<int64_t>(y[i]);
    const bool ignored = t == ignore_index;
    const bool bad = !ignored && (t < 0 || t >= C);
    if (bad && !st.bad) {
      st.bad = true;
      st.bad_label = t;
    }
    const bool valid = !ignored && !bad;
    cls[i] = valid ? static_cast<acc_t>(t) : acc_t(-1);
    wt[i] = valid ? (w ? w[t] : acc_t(1)) : acc_t(0);
    st.count += valid;
    st.weight_sum += wt[i];
  }
}

// read_labels for labels already validated (FocalArgs::labels_checked): every label is in [0, C)
// or ignore_index, so only the class and weight are produced (the same values read_labels gives),
// without the per-pixel counts and the serial double sum of weights. Branch-free, so the compiler
// vectorises it.
template <int n, typename acc_t, typename tgt_t>
inline void read_checked_labels(const tgt_t* __restrict__ y, int64_t ignore_index, const acc_t* __restrict__ w,
                                int64_t C, acc_t* __restrict__ cls, acc_t* __restrict__ wt) {
#ifdef MARSOPS_LABELS_SIMD
  if constexpr (n == labels_simd::kLanes && std::is_same_v<acc_t, float> && std::is_same_v<tgt_t, int64_t>) {
    labels_simd::Mask ignored;
    const auto t = labels_simd::load_checked(y, ignore_index, ignored);
    labels_simd::class_and_weight(t, ignored, w, C, cls, wt);
    return;
  }
#endif
  for (int i = 0; i < n; ++i) {
    const int64_t t = static_cast<int64_t>(y[i]);
    const bool valid = t != ignore_index;
    cls[i] = valid ? static_cast<acc_t>(t) : acc_t(-1);
    const acc_t wi = w ? w[valid ? t : 0] : acc_t(1);
    wt[i] = valid ? wi : acc_t(0);
  }
}

// log s for a softmax sum s: at least 1 (the largest class adds exp(0)), at most the class
// count, or NaN. Inlined, where x.log() is a call into Sleef's general log that took 13% of the
// focal kernel's samples on AVX-512 for one log per block. s = 2^e m with m in [sqrt(1/2),
// sqrt(2)), log s = e log 2 + log(1 + f), f = m - 1, with Cephes' logf polynomial (relative
// error 7.6e-8 on that interval) and log 2 split in two so e log 2 adds no rounding.
template <typename T>
inline T log_softmax_sum(T s) { return std::log(s); }
template <typename T>
inline Vectorized<T> log_softmax_sum(const Vectorized<T>& s) { return s.log(); }

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
[[gnu::always_inline]] inline Vectorized<float> log_softmax_sum(const Vectorized<float>& s) {
  using V = Vectorized<float>;
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 e_v = _mm512_getexp_ps(_mm512_mul_ps(s, _mm512_set1_ps(1.41421356f)));  // floor(log2(s sqrt 2))
  const V e(e_v), f = V(_mm512_scalef_ps(s, _mm512_sub_ps(_mm512_setzero_ps(), e_v))) - V(1);  // exact
#else
  // The bits of s minus those of sqrt(1/2): the exponent field is then e, and s's own bits minus
  // e in the exponent field are m.
  const __m256i bits = _mm256_castps_si256(s);
  const __m256i e_i = _mm256_srai_epi32(_mm256_sub_epi32(bits, _mm256_set1_epi32(0x3f3504f3)), 23);
  const V e(_mm256_cvtepi32_ps(e_i));
  const V f = V(_mm256_castsi256_ps(_mm256_sub_epi32(bits, _mm256_slli_epi32(e_i, 23)))) - V(1);
#endif
  // The polynomial in Estrin's scheme: four levels of FMAs where Horner's chained eight (the
  // kernel's blocks waited on that chain).
  const V z = f * f, z2 = z * z, z4 = z2 * z2;
  auto pair = [&](float hi, float lo) { return at::vec::fmadd(V(hi), f, V(lo)); };
  const V p03 = at::vec::fmadd(pair(-1.6668057665e-1f, 2.0000714765e-1f), z, pair(-2.4999993993e-1f, 3.3333331174e-1f));
  const V p47 = at::vec::fmadd(pair(-1.1514610310e-1f, 1.1676998740e-1f), z, pair(-1.2420140846e-1f, 1.4249322787e-1f));
  V y = at::vec::fmadd(V(7.0376836292e-2f), z4, at::vec::fmadd(p47, z2, p03));
  y = y * f * z;
  y = at::vec::fmadd(e, V(-2.12194440e-4f), y);
  y = at::vec::fmadd(z, V(-0.5f), y);
  const V log_s = at::vec::fmadd(e, V(0.693359375f), f + y);
  return v_where(lanes_eq(s, s), log_s, s);  // NaN stays NaN (the AVX2 bit arithmetic makes it finite)
}
#endif

// The softmax of a block, and in the same loop the label's logit xt, its exponential et and the
// other classes' sum (cls: each lane's class, -1 when ignored). With ARGMAX, also the first
// maximum's class (NaN wins), as torch.argmax. KC > 0: the class count C as a compile-time
// constant (loops unroll; an fp32 class-last block's transpose is inlined, not a table call).
template <bool CLASS_LAST, bool ARGMAX, typename V, typename in_t, typename acc_t, int KC = 0>
struct BlockSoftmax {
  static constexpr int L = Lanes<V>::n;
  // Whether this block's class-last transposes are the inlined compile-time ones.
  static constexpr bool kFixedTranspose = KC > 0 && L > 1 && L == Vectorized<float>::size() &&
                                          std::is_same_v<in_t, float> && std::is_same_v<acc_t, float>;
  // Whether the transposed logits stay in registers (rows), not in the tile.
  static constexpr bool kRegisterRows = CLASS_LAST && kFixedTranspose && class_last::rows_in_registers<KC, L>();
  const in_t* xn;  // the block's first logit
  int64_t C, P;
  acc_t* tile;     // [C][L] scratch: the transposed logits (class-last, unless kRegisterRows)
  acc_t* exps;     // [C][L] scratch: exp(x - max)
  V rows[kRegisterRows ? KC : 1];  // the transposed logits (kRegisterRows)
  V m, s, inv_s, log_s, pred, xt, et, other;

  BlockSoftmax(const in_t* x, int64_t C_, int64_t P_, acc_t* tile_, acc_t* exps_, const V& cls)
      : xn(x), C(C_), P(P_), tile(tile_), exps(exps_) {
    if constexpr (CLASS_LAST && L > 1) class_last::prefetch(xn, classes() * L * sizeof(in_t));
    if constexpr (kRegisterRows) {
      class_last::rows<KC>(xn, rows);
    } else if constexpr (CLASS_LAST && kFixedTranspose) {
      class_last::gather<KC, L>(xn, tile);
    } else if constexpr (CLASS_LAST) {
      gather_tile<L>(xn, C, tile);
    }
    // The loops work on locals, assigned to the members once: a member updated in the loop lives
    // in memory wherever the struct's address escapes, and each class then waited on the
    // previous class's store. The class index is counted in a vector (no int-to-float per class).
    V m_ = logits(0), pred_ = V(0);
    for (int64_t c = 1; c < classes(); ++c) m_ = v_max_before_exp(m_, logits(c));
    if constexpr (ARGMAX) pred_ = argmax_classes<V>([&](int64_t c) { return logits(c); }, classes());
    V s_(0), xt_(0), et_(0), other_(0), c_v(0);
    for (int64_t c = 0; c < classes(); ++c) {
      const V xc = logits(c);
      const V e = v_exp_nonpositive(xc - m_);
      store_as<V, acc_t>(e, exps + c * L);
      s_ = s_ + e;
      const auto is_t = lanes_eq(cls, c_v);
      c_v = c_v + V(1);
      xt_ = v_take_where(is_t, xc, xt_);  // one class per lane: a one-hot selection
      et_ = v_take_where(is_t, e, et_);
      other_ = other_ + v_zero_where(is_t, e);
    }
    // A pixel whose largest logit is not finite (+inf, NaN, or every class -inf) has an all-NaN
    // softmax in torch. The scalar tail's std::exp gives that by itself; at::vec's exp_u20 (simd.h's
    // v_exp_nonpositive but for fp32 on AVX2 / AVX-512) clamps a NaN argument to a finite value
    // (an inf logit elsewhere would give a finite sum and an infinite loss), so it is said here,
    // for every lane alike.
    s_ = v_where(lanes_eq(m_ - m_, V(0)), s_, V(std::numeric_limits<acc_t>::quiet_NaN()));
    m = m_;
    pred = pred_;
    s = s_;
    xt = xt_;
    et = et_;
    other = other_;
    inv_s = V(1) / s_;
    log_s = log_softmax_sum(s_);
  }

  int64_t classes() const {
    if constexpr (KC > 0) {
      return KC;
    } else {
      return C;
    }
  }
  V logits(int64_t c) const {
    if constexpr (kRegisterRows) {
      return rows[c];
    } else if constexpr (CLASS_LAST) {
      return load_as<V, acc_t, acc_t>(tile + c * L);
    } else {
      return load_as<V, acc_t>(xn + c * P);
    }
  }
  V exp(int64_t c) const { return load_as<V, acc_t, acc_t>(exps + c * L); }
  V prob(int64_t c) const { return exp(c) * inv_s; }
};

// The focal terms of a block's labels (cls: the class, or -1 when ignored; wt: its weight), with
// label smoothing eps as F.cross_entropy weights it, the gradient times `scale`:
//   loss = (1 - eps) w_y f(p_y) + eps / C sum_c w_c f(p_c),   f(p) = (1 - p)^gamma (-log p)
//   dloss/dx_j = target_coef (delta_yj - p_j) + smooth_scale (coef_j - p_j sum_c coef_c)
// (coef_c: the focal coefficient of class c, focal_math.h). With p_j = e_j / s, the terms in p_j
// share one factor per pixel, exp_scale = (target_coef + smooth_scale sum_c coef_c) / s, so each
// class's gradient is a select and one fused multiply-add. Ignored lanes have a zero loss and
// gradient, whatever their logits hold.
template <typename V, typename acc_t>
struct FocalPixels {
  static constexpr int L = Lanes<V>::n;
  using Mask = decltype(lanes_ge(std::declval<V>(), std::declval<V>()));  // bool for scalars, a lane mask for vectors
  Mask valid;
  V loss, target_coef, smooth_scale, smooth_sum, neg_exp_scale;  // neg_exp_scale: -exp_scale
  const acc_t* coefs;  // [C][L]: coef_c, with smoothing only

  FocalPixels()
      : valid(lanes_lt(V(0), V(0))), loss(0), target_coef(0), smooth_scale(0), smooth_sum(0), neg_exp_scale(0),
        coefs(nullptr) {}

  template <typename Softmax>
  [[gnu::always_inline]] FocalPixels(const Softmax& sm, const V& cls, const V& wt, const acc_t* w, acc_t gamma, acc_t eps, acc_t* coef_scratch,
              acc_t scale)
      : coefs(eps > acc_t(0) ? coef_scratch : nullptr) {
    V coef;
    focal_terms(sm.xt, sm.m, sm.log_s, sm.et * sm.inv_s, sm.other * sm.inv_s, wt, gamma, loss, coef);
    valid = lanes_ge(cls, V(0));
    target_coef = coef * V((acc_t(1) - eps) * scale);
    smooth_scale = V(eps / static_cast<acc_t>(sm.classes()));
    smooth_sum = V(0);
    if (eps > acc_t(0)) {
      V smooth_loss(0);
      for (int64_t c = 0; c < sm.classes(); ++c) {
        const V e = sm.exp(c), p = e * sm.inv_s;
        const V q = v_max((sm.s - e) * sm.inv_s, V(0));  // 1 - p; only the target's q needs the exact form
        V lc, cc;
        focal_terms(sm.logits(c), sm.m, sm.log_s, p, q, V(w ? w[c] : acc_t(1)), gamma, lc, cc);
        smooth_loss = smooth_loss + lc;
        smooth_sum = smooth_sum + cc;
        store_as<V, acc_t>(cc, coef_scratch + c * L);
      }
      loss = v_fmadd(smooth_scale, smooth_loss, loss * V(acc_t(1) - eps));
      smooth_scale = smooth_scale * V(scale);
    }
    neg_exp_scale = V(0) - (coefs ? v_fmadd(smooth_scale, smooth_sum, target_coef) : target_coef) * sm.inv_s;
    // Ignored lanes are selected out, not multiplied by a zero weight: their logits may hold NaN.
    loss = v_where_or_zero(valid, loss);
  }

  // dloss/dx_c of the block's lanes, times the scale, from e_c = exp(x_c - m) and the lanes whose
  // label is c.
  template <typename LabelMask>
  V grad(int64_t c, const V& e_c, const LabelMask& is_label) const {
    V g = v_fmadd(neg_exp_scale, e_c, v_where_or_zero(is_label, target_coef));
    if (coefs) g = v_fmadd(smooth_scale, load_as<V, acc_t, acc_t>(coefs + c * L), g);
    return v_where_or_zero(valid, g);
  }
};

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
