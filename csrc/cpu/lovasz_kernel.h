// The elementwise passes of the Lovász-Softmax loss, built once per CPU capability (the sorts
// between them: lovasz_cpu.cpp):
//   probs: the softmax of every pixel (BlockSoftmax, one SIMD register per class) and its label,
//          into class-major buffers the per-class sorts read contiguously;
//   grad:  from d(loss)/d(p) of every (class, pixel), dL/dx_j = p_j (dL/dp_j - sum_c p_c dL/dp_c),
//          written in the logits' layout; ignored pixels get 0.
#pragma once
#include "softmax_block.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {

template <typename in_t, typename acc_t, typename tgt_t>
struct LovaszProbs {
  const LovaszArgs& a;
  acc_t* scratch;  // 2 * C * lanes: exponentials, transposed logits

  template <bool CLASS_LAST, typename V>
  void block(int64_t n, int64_t p, FocalStats& st) const {
    constexpr int L = Lanes<V>::n;
    const int64_t C = a.C, i = n * a.P + p, pixels = a.N * a.P;
    acc_t cls_buf[L], wt_buf[L];
    read_labels<L>(static_cast<const tgt_t*>(a.target) + i, C, a.ignore_index, static_cast<const acc_t*>(nullptr),
                   cls_buf, wt_buf, st);
    for (int k = 0; k < L; ++k) a.labels[i + k] = static_cast<int32_t>(cls_buf[k]);
    const in_t* x = static_cast<const in_t*>(a.logits) + n * C * a.P + (CLASS_LAST ? p * C : p);
    const BlockSoftmax<CLASS_LAST, false, V, in_t, acc_t> sm(x, C, a.P, scratch + C * L, scratch,
                                                              load_as<V, acc_t, acc_t>(cls_buf));
    acc_t* probs = static_cast<acc_t*>(a.probs) + i;
    for (int64_t c = 0; c < C; ++c) store_as<V, acc_t>(sm.prob(c), probs + c * pixels);
  }

  template <bool CLASS_LAST>
  void segment(int64_t n, int64_t p0, int64_t p1, FocalStats& st) const {
    using Vec = Vectorized<acc_t>;
    int64_t p = p0;
    for (; p + Vec::size() <= p1; p += Vec::size()) block<CLASS_LAST, Vec>(n, p, st);
    for (; p < p1; ++p) block<CLASS_LAST, acc_t>(n, p, st);
  }
};

inline FocalStats lovasz_probs_range(const LovaszArgs& a, int64_t begin, int64_t end) {
  FocalStats st;
  with_floating(a.logits_dtype, [&](auto x_tag) {
    with_integral(a.target_dtype, [&](auto y_tag) {
      using in_t = decltype(x_tag);
      using acc = compute_t<in_t>;
      std::vector<acc> scratch(2 * a.C * Vectorized<acc>::size());
      const LovaszProbs<in_t, acc, decltype(y_tag)> k{a, scratch.data()};
      for_each_segment(begin, end, a.P, [&](int64_t n, int64_t p0, int64_t p1) {
        if (a.class_last) {
          k.template segment<true>(n, p0, p1, st);
        } else {
          k.template segment<false>(n, p0, p1, st);
        }
      });
    });
  });
  return st;
}

// Plain loops over contiguous rows: the compiler vectorizes them for the capability.
template <typename in_t, typename acc_t>
void lovasz_grad_segment(const LovaszArgs& a, int64_t n, int64_t p0, int64_t p1, acc_t* dot) {
  using out_t = saved_grad_t<in_t>;
  const int64_t C = a.C, P = a.P, pixels = a.N * a.P, i0 = n * P + p0, len = p1 - p0;
  const acc_t* probs = static_cast<const acc_t*>(a.probs) + i0;
  const acc_t* dprobs = static_cast<const acc_t*>(a.dprobs) + i0;
  const int32_t* labels = a.labels + i0;
  std::fill(dot, dot + len, acc_t(0));
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* pc = probs + c * pixels;
    const acc_t* gc = dprobs + c * pixels;
    for (int64_t k = 0; k < len; ++k) dot[k] += pc[k] * gc[k];
  }
  out_t* grad = static_cast<out_t*>(a.grad);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* pc = probs + c * pixels;
    const acc_t* gc = dprobs + c * pixels;
    // Ignored pixels are selected out: their probabilities may be NaN.
    if (a.class_last) {
      out_t* g = grad + i0 * C + c;
      for (int64_t k = 0; k < len; ++k) g[k * C] = static_cast<out_t>(labels[k] >= 0 ? pc[k] * (gc[k] - dot[k]) : 0);
    } else {
      out_t* g = grad + (n * C + c) * P + p0;
      for (int64_t k = 0; k < len; ++k) g[k] = static_cast<out_t>(labels[k] >= 0 ? pc[k] * (gc[k] - dot[k]) : 0);
    }
  }
}

inline void lovasz_grad_range(const LovaszArgs& a, int64_t begin, int64_t end) {
  with_floating(a.logits_dtype, [&](auto x_tag) {
    using in_t = decltype(x_tag);
    using acc = compute_t<in_t>;
    std::vector<acc> dot(std::min<int64_t>(end - begin, a.P));
    for_each_segment(begin, end, a.P, [&](int64_t n, int64_t p0, int64_t p1) {
      lovasz_grad_segment<in_t, acc>(a, n, p0, p1, dot.data());
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
