// The SIMD views_argmax kernel (flip / dihedral TTA evaluated), built once per CPU capability: one
// output row (n, d, h) at a time, L neighbouring output pixels per step. Each view's L values of a
// class are gathered through the outputs' strides (a view may reverse or transpose the row) into a
// [K][C][L] scratch, and the per-pixel math of tta_common.h then runs L pixels at a time: each
// view's max and sum of exponentials (one exponential per value, kept for the average), then the
// views' average class by class with torch.argmax's rules. The row's tail runs the scalar
// views_argmax_pixel, the same math.
#pragma once
#include <limits>

#include "../tta_common.h"
#include "simd.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {

template <typename in_t>
void views_argmax_row_typed(const void* outputs, const ViewsGeometry& g, bool softmax, int64_t row, int64_t* pred) {
  using V = Vectorized<float>;
  constexpr int L = V::size();
  const in_t* y = static_cast<const in_t*>(outputs);
  const int K = g.views.count;
  const int64_t C = g.C, h = row % g.H, d = (row / g.H) % g.D, n = row / (g.H * g.D);
  thread_local std::vector<float> scratch;
  scratch.resize(static_cast<size_t>(K) * C * L);
  float* values = scratch.data();  // [K][C][L]: the views' logits, then (softmax) their exponentials
  int64_t w = 0;
  for (; w + L <= g.W; w += L) {
    V inv_s[kMaxViews];
    for (int k = 0; k < K; ++k) {
      int64_t base[L];  // view k's offset of class 0 at each lane's output pixel
      for (int i = 0; i < L; ++i) base[i] = g.at(k, n, 0, d, h, w + i);
      float* vk = values + static_cast<int64_t>(k) * C * L;
      for (int64_t c = 0; c < C; ++c)
        for (int i = 0; i < L; ++i) vk[c * L + i] = static_cast<float>(y[base[i] + c * g.stride_c]);
      if (!softmax) continue;
      V m = V::loadu(vk);
      for (int64_t c = 1; c < C; ++c) m = v_max(m, V::loadu(vk + c * L));  // NaN propagates, as torch.softmax
      V s(0);
      for (int64_t c = 0; c < C; ++c) {
        const V e = v_exp_nonpositive(V::loadu(vk + c * L) - m);
        e.store(vk + c * L);
        s = s + e;
      }
      // A view whose max is not finite (a NaN, +inf, or every class -inf) has an all-NaN softmax
      // in torch; the vector exp clamps its NaN / inf arguments, so say it here.
      inv_s[k] = v_where((m - m) == V(0), V(1) / s, V(std::numeric_limits<float>::quiet_NaN()));
    }
    // The views' sum, in the merge's order (the 1/K scale does not move the argmax).
    const V idx = argmax_classes<V>(
        [&](int64_t c) {
          V avg(0);
          for (int k = 0; k < K; ++k) {
            const V v = V::loadu(values + (static_cast<int64_t>(k) * C + c) * L);
            avg = avg + (softmax ? v * inv_s[k] : v);
          }
          return avg;
        },
        C);
    float buf[L];
    idx.store(buf);
    for (int i = 0; i < L; ++i) pred[w + i] = static_cast<int64_t>(buf[i]);
  }
  for (; w < g.W; ++w)
    pred[w] = views_argmax_pixel([&](int k, int64_t c) { return static_cast<float>(y[g.at(k, n, c, d, h, w)]); },
                                 K, C, softmax);
}

inline void views_argmax_row(const void* outputs, ScalarType dtype, const ViewsGeometry& g, bool softmax, int64_t row,
                             int64_t* pred) {
  with_floating(dtype, [&](auto tag) { views_argmax_row_typed<decltype(tag)>(outputs, g, softmax, row, pred); });
}

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
