// Shapes and per-pixel math shared by the CPU and CUDA views_argmax ops (flip / dihedral test-time
// augmentation, evaluated in one pass).
//
// outputs (K*N, C, [D,] H, W), any strides, holds K views of each image (view k in block k;
// csrc/views.h). Output pixel (n, d, h, w) reads view k where that view put it, and the argmax of
// the views' average (of their softmax, or of the logits) is its prediction. The softmax average
// needs no per-class storage: a first pass gets each view's max and sum of exponentials, a second
// computes each class's average on the fly and keeps the running argmax.
#pragma once
#include <cmath>

#include "views.h"

#if defined(__CUDACC__)
#define MARSOPS_TTA_HD __host__ __device__ __forceinline__
#else
#define MARSOPS_TTA_HD inline
#endif

namespace marsops {

struct ViewsGeometry {
  int64_t N, C, D, H, W;
  int64_t stride_n, stride_c, stride_d, stride_h, stride_w;  // of the outputs, in elements
  ViewList views;
  // Offset of class c of view k at output pixel (n, d, h, w).
  MARSOPS_TTA_HD int64_t at(int k, int64_t n, int64_t c, int64_t d, int64_t h, int64_t w) const {
    view_target(views.code[k], D, H, W, d, h, w);
    return (k * N + n) * stride_n + c * stride_c + d * stride_d + h * stride_h + w * stride_w;
  }
};

// The argmax over classes of the views' average, with torch.argmax's rules (the first maximum; a
// NaN beats every number). load(k, c) returns view k's logit of class c as float.
template <typename Load>
MARSOPS_TTA_HD int64_t views_argmax_pixel(Load load, int K, int64_t C, bool softmax) {
  float m[kMaxViews], inv_s[kMaxViews];
  if (softmax) {
    for (int k = 0; k < K; ++k) {
      float mk = -INFINITY;
      for (int64_t c = 0; c < C; ++c) {
        const float v = load(k, c);
        mk = (v > mk || v != v) ? v : mk;  // NaN propagates, as in torch.softmax
      }
      float s = 0;
      for (int64_t c = 0; c < C; ++c) s += expf(load(k, c) - mk);
      m[k] = mk;
      inv_s[k] = 1.0f / s;
    }
  }
  float best = 0;
  int64_t pred = 0;
  for (int64_t c = 0; c < C; ++c) {
    float avg = 0;  // the views' sum, in the merge's order (the 1/K scale does not move the argmax)
    for (int k = 0; k < K; ++k) {
      const float v = load(k, c);
      avg += softmax ? expf(v - m[k]) * inv_s[k] : v;
    }
    if (c == 0 || avg > best || (avg != avg && best == best)) {
      best = avg;
      pred = c;
    }
  }
  return pred;
}

}  // namespace marsops
