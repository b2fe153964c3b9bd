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
  template <typename V>
  void load(int64_t n, int64_t p, bool check) const {
    constexpr int L = Lanes<V>::n;
    const int64_t C = a.C, off = offset(n, p);
    const in_t* x = static_cast<const in_t*>(a.x) + off;
    if (a.class_last) {
      gather_tile<L>(x, C, xs);
    } else {
      for (int64_t c = 0; c < C; ++c) store_as<V, acc_t>(load_as<V, acc_t, in_t>(x + c * a.P), xs + c * L);
    }
    const tgt_t* y = static_cast<const tgt_t*>(a.target);
    if (a.target_is_map) {
      load_map<L>(y + n * a.P + p, check);
    } else {
      for (int64_t c = 0; c < C; ++c)
        read_elements<V>(y + off + (a.class_last ? c : c * a.P), a.class_last ? C : 1, ts + c * L, vs + c * L, check);
    }
    if (a.activation == kDenseIdentity && check) {
      const V zero(0), one(1);
      for (int64_t c = 0; c < C; ++c) {  // a valid probability outside [0, 1] (or NaN) is flagged
        const V x = load_as<V, acc_t, acc_t>(xs + c * L), v = load_as<V, acc_t, acc_t>(vs + c * L);
        const V ok = v_where(x >= zero, v_where(x <= one, one, zero), zero);
        if (v_sum(v_where(v > zero, one - ok, zero)) != acc_t(0))
          for (int i = 0; i < L; ++i)
            if (vs[c * L + i] != acc_t(0) && !(xs[c * L + i] >= acc_t(0) && xs[c * L + i] <= acc_t(1)))
              flags->probability(xs[c * L + i]);
      }
    }
  }

  // A class map's L labels: t = [label = c]; an ignored or bad label's pixel is invalid.
  template <int L>
  void load_map(const tgt_t* y, bool check) const {
    for (int i = 0; i < L; ++i) {
      const int64_t label = static_cast<int64_t>(y[i]);
      const bool ignored = a.has_ignore && label == a.ignore_index;
      const bool bad = !ignored && (label < 0 || label >= a.C);
      if (bad && check) flags->target(static_cast<double>(label));
      for (int64_t c = 0; c < a.C; ++c) {
        ts[c * L + i] = acc_t(label == c && !bad && !ignored);
        vs[c * L + i] = acc_t(!bad && !ignored);
      }
    }
  }

  // Soft labels whose check the vectors can make (float64 ones with fp32 compute are checked in
  // float64, one at a time).
  static constexpr bool kVectorSoft =
      !std::is_integral_v<tgt_t> && !(std::is_same_v<tgt_t, double> && !std::is_same_v<acc_t, double>);

  // L dense target elements y[i * stride] as t (0 where invalid) and validity v (1 / 0): soft labels
  // must lie in [0, 1] (a vector at a time when contiguous), integer masks hold 0, 1 or ignore_index.
  template <typename V>
  void read_elements(const tgt_t* y, int64_t stride, acc_t* t, acc_t* v, bool check) const {
    constexpr int L = Lanes<V>::n;
    if (kVectorSoft && stride == 1) {
      const V zero(0), one(1), raw = load_as<V, acc_t, tgt_t>(y);
      const V ok = v_where(raw >= zero, v_where(raw <= one, one, zero), zero);  // 0 for NaN
      store_as<V, acc_t>(v_where(ok > zero, raw, zero), t);
      store_as<V, acc_t>(ok, v);
      if (check && v_sum(ok) != acc_t(L))
        for (int i = 0; i < L; ++i)
          if (v[i] == acc_t(0)) flags->target(static_cast<double>(static_cast<acc_t>(y[i])));
      return;
    }
    for (int i = 0; i < L; ++i) {
      bool ok;
      acc_t value;
      if constexpr (std::is_integral_v<tgt_t>) {
        const int64_t k = static_cast<int64_t>(y[i * stride]);
        if (a.has_ignore && k == a.ignore_index) {
          ok = false;
        } else {
          ok = k == 0 || k == 1;
          if (!ok && check) flags->target(static_cast<double>(k));
        }
        value = acc_t(ok && k == 1);
      } else {
        const double raw = static_cast<double>(y[i * stride]);
        ok = raw >= 0 && raw <= 1;  // false for NaN
        if (!ok && check) flags->target(raw);
        value = ok ? static_cast<acc_t>(raw) : acc_t(0);
      }
      t[i] = value;
      v[i] = acc_t(ok);
    }
  }

  // The sigmoid q of x and 1 - q as sigmoid(-x) (no cancellation); NaN stays NaN.
  template <typename V>
  static void sigmoid(const V& x, V& q, V& om) {
    const V zero(0), one(1);
    const V e = v_where(x != x, x, v_exp_nonpositive(zero - v_abs(x)));  // exp(-|x|) in [0, 1]
    const V inv = one / (one + e);
    const auto nonneg = x >= zero;
    q = v_where(nonneg, inv, e * inv);
    om = v_where(nonneg, e * inv, inv);
  }

  // q of every class into qs; for the sigmoid also 1 - q (as sigmoid(-x), no cancellation) into om.
  template <typename V>
  void activate(acc_t* om) const {
    constexpr int L = Lanes<V>::n;
    const int64_t C = a.C;
    const V one(1);
    if (a.activation == kDenseIdentity) {
      for (int64_t c = 0; c < C; ++c) store_as<V, acc_t>(load_as<V, acc_t, acc_t>(xs + c * L), qs + c * L);
    } else if (a.activation == kDenseSigmoid) {
      for (int64_t c = 0; c < C; ++c) {
        V q, omq;
        sigmoid(load_as<V, acc_t, acc_t>(xs + c * L), q, omq);
        store_as<V, acc_t>(q, qs + c * L);
        if (om) store_as<V, acc_t>(omq, om + c * L);
      }
    } else {
      V m = load_as<V, acc_t, acc_t>(xs);
      for (int64_t c = 1; c < C; ++c) m = v_max(m, load_as<V, acc_t, acc_t>(xs + c * L));
      V s(0);
      for (int64_t c = 0; c < C; ++c) {
        const V e = v_exp_nonpositive(load_as<V, acc_t, acc_t>(xs + c * L) - m);
        s = s + e;
        store_as<V, acc_t>(e, qs + c * L);
      }
      const V inv = one / s;
      for (int64_t c = 0; c < C; ++c) store_as<V, acc_t>(load_as<V, acc_t, acc_t>(qs + c * L) * inv, qs + c * L);
    }
  }

  // Elementwise activations of (N, C, P) x against a dense target: each class's row streamed on
  // its own, a vector at a time, without the pixel-block tiles (those serve the softmax, which
  // couples the classes, class-last inputs and class maps).
  bool by_rows() const { return a.activation != kDenseSoftmax && !a.class_last && !a.target_is_map; }

  // L elements of a row at element offset off: q, 1 - q (sigmoid), t and validity v (1 / 0). Soft
  // labels outside [0, 1] and probabilities outside [0, 1] are counted in bad (the row is then
  // rescanned for the first one); other targets are flagged as read when check is set.
  template <typename V>
  void row_elements(int64_t off, bool check, V& q, V& om, V& t, V& v, V& bad) const {
    constexpr int L = Lanes<V>::n;
    const V zero(0), one(1);
    const V x = load_as<V, acc_t, in_t>(static_cast<const in_t*>(a.x) + off);
    const tgt_t* y = static_cast<const tgt_t*>(a.target) + off;
    if constexpr (kVectorSoft) {
      const V raw = load_as<V, acc_t, tgt_t>(y);
      v = v_where(raw >= zero, v_where(raw <= one, one, zero), zero);  // 0 for NaN
      t = v_where(v > zero, raw, zero);
      bad = bad + (one - v);
    } else {
      acc_t t_buf[L], v_buf[L];
      read_elements<V>(y, 1, t_buf, v_buf, check);
      t = load_as<V, acc_t, acc_t>(t_buf);
      v = load_as<V, acc_t, acc_t>(v_buf);
    }
    if (a.activation == kDenseSigmoid) {
      sigmoid(x, q, om);
    } else {
      q = x;
      if (check) bad = bad + v * (one - v_where(x >= zero, v_where(x <= one, one, zero), zero));
    }
  }

  // Pass 1 over the pixels [p0, p1) of row (n, c), the class's sums kept in registers.
  void stats_row(int64_t n, int64_t c, int64_t p0, int64_t p1) const {
    using Vec = Vectorized<acc_t>;
    constexpr int L = Vec::size();
    const int64_t base = (n * a.C + c) * a.P;
    Vec si(0), ss(0), st(0), bad(0);
    acc_t i_tail = 0, s_tail = 0, t_tail = 0, tail_bad = 0;
    int64_t p = p0;
    for (; p + L <= p1; p += L) {
      Vec q, om, t, v;
      row_elements<Vec>(base + p, true, q, om, t, v, bad);
      q = v_where(v > Vec(0), q, Vec(0));  // invalid elements may hold NaN or inf
      si = si + q * t;
      ss = ss + q;
      st = st + t;
    }
    for (; p < p1; ++p) {
      acc_t q, om, t, v;
      row_elements<acc_t>(base + p, true, q, om, t, v, tail_bad);
      q = v > 0 ? q : acc_t(0);
      i_tail += q * t;
      s_tail += q;
      t_tail += t;
    }
    acc_t* acc = sums + 3 * c * L;
    add_region_sums<Vec, acc_t>(acc, si, ss, st);
    add_region_sums<acc_t, acc_t>(acc, i_tail, s_tail, t_tail);
    if (v_sum(bad) + tail_bad != acc_t(0)) flag_row(base, p0, p1);
  }

  // The first bad soft label or probability of a row that has one (rare: the op then raises).
  void flag_row(int64_t base, int64_t p0, int64_t p1) const {
    const tgt_t* y = static_cast<const tgt_t*>(a.target) + base;
    const in_t* x = static_cast<const in_t*>(a.x) + base;
    for (int64_t p = p0; p < p1; ++p) {
      const double t = static_cast<double>(y[p]), xv = static_cast<double>(static_cast<acc_t>(x[p]));
      const bool valid = kVectorSoft ? (t >= 0 && t <= 1) : true;
      if (kVectorSoft && !valid) flags->target(t);
      if (a.activation == kDenseIdentity && valid && !(xv >= 0 && xv <= 1)) {
        if constexpr (!kVectorSoft) {  // integer targets: only valid elements count
          acc_t tv, vv;
          read_elements<acc_t>(y + p, 1, &tv, &vv, false);
          if (vv == acc_t(0)) continue;
        }
        flags->probability(xv);
      }
    }
  }

  // Pass 2 over the pixels [p0, p1) of row (n, c).
  template <typename V>
  void grad_row_block(int64_t n, int64_t c, int64_t p) const {
    const int64_t off = (n * a.C + c) * a.P + p;
    V q, om, t, v, unused(0);
    row_elements<V>(off, false, q, om, t, v, unused);
    const acc_t* coef = static_cast<const acc_t*>(a.coef) + (group(n) * a.C + c) * 3;
    const auto valid = v > V(0);
    if (a.grad_t)
      store_as<V, acc_t>(v_where(valid, V(coef[0]) * q + V(coef[2]), V(0)), static_cast<acc_t*>(a.grad_t) + off);
    V g = V(coef[0]) * t + V(coef[1]);
    if (a.activation == kDenseSigmoid) g = g * q * om;
    store_as<V, acc_t>(v_where(valid, g, V(0)), static_cast<in_t*>(a.grad_x) + off);
  }

  template <typename V>
  void stats_block(int64_t n, int64_t p) const {
    constexpr int L = Lanes<V>::n;
    constexpr int VL = Vectorized<acc_t>::size();  // the accumulators' width (the scalar tail uses lane 0)
    load<V>(n, p, true);
    activate<V>(nullptr);
    for (int64_t c = 0; c < a.C; ++c) {
      const V v = load_as<V, acc_t, acc_t>(vs + c * L), t = load_as<V, acc_t, acc_t>(ts + c * L);
      // Invalid elements are selected out: their x may hold NaN or inf.
      const V q = v_where(v > V(0), load_as<V, acc_t, acc_t>(qs + c * L), V(0));
      add_region_sums<V, acc_t>(sums + 3 * c * VL, q * t, q, t);
    }
  }

  // Pass 1 over pixels [p0, p1) of image n: adds to the group's row of stats (row 0 = first_group).
  void stats_segment(int64_t n, int64_t p0, int64_t p1, double* stats, int64_t first_group) const {
    using Vec = Vectorized<acc_t>;
    constexpr int L = Vec::size();
    std::fill(sums, sums + 3 * a.C * L, acc_t(0));
    if (by_rows()) {
      for (int64_t c = 0; c < a.C; ++c) stats_row(n, c, p0, p1);
    } else {
      int64_t p = p0;
      for (; p + L <= p1; p += L) stats_block<Vec>(n, p);
      for (; p < p1; ++p) stats_block<acc_t>(n, p);
    }
    flush_region_sums(sums, a.C, stats + (group(n) - first_group) * a.C * 3);
  }

  template <typename V>
  void grad_block(int64_t n, int64_t p, acc_t* om) const {
    constexpr int L = Lanes<V>::n;
    const int64_t C = a.C;
    load<V>(n, p, false);
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
    if (by_rows()) {
      for (int64_t c = 0; c < a.C; ++c) {
        int64_t p = p0;
        for (; p + Vec::size() <= p1; p += Vec::size()) grad_row_block<Vec>(n, c, p);
        for (; p < p1; ++p) grad_row_block<acc_t>(n, c, p);
      }
      return;
    }
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
