// Shapes and per-pixel math shared by the CPU and CUDA flip4_argmax ops (flip test-time
// augmentation, evaluated in one pass).
//
// outputs (4N, C, M, H, W) holds four views of each image: k = 0 as is, 1 left-right, 2 up-down,
// 3 both (flip4's order). Output pixel (n, m, h, w) reads view k at the flipped position, and the
// argmax of the views' average (of their softmax, or of the logits) is its prediction. The
// softmax average needs no per-class storage: a first pass gets each view's max and sum of
// exponentials, a second computes each class's average on the fly and keeps the running argmax.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define MARSOPS_TTA_HD __host__ __device__ __forceinline__
#else
#define MARSOPS_TTA_HD inline
#endif

namespace marsops {

struct Flip4Geometry {
  int64_t N, C, M, H, W;
  // Offset of (view k, class c) at output pixel (n, m, h, w), in elements.
  MARSOPS_TTA_HD int64_t at(int k, int64_t n, int64_t c, int64_t m, int64_t h, int64_t w) const {
    const int64_t hh = (k & 2) ? H - 1 - h : h, ww = (k & 1) ? W - 1 - w : w;
    return ((((k * N + n) * C + c) * M + m) * H + hh) * W + ww;
  }
};

// The argmax over classes of the four views' average, with torch.argmax's rules (the first
// maximum; a NaN beats every number). load(k, c) returns view k's logit of class c as float.
template <typename Load>
MARSOPS_TTA_HD int64_t flip4_argmax_pixel(Load load, int64_t C, bool softmax) {
  float m[4], inv_s[4];
  if (softmax) {
    for (int k = 0; k < 4; ++k) {
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
    float avg = 0;  // the views' sum, in flip4_merge's order (the scale does not move the argmax)
    for (int k = 0; k < 4; ++k) {
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
