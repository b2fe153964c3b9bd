// The confusion-matrix kernel, built once per CPU capability. From logits (N, C, P) the argmax
// over C is computed L pixels at a time (ties: the first class, NaN counts as the maximum, as
// torch.argmax) and never stored; counts go to a private histogram per thread, merged at the end
// (integer sums: exact, and independent of the thread count).
#pragma once
#include <mutex>

#include "kernels.h"
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

  // Argmax over classes of the lanes of V at pixel p of sample n, into pred.
  template <typename V>
  inline void argmax(int64_t n, int64_t p, int64_t* pred) const {
    using acc_t = at::opmath_type<x_t>;
    constexpr int L = Lanes<V>::n;
    const x_t* xn = x + n * C * P + p;
    V best = load_as<V, acc_t>(xn), idx(0);
    for (int64_t c = 1; c < C; ++c) {
      const V v = load_as<V, acc_t>(xn + c * P);
      // Strictly greater keeps the first maximum; a NaN wins over any number.
      const auto take = (v > best) | ((v != v) & (best == best));
      best = v_where(take, v, best);
      idx = v_where(take, V(static_cast<acc_t>(c)), idx);
    }
    acc_t buf[L];
    store_as<V, acc_t>(idx, buf);
    for (int i = 0; i < L; ++i) pred[i] = static_cast<int64_t>(buf[i]);
  }

  inline void count(int64_t i, int64_t pred, int64_t* hist, ConfusionResult& r) const {
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
  void segment(int64_t n, int64_t p0, int64_t p1, int64_t* hist, ConfusionResult& r) const {
    if constexpr (std::is_floating_point_v<x_t> || std::is_same_v<x_t, at::Half> ||
                  std::is_same_v<x_t, at::BFloat16>) {
      using Vec = Vectorized<at::opmath_type<x_t>>;
      int64_t pred[Vec::size()];
      int64_t p = p0;
      for (; p + Vec::size() <= p1; p += Vec::size()) {
        argmax<Vec>(n, p, pred);
        for (int i = 0; i < Vec::size(); ++i) count(n * P + p + i, pred[i], hist, r);
      }
      for (; p < p1; ++p) {
        argmax<at::opmath_type<x_t>>(n, p, pred);
        count(n * P + p, pred[0], hist, r);
      }
    } else {
      for (int64_t p = p0; p < p1; ++p) count(n * P + p, static_cast<int64_t>(x[n * P + p]), hist, r);
    }
  }
};

template <typename x_t, typename tgt_t>
ConfusionResult confusion_run(const ConfusionArgs& a) {
  const int64_t N = a.target.size(0), P = a.target.size(1), C = a.num_classes;
  const ConfusionKernel<x_t, tgt_t> k{a.input.const_data_ptr<x_t>(), a.target.const_data_ptr<tgt_t>(), C, P,
                                      a.has_ignore, a.ignore_index};
  ConfusionResult out;
  out.counts.assign(C * C, 0);
  std::mutex mutex;
  const int64_t total = N * P;
  constexpr int64_t kChunk = 8192;
  at::parallel_for(0, (total + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
    ConfusionResult local;
    local.counts.assign(C * C, 0);
    for_each_segment(c0 * kChunk, std::min(total, c1 * kChunk), P,
                     [&](int64_t n, int64_t p0, int64_t p1) { k.segment(n, p0, p1, local.counts.data(), local); });
    std::lock_guard<std::mutex> lock(mutex);
    for (int64_t j = 0; j < C * C; ++j) out.counts[j] += local.counts[j];
    if ((local.bad_target || local.bad_pred) && !(out.bad_target || out.bad_pred)) {
      out.bad_target = local.bad_target;
      out.bad_pred = local.bad_pred;
      out.bad_value = local.bad_value;
    }
  });
  return out;
}

inline ConfusionResult confusion_impl(const ConfusionArgs& a) {
  ConfusionResult out;
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(), "marsops_confusion_cpu", [&] {
    using x_t = scalar_t;
    AT_DISPATCH_INTEGRAL_TYPES(a.target.scalar_type(), "marsops_confusion_cpu_target", [&] {
      out = confusion_run<x_t, scalar_t>(a);
    });
  });
  return out;
}

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
