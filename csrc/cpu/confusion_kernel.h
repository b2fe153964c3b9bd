// The confusion-matrix kernel, built once per CPU capability. From logits (N, C, P) the argmax
// over C is computed L pixels at a time (ties: the first class, NaN counts as the maximum, as
// torch.argmax) and never stored; from class-last logits (N, P, C) (channels_last), a pixel's
// classes are contiguous and scanned in place. Counts go to the caller's private histogram,
// merged by the op (integer sums: exact, and independent of the thread count).
#pragma once
#include "simd.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {

template <typename x_t, typename tgt_t>
struct ConfusionKernel {
  const x_t* x;
  const tgt_t* y;
  int64_t C, P;
  bool has_ignore;
  int64_t ignore_index;
  bool class_last;

  compute_t<x_t>* tile;  // scratch: C * lanes (class-last layout)

  // Argmax over classes of the lanes of V at pixel p of sample n, into pred.
  template <bool CLASS_LAST, typename V>
  inline void argmax(int64_t n, int64_t p, int64_t* pred) const {
    using acc = compute_t<x_t>;
    constexpr int L = Lanes<V>::n;
    const x_t* xn = x + n * C * P + (CLASS_LAST ? p * C : p);
    if constexpr (CLASS_LAST) gather_tile<L>(xn, C, tile);
    auto logits = [&](int64_t c) {
      if constexpr (CLASS_LAST) {
        return load_as<V, acc, acc>(tile + c * L);
      } else {
        return load_as<V, acc>(xn + c * P);
      }
    };
    V best = logits(0), idx(0);
    for (int64_t c = 1; c < C; ++c) {
      const V v = logits(c);
      // Strictly greater keeps the first maximum; a NaN wins over any number.
      const auto take = (v > best) | ((v != v) & (best == best));
      best = v_where(take, v, best);
      idx = v_where(take, V(static_cast<acc>(c)), idx);
    }
    acc buf[L];
    store_as<V, acc>(idx, buf);
    for (int i = 0; i < L; ++i) pred[i] = static_cast<int64_t>(buf[i]);
  }

  inline void count(int64_t i, int64_t pred, int64_t* hist, ConfusionFlags& r) const {
    const int64_t t = static_cast<int64_t>(y[i]);
    if (has_ignore && t == ignore_index) return;
    const bool t_ok = t >= 0 && t < C, p_ok = pred >= 0 && pred < C;
    if (t_ok && p_ok) {
      hist[t * C + pred] += 1;
    } else if (!r.bad_target && !r.bad_pred) {
      r.bad_target = !t_ok;
      r.bad_pred = t_ok;
      r.bad_value = t_ok ? pred : t;
    }
  }

  // Pixels [p0, p1) of sample n.
  void segment(int64_t n, int64_t p0, int64_t p1, int64_t* hist, ConfusionFlags& r) const {
    if constexpr (!std::is_integral_v<x_t>) {
      if (class_last) {
        logits_segment<true>(n, p0, p1, hist, r);
      } else {
        logits_segment<false>(n, p0, p1, hist, r);
      }
    } else {
      for (int64_t p = p0; p < p1; ++p) count(n * P + p, static_cast<int64_t>(x[n * P + p]), hist, r);
    }
  }

  template <bool CLASS_LAST>
  void logits_segment(int64_t n, int64_t p0, int64_t p1, int64_t* hist, ConfusionFlags& r) const {
    using Vec = Vectorized<compute_t<x_t>>;
    int64_t pred[Vec::size()];
    int64_t p = p0;
    for (; p + Vec::size() <= p1; p += Vec::size()) {
      argmax<CLASS_LAST, Vec>(n, p, pred);
      for (int i = 0; i < Vec::size(); ++i) count(n * P + p + i, pred[i], hist, r);
    }
    for (; p < p1; ++p) {
      argmax<CLASS_LAST, compute_t<x_t>>(n, p, pred);
      count(n * P + p, pred[0], hist, r);
    }
  }
};

template <typename x_t, typename tgt_t>
void confusion_range_typed(const ConfusionArgs& a, int64_t begin, int64_t end, int64_t* hist, ConfusionFlags& flags) {
  std::vector<compute_t<x_t>> tile(a.class_last ? a.C * Vectorized<compute_t<x_t>>::size() : 0);
  const ConfusionKernel<x_t, tgt_t> k{static_cast<const x_t*>(a.input), static_cast<const tgt_t*>(a.target), a.C,
                                      a.P, a.has_ignore, a.ignore_index, a.class_last, tile.data()};
  for_each_segment(begin, end, a.P, [&](int64_t n, int64_t p0, int64_t p1) { k.segment(n, p0, p1, hist, flags); });
}

inline void confusion_range(const ConfusionArgs& a, int64_t begin, int64_t end, int64_t* hist,
                            ConfusionFlags& flags) {
  auto with_input = [&](auto x_tag) {
    with_integral(a.target_dtype, [&](auto y_tag) {
      confusion_range_typed<decltype(x_tag), decltype(y_tag)>(a, begin, end, hist, flags);
    });
  };
  if (a.from_logits) {
    with_floating(a.input_dtype, with_input);
  } else {
    with_integral(a.input_dtype, with_input);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
