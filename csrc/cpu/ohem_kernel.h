// The OHEM selection's pass over the logits, built once per CPU capability: each non-ignored
// pixel's log-probability of its label, lp = x_t - max - log(sum exp) (never underflowing, as p_t
// itself would past a margin of ~87 in fp32), and a histogram of lp, from which the op finds the
// threshold by counting (ohem_cpu.cpp). The last, partial block of a sample runs through the same
// vector code as the others, padded: lp is a function of the pixel's logits alone, so equal pixels
// tie exactly wherever they lie (the selection is exact on ties).
#pragma once
#include "softmax_block.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {

template <typename in_t, typename acc_t, typename tgt_t>
struct OhemKernel {
  using Vec = Vectorized<acc_t>;
  static constexpr int L = Vec::size();
  const OhemArgs& a;
  const in_t* x;
  const tgt_t* y;
  acc_t* tile;  // [C][L] scratch each
  acc_t* exps;
  acc_t* pad;   // the padded last block's logits, class-last [L][C]

  // The labels of n <= L pixels from flat index i: class (-1: ignored, or padding) and output label.
  void labels(int64_t i, int n, acc_t* cls, OhemCounts& st) const {
    for (int k = 0; k < L; ++k) {
      if (k >= n) {
        cls[k] = acc_t(-1);
        continue;
      }
      const int64_t t = static_cast<int64_t>(y[i + k]);
      const bool ignored = t == a.ignore_index;
      const bool bad = !ignored && (t < 0 || t >= a.C);
      if (bad && !st.bad) {
        st.bad = true;
        st.bad_label = t;
      }
      const bool valid = !ignored && !bad;
      cls[k] = valid ? static_cast<acc_t>(t) : acc_t(-1);
      a.label[i + k] = valid ? static_cast<int32_t>(t) : -1;
    }
  }

  // n <= L pixels from flat index i, whose logits start at src (class-last, or NCHW with stride P).
  template <bool CLASS_LAST, typename src_t>
  void block(const src_t* src, int64_t i, int n, OhemCounts& st, int64_t* hist) const {
    acc_t cls[L], lp[L];
    labels(i, n, cls, st);
    const BlockSoftmax<CLASS_LAST, false, Vec, src_t, acc_t> sm(src, a.C, a.P, tile, exps, Vec::loadu(cls));
    (sm.xt - sm.m - sm.log_s).store(lp);
    acc_t* out = static_cast<acc_t*>(a.lp) + i;
    for (int k = 0; k < n; ++k) {
      // One NaN (sorted last by its key) and one zero: -0 would order below +0.
      const acc_t v = lp[k] != lp[k] ? std::numeric_limits<acc_t>::quiet_NaN() : lp[k] + acc_t(0);
      out[k] = v;
      if (cls[k] < 0) continue;
      st.valid += 1;
      st.below += static_cast<double>(v) < a.log_thresh;
      hist[ohem_bin(v)] += 1;
    }
  }

  void segment(int64_t n, int64_t p0, int64_t p1, OhemCounts& st, int64_t* hist) const {
    const int64_t C = a.C, P = a.P;
    const in_t* xs = x + n * C * P;
    int64_t p = p0;
    for (; p + L <= p1; p += L) {
      if (a.class_last) {
        block<true>(xs + p * C, n * P + p, L, st, hist);
      } else {
        block<false>(xs + p, n * P + p, L, st, hist);
      }
    }
    if (p == p1) return;
    const int r = static_cast<int>(p1 - p);
    for (int k = 0; k < L; ++k)
      for (int64_t c = 0; c < C; ++c)
        pad[k * C + c] = k < r ? static_cast<acc_t>(a.class_last ? xs[(p + k) * C + c] : xs[c * P + p + k]) : acc_t(0);
    block<true>(pad, n * P + p, r, st, hist);
  }
};

inline OhemCounts ohem_probs_range(const OhemArgs& a, int64_t begin, int64_t end, int64_t* hist) {
  OhemCounts out;
  with_floating(a.logits_dtype, [&](auto x_tag) {
    with_integral(a.target_dtype, [&](auto y_tag) {
      using in_t = decltype(x_tag);
      using acc = compute_t<in_t>;
      const int64_t CL = a.C * Vectorized<acc>::size();
      std::vector<acc> scratch(3 * CL);
      const OhemKernel<in_t, acc, decltype(y_tag)> k{a, static_cast<const in_t*>(a.logits),
                                                     static_cast<const decltype(y_tag)*>(a.target), scratch.data(),
                                                     scratch.data() + CL, scratch.data() + 2 * CL};
      for_each_segment(begin, end, a.P, [&](int64_t n, int64_t p0, int64_t p1) { k.segment(n, p0, p1, out, hist); });
    });
  });
  return out;
}

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
