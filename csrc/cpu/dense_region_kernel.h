// The SIMD kernels of the region losses against dense targets (binary, multi-label, soft labels,
// probabilities; marsops/dense_region.py), built once per CPU capability. Per element (n, c, p),
// q = activation(x) (identity, sigmoid, or softmax over the pixel's classes), t its target and v
// its validity; the first pass sums, per class (and image when asked),
//   I_c = sum v q t,   S_c = sum v q,   T_c = sum v t,
// and the second writes, from (A, B, D) = dL/d(I, S, T) of the element's (group, class),
//   gq = v (A t + B),   dL/dx = gq (identity), gq q (1 - q) (sigmoid), q_c (gq_c - sum_k q_k gq_k)
//   (softmax),   dL/dt = v (A q + D).
// A block is L pixels of one image, held as [C][L] tiles of the compute type in both layouts.
#pragma once
#include "softmax_block.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {

template <typename in_t, typename acc_t, typename tgt_t>
struct DenseRegionKernel {
  const DenseRegionArgs& a;
  acc_t* xs;    // [C][L] the block's x
  acc_t* ts;    // [C][L] targets (0 where invalid)
  acc_t* vs;    // [C][L] validity, 1 / 0
  acc_t* qs;    // [C][L] q, then the gradient
  acc_t* sums;  // [C][3][L] the vector accumulators of a segment (pass 1)
  DenseRegionFlags* flags;

  int64_t group(int64_t n) const { return a.per_image ? n : 0; }
  int64_t offset(int64_t n, int64_t p) const { return a.class_last ? (n * a.P + p) * a.C : n * a.C * a.P + p; }

  // The block's x, targets and validity into the tiles. Bad targets and probabilities are flagged
  // (and their elements made invalid); ignored elements may hold anything.
  template <int L>
  void load(int64_t n, int64_t p, bool check) const {
    const int64_t C = a.C, off = offset(n, p);
    const in_t* x = static_cast<const in_t*>(a.x) + off;
    if (a.class_last) {
      gather_tile<L>(x, C, xs);
    } else {
      for (int64_t c = 0; c < C; ++c)
        for (int i = 0; i < L; ++i) xs[c * L + i] = static_cast<acc_t>(x[c * a.P + i]);
    }
    const tgt_t* y = static_cast<const tgt_t*>(a.target);
    if (a.target_is_map) {
      for (int i = 0; i < L; ++i) {
        const int64_t label = static_cast<int64_t>(y[n * a.P + p + i]);
        const bool ignored = a.has_ignore && label == a.ignore_index;
        const bool bad = !ignored && (label < 0 || label >= C);
        if (bad && check) flags->target(static_cast<double>(label));
        for (int64_t c = 0; c < C; ++c) {
          ts[c * L + i] = acc_t(label == c && !bad && !ignored);
          vs[c * L + i] = acc_t(!bad && !ignored);
        }
      }
    } else {
      for (int64_t c = 0; c < C; ++c)
        for (int i = 0; i < L; ++i) {
          const tgt_t raw = y[off + (a.class_last ? i * C + c : c * a.P + i)];
          bool ok;
          acc_t t;
          if constexpr (std::is_integral_v<tgt_t>) {
            const int64_t k = static_cast<int64_t>(raw);
            if (a.has_ignore && k == a.ignore_index) {
              ok = false;
            } else {
              ok = k == 0 || k == 1;
              if (!ok && check) flags->target(static_cast<double>(k));
            }
            t = acc_t(ok && k == 1);
          } else {
            t = static_cast<acc_t>(raw);
            ok = t >= acc_t(0) && t <= acc_t(1);  // false for NaN
            if (!ok && check) flags->target(static_cast<double>(t));
            if (!ok) t = acc_t(0);
          }
          ts[c * L + i] = t;
          vs[c * L + i] = acc_t(ok);
        }
    }
    if (a.activation == kDenseIdentity && check) {
      for (int64_t j = 0; j < C * L; ++j)
        if (vs[j] != acc_t(0) && !(xs[j] >= acc_t(0) && xs[j] <= acc_t(1))) flags->probability(xs[j]);
    }
  }

  // q of every class into qs; for the sigmoid also 1 - q (as sigmoid(-x), no cancellation) into om.
  template <typename V>
  void activate(acc_t* om) const {
    constexpr int L = Lanes<V>::n;
    const int64_t C = a.C;
    const V zero(0), one(1);
    if (a.activation == kDenseIdentity) {
      for (int64_t c = 0; c < C; ++c) store_as<V, acc_t>(load_as<V, acc_t, acc_t>(xs + c * L), qs + c * L);
    } else if (a.activation == kDenseSigmoid) {
      for (int64_t c = 0; c < C; ++c) {
        const V x = load_as<V, acc_t, acc_t>(xs + c * L);
        const V e = v_where(x != x, x, v_exp(zero - v_abs(x)));  // exp(-|x|); NaN stays NaN
        const V inv = one / (one + e);
        const auto nonneg = x >= zero;
        store_as<V, acc_t>(v_where(nonneg, inv, e * inv), qs + c * L);
        if (om) store_as<V, acc_t>(v_where(nonneg, e * inv, inv), om + c * L);
      }
    } else {
      V m = load_as<V, acc_t, acc_t>(xs);
      for (int64_t c = 1; c < C; ++c) m = v_max(m, load_as<V, acc_t, acc_t>(xs + c * L));
      V s(0);
      for (int64_t c = 0; c < C; ++c) {
        const V e = v_exp(load_as<V, acc_t, acc_t>(xs + c * L) - m);
        s = s + e;
        store_as<V, acc_t>(e, qs + c * L);
      }
      const V inv = one / s;
      for (int64_t c = 0; c < C; ++c) store_as<V, acc_t>(load_as<V, acc_t, acc_t>(qs + c * L) * inv, qs + c * L);
    }
  }

  template <typename V>
  void stats_block(int64_t n, int64_t p) const {
    constexpr int L = Lanes<V>::n;
    constexpr int VL = Vectorized<acc_t>::size();  // the accumulators' width (the scalar tail uses lane 0)
    load<L>(n, p, true);
    activate<V>(nullptr);
    for (int64_t c = 0; c < a.C; ++c) {
      const V v = load_as<V, acc_t, acc_t>(vs + c * L), t = load_as<V, acc_t, acc_t>(ts + c * L);
      // Invalid elements are selected out: their x may hold NaN or inf.
      const V q = v_where(v > V(0), load_as<V, acc_t, acc_t>(qs + c * L), V(0));
      acc_t* acc = sums + 3 * c * VL;
      store_as<V, acc_t>(load_as<V, acc_t, acc_t>(acc) + q * t, acc);
      store_as<V, acc_t>(load_as<V, acc_t, acc_t>(acc + VL) + q, acc + VL);
      store_as<V, acc_t>(load_as<V, acc_t, acc_t>(acc + 2 * VL) + t, acc + 2 * VL);
    }
  }

  // Pass 1 over pixels [p0, p1) of image n: adds to the group's row of stats (row 0 = first_group).
  void stats_segment(int64_t n, int64_t p0, int64_t p1, double* stats, int64_t first_group) const {
    using Vec = Vectorized<acc_t>;
    constexpr int L = Vec::size();
    std::fill(sums, sums + 3 * a.C * L, acc_t(0));
    int64_t p = p0;
    for (; p + L <= p1; p += L) stats_block<Vec>(n, p);
    for (; p < p1; ++p) stats_block<acc_t>(n, p);
    double* row = stats + (group(n) - first_group) * a.C * 3;
    for (int64_t j = 0; j < 3 * a.C; ++j) {
      double total = 0;
      for (int i = 0; i < L; ++i) total += sums[j * L + i];
      row[j] += total;
    }
  }

  template <typename V>
  void grad_block(int64_t n, int64_t p, acc_t* om) const {
    constexpr int L = Lanes<V>::n;
    const int64_t C = a.C;
    load<L>(n, p, false);
    activate<V>(om);
    const acc_t* coef = static_cast<const acc_t*>(a.coef) + group(n) * C * 3;
    const V zero(0);
    acc_t* gt = a.grad_t ? static_cast<acc_t*>(a.grad_t) + offset(n, p) : nullptr;
    V dot(0), any(0);  // softmax: sum_k q_k gq_k; any valid element in the pixel
    for (int64_t c = 0; c < C; ++c) {
      const V v = load_as<V, acc_t, acc_t>(vs + c * L), t = load_as<V, acc_t, acc_t>(ts + c * L);
      const auto valid = v > zero;
      const V q = load_as<V, acc_t, acc_t>(qs + c * L);
      const V gq = v_where(valid, V(coef[3 * c]) * t + V(coef[3 * c + 1]), zero);
      if (gt) {  // dL/dt in the target's layout, compute type
        const V g = v_where(valid, V(coef[3 * c]) * q + V(coef[3 * c + 2]), zero);
        if (a.class_last) {
          acc_t buf[L];
          store_as<V, acc_t>(g, buf);
          for (int i = 0; i < L; ++i) gt[i * C + c] = buf[i];
        } else {
          store_as<V, acc_t>(g, gt + c * a.P);
        }
      }
      V g;
      if (a.activation == kDenseIdentity) {
        g = gq;
      } else if (a.activation == kDenseSigmoid) {
        g = v_where(valid, gq * q * load_as<V, acc_t, acc_t>(om + c * L), zero);
      } else {
        dot = dot + q * gq;
        any = v_max(any, v);
        g = gq;
      }
      store_as<V, acc_t>(g, xs + c * L);  // the x tile is free now: the gradient goes there
    }
    if (a.activation == kDenseSoftmax)
      for (int64_t c = 0; c < C; ++c) {
        const V q = load_as<V, acc_t, acc_t>(qs + c * L), gq = load_as<V, acc_t, acc_t>(xs + c * L);
        // A pixel with no valid element: exactly 0, whatever its logits hold.
        store_as<V, acc_t>(v_where(any > zero, q * (gq - dot), zero), xs + c * L);
      }
    in_t* gx = static_cast<in_t*>(a.grad_x) + offset(n, p);
    if (a.class_last) {
      scatter_tile<L>(xs, C, gx);
    } else {
      for (int64_t c = 0; c < C; ++c) store_as<V, acc_t>(load_as<V, acc_t, acc_t>(xs + c * L), gx + c * a.P);
    }
  }

  void grad_segment(int64_t n, int64_t p0, int64_t p1, acc_t* om) const {
    using Vec = Vectorized<acc_t>;
    int64_t p = p0;
    for (; p + Vec::size() <= p1; p += Vec::size()) grad_block<Vec>(n, p, om);
    for (; p < p1; ++p) grad_block<acc_t>(n, p, om);
  }
};

template <typename Body>
inline void with_dense_types(const DenseRegionArgs& a, Body&& body) {
  with_floating(a.x_dtype, [&](auto x_tag) {
    const ScalarType td = a.target_dtype;
    auto run = [&](auto y_tag) { body(x_tag, y_tag); };
    if (td == ScalarType::Float || td == ScalarType::Double || td == ScalarType::Half || td == ScalarType::BFloat16) {
      with_floating(td, run);
    } else {
      with_integral(td, run);
    }
  });
}

// Pixels [begin, end) of the flattened (N, P) index; stats as region_stats_range's.
inline DenseRegionFlags dense_region_stats_range(const DenseRegionArgs& a, int64_t begin, int64_t end, double* stats,
                                                 int64_t first_group) {
  DenseRegionFlags flags;
  with_dense_types(a, [&](auto x_tag, auto y_tag) {
    using in_t = decltype(x_tag);
    using acc = compute_t<in_t>;
    const int64_t L = Vectorized<acc>::size();
    std::vector<acc> tiles(4 * a.C * L), sums(3 * a.C * L);
    acc* t = tiles.data();
    const DenseRegionKernel<in_t, acc, decltype(y_tag)> k{a, t, t + a.C * L, t + 2 * a.C * L, t + 3 * a.C * L,
                                                          sums.data(), &flags};
    for_each_segment(begin, end, a.P,
                     [&](int64_t n, int64_t p0, int64_t p1) { k.stats_segment(n, p0, p1, stats, first_group); });
  });
  return flags;
}

inline void dense_region_grad_range(const DenseRegionArgs& a, int64_t begin, int64_t end) {
  with_dense_types(a, [&](auto x_tag, auto y_tag) {
    using in_t = decltype(x_tag);
    using acc = compute_t<in_t>;
    const int64_t L = Vectorized<acc>::size();
    std::vector<acc> tiles(5 * a.C * L);
    acc* t = tiles.data();
    DenseRegionFlags unused;
    const DenseRegionKernel<in_t, acc, decltype(y_tag)> k{a, t, t + a.C * L, t + 2 * a.C * L, t + 3 * a.C * L,
                                                          nullptr, &unused};
    for_each_segment(begin, end, a.P,
                     [&](int64_t n, int64_t p0, int64_t p1) { k.grad_segment(n, p0, p1, t + 4 * a.C * L); });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
