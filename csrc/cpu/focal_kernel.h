// The SIMD focal-loss forward (+ fused gradient, + confusion counts) kernel, built once per CPU
// capability. One SIMD register holds the same class of L neighbouring pixels, and every
// per-pixel formula is evaluated L pixels at a time (softmax_block.h).
#pragma once
#include <memory>
#include <optional>

#include "softmax_block.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {

// The largest C given its own compile-time copy of the focal kernel (fp32 logits; int64 labels,
// other label dtypes widened to them).
constexpr int kMaxFixedFocalClasses = 8;

// How far ahead (bytes) each NCHW gradient plane is prefetched, with the write hint (FocalKernel::finish).
constexpr int64_t kGradPlanePrefetchDistance = 2048;

template <typename in_t, typename acc_t, typename tgt_t>
struct FocalKernel {
  const in_t* x;
  const tgt_t* y;   // the labels of pixels [y_first, ...) of the flattened (N, P) index
  int64_t y_first;
  const acc_t* w;  // nullptr: all ones
  int64_t C, P;
  acc_t gamma, eps;
  int64_t ignore_index;
  acc_t grad_scale;
  in_t* loss_none;  // nullptr: reduced
  saved_grad_t<in_t>* grad;  // nullptr: no gradient (fp32 for fp16 logits: csrc/saved_grad.h)
  acc_t* scratch;   // scratch_size(C): the blocks' exponentials, transposed logits, smoothing coefficients
  bool labels_checked;  // FocalArgs::labels_checked: no counts, no validation

  // Blocks of 1 pixel to L, each in two phases: its labels and softmax (start), then its focal
  // terms, loss and gradient (finish). KC > 0: C as a compile-time constant (BlockSoftmax).
  template <bool COUNT, bool CLASS_LAST, int KC, typename V>
  using Softmax = BlockSoftmax<CLASS_LAST, COUNT, V, in_t, acc_t, KC>;

  int64_t logit_offset(int64_t n, int64_t p, bool class_last) const { return n * C * P + (class_last ? p * C : p); }

  // Phase 1 of the lanes of V at pixel p of sample n: the labels (cls: the class, or -1 when
  // ignored; wt: its weight) and the softmax, whose exponentials (and, class-last, transposed
  // logits) go to slot ([2][C][L]). COUNT: also adds each non-ignored pixel's (label, argmax)
  // pair to hist.
  template <bool COUNT, bool CLASS_LAST, int KC, typename V>
  [[gnu::always_inline]] inline void start(int64_t n, int64_t p, FocalStats& st, int64_t* hist, acc_t* slot,
                                           std::optional<Softmax<COUNT, CLASS_LAST, KC, V>>& sm, V& cls, V& wt) const {
    constexpr int L = Lanes<V>::n;
    acc_t cls_buf[L], wt_buf[L];
    if (labels_checked) {
      read_checked_labels<L>(y + (n * P + p - y_first), ignore_index, w, KC > 0 ? KC : C, cls_buf, wt_buf);
    } else {
      read_labels<L>(y + (n * P + p - y_first), C, ignore_index, w, cls_buf, wt_buf, st);
    }
    cls = load_as<V, acc_t, acc_t>(cls_buf);
    wt = load_as<V, acc_t, acc_t>(wt_buf);
    sm.emplace(x + logit_offset(n, p, CLASS_LAST), C, P, slot + C * L, slot, cls);
    if constexpr (COUNT) {
      acc_t pred_buf[L];
      store_as<V, acc_t>(sm->pred, pred_buf);
      for (int i = 0; i < L; ++i)
        if (cls_buf[i] >= 0) hist[static_cast<int64_t>(cls_buf[i]) * C + static_cast<int64_t>(pred_buf[i])] += 1;
    }
  }

  // Phase 2: the focal terms of a started block, its per-pixel losses and gradient; returns the
  // summed loss of its lanes.
  template <bool COUNT, bool CLASS_LAST, int KC, typename V>
  [[gnu::always_inline]] inline V finish(int64_t n, int64_t p, const Softmax<COUNT, CLASS_LAST, KC, V>& sm,
                                         const V& cls, const V& wt) const {
    constexpr int L = Lanes<V>::n;
    using Sm = Softmax<COUNT, CLASS_LAST, KC, V>;
    const FocalPixels<V, acc_t> fp(sm, cls, wt, w, gamma, eps, coef_scratch(), grad_scale);
    if (loss_none) store_as<V, acc_t>(fp.loss, loss_none + n * P + p);
    if (grad) {
      saved_grad_t<in_t>* gn = grad + logit_offset(n, p, CLASS_LAST);
      // The gradient lines of a block some way ahead are prefetched: a store to a line not in cache
      // must first read it for ownership, and the hardware prefetchers left the gradient's stores
      // waiting on those reads. The write hint gives prefetchw only where the target has PRFCHW;
      // these builds' targets do not, so this is prefetcht0, a read prefetch (a line no other core
      // holds normally arrives exclusive, ready for the store). Measured so (one thread, logits and
      // gradient in L3 or memory, ns a pixel): 5 classes NCHW 3.9-4.1 -> 3.3-3.6 with AVX-512,
      // 4.6-4.7 -> 4.3-4.4 with AVX2, class-last 4.3-4.9 -> 3.8-4.2 and 5.5-6.0 -> 4.7-4.9; 19
      // classes 11-23% less (benchmarks/README.md, sixteenth pass). Prefetching the NCHW logits
      // too gained nothing more.
      if constexpr (L > 1) {
        if constexpr (CLASS_LAST) {
          class_last::prefetch<true>(gn, sm.classes() * L * sizeof(*gn));
        } else {
          const uintptr_t ahead = reinterpret_cast<uintptr_t>(gn) + kGradPlanePrefetchDistance;  // may pass the end
          for (int64_t c = 0; c < sm.classes(); ++c)
            __builtin_prefetch(reinterpret_cast<const void*>(ahead + c * P * sizeof(*gn)), 1, 3);
        }
      }
      [[maybe_unused]] V g_rows[Sm::kRegisterRows ? KC : 1];  // class-last: transposed from registers
      V c_v(0);  // the class index as a vector, counted rather than converted each class
      for (int64_t c = 0; c < sm.classes(); ++c, c_v = c_v + V(1)) {
        const V g = fp.grad(c, sm.exp(c), lanes_eq(cls, c_v));
        if constexpr (Sm::kRegisterRows) {
          g_rows[c] = g;
        } else if constexpr (CLASS_LAST) {
          store_as<V, acc_t>(g, sm.tile + c * L);  // the logits are no longer needed: reuse the tile
        } else {
          store_as<V, acc_t>(g, gn + c * P);
        }
      }
      if constexpr (Sm::kRegisterRows) {
        class_last::scatter_rows<KC>(g_rows, gn);
      } else if constexpr (CLASS_LAST && Sm::kFixedTranspose) {
        class_last::scatter<KC, L>(sm.tile, gn);
      } else if constexpr (CLASS_LAST) {
        scatter_tile<L>(sm.tile, C, gn);
      }
    }
    return fp.loss;
  }

  // The number of vector blocks whose softmaxes are computed before any of their focal terms. A
  // block's work is one long chain of dependent steps (exponentials, their sum, its log and
  // reciprocal, the focal terms, the gradient) about as long as the ~300 instructions the core
  // looks ahead, so one block barely overlapped the next; in two phases over a few blocks, each
  // phase's chains are short and independent. For a compile-time C only: with many classes a
  // block's exponentials are independent work enough, and the slots' scratch grows with C.
  template <int KC>
  static constexpr int kTileBlocks = KC > 0 ? 4 : 1;
  // scratch: [C][L] smoothing coefficients (one block's at a time), then a slot of [2][C][L]
  // (exponentials, transposed logits) per block of a tile; C > kMaxFixedFocalClasses has no tiles.
  static int64_t scratch_size(int64_t C) {
    return (1 + 2 * (C <= kMaxFixedFocalClasses ? kTileBlocks<kMaxFixedFocalClasses> : 1)) * C * Vectorized<acc_t>::size();
  }
  acc_t* coef_scratch() const { return scratch; }
  acc_t* slot(int t) const { return scratch + (1 + 2 * t) * C * Vectorized<acc_t>::size(); }

  // Pixels [p0, p1) of sample n.
  template <bool COUNT, bool CLASS_LAST, int KC>
  FocalStats segment(int64_t n, int64_t p0, int64_t p1, int64_t* hist) const {
    using Vec = Vectorized<acc_t>;
    constexpr int L = Vec::size(), T = kTileBlocks<KC>;
    FocalStats st;
    // The blocks run on a local copy of the kernel: through `this`, each gradient store (a float
    // store that may, for the compiler, alias the float members gamma, eps, ...) made every member
    // be read again, C times per block, and the per-block constants (a division) be recomputed.
    const FocalKernel k = *this;
    // In double (simd.h, v_sum_double), one running sum per lane (independent adds, where one sum
    // of every lane in turn was a chain of L dependent double adds per block), added up in lane
    // order at the end of the segment: the order depends on the segment only, not on the threads.
    double lanes[L] = {};
    int64_t p = p0;
    std::optional<Softmax<COUNT, CLASS_LAST, KC, Vec>> sm[T];
    Vec cls[T], wt[T];
    for (; p + T * L <= p1; p += T * L) {
      for (int t = 0; t < T; ++t) k.template start<COUNT, CLASS_LAST, KC>(n, p + t * L, st, hist, k.slot(t), sm[t], cls[t], wt[t]);
      for (int t = 0; t < T; ++t) add_lanes_double(k.template finish<COUNT, CLASS_LAST, KC>(n, p + t * L, *sm[t], cls[t], wt[t]), lanes);
    }
    for (; p + L <= p1; p += L) {
      k.template start<COUNT, CLASS_LAST, KC>(n, p, st, hist, k.slot(0), sm[0], cls[0], wt[0]);
      add_lanes_double(k.template finish<COUNT, CLASS_LAST, KC>(n, p, *sm[0], cls[0], wt[0]), lanes);
    }
    double loss = 0;
    for (int i = 0; i < L; ++i) loss += lanes[i];
    for (; p < p1; ++p) {
      std::optional<Softmax<COUNT, CLASS_LAST, KC, acc_t>> one;
      acc_t c1, w1;
      k.template start<COUNT, CLASS_LAST, KC>(n, p, st, hist, k.slot(0), one, c1, w1);
      loss += v_sum_double(k.template finish<COUNT, CLASS_LAST, KC>(n, p, *one, c1, w1));
    }
    st.loss_sum = loss;
    return st;
  }
};

// fp32 logits whose labels are another integer dtype (int32, uint8 masks) and few classes: the
// range's labels widened to int64 first, so the compile-time copies (and, on AVX2 / AVX-512, the
// vector label reads) serve them too (1.4-1.6x slower without). focal_cpu.cpp's ranges are its
// chunks of 4096 pixels, so the copy stays small.
template <typename tgt_t>
FocalStats focal_range_widened(const FocalArgs& a, int64_t begin, int64_t end, int64_t* hist);

// target_first: a.target holds the labels from this flattened pixel index on (a widened range).
template <typename in_t, typename tgt_t>
FocalStats focal_range_typed(const FocalArgs& a, int64_t begin, int64_t end, int64_t* hist,
                             int64_t target_first = 0) {
  if constexpr (std::is_same_v<in_t, float> && !std::is_same_v<tgt_t, int64_t>) {
    if (a.C <= kMaxFixedFocalClasses) return focal_range_widened<tgt_t>(a, begin, end, hist);
  }
  using acc = compute_t<in_t>;
  using Kernel = FocalKernel<in_t, acc, tgt_t>;
  std::vector<acc> scratch(Kernel::scratch_size(a.C));
  const Kernel kernel{
      static_cast<const in_t*>(a.logits), static_cast<const tgt_t*>(a.target), target_first,
      static_cast<const acc*>(a.weight),
      a.C, a.P, static_cast<acc>(a.gamma), static_cast<acc>(a.label_smoothing), a.ignore_index,
      static_cast<acc>(a.grad_scale), static_cast<in_t*>(a.loss_none), static_cast<saved_grad_t<in_t>*>(a.grad),
      scratch.data(), a.labels_checked};
  FocalStats st;
  auto run = [&](auto kc) {
    constexpr int KC = decltype(kc)::value;
    for_each_segment(begin, end, a.P, [&](int64_t n, int64_t p0, int64_t p1) {
      if (a.class_last) {
        st.merge(hist ? kernel.template segment<true, true, KC>(n, p0, p1, hist)
                      : kernel.template segment<false, true, KC>(n, p0, p1, hist));
      } else {
        st.merge(hist ? kernel.template segment<true, false, KC>(n, p0, p1, hist)
                      : kernel.template segment<false, false, KC>(n, p0, p1, hist));
      }
    });
  };
  // fp32 logits with int64 labels (the common case) and few classes: C at compile time.
  if constexpr (std::is_same_v<in_t, float> && std::is_same_v<tgt_t, int64_t>) {
    if (with_class_count<kMaxFixedFocalClasses>(a.C, run)) return st;
  }
  run(std::integral_constant<int, 0>{});
  return st;
}

template <typename tgt_t>
FocalStats focal_range_widened(const FocalArgs& a, int64_t begin, int64_t end, int64_t* hist) {
  const tgt_t* y = static_cast<const tgt_t*>(a.target);
  const auto wide = std::make_unique_for_overwrite<int64_t[]>(end - begin);  // every element written below
  for (int64_t i = begin; i < end; ++i) wide[i - begin] = static_cast<int64_t>(y[i]);
  FocalArgs w = a;
  w.target = wide.get();
  w.target_dtype = ScalarType::Long;
  return focal_range_typed<float, int64_t>(w, begin, end, hist, begin);
}

inline FocalStats focal_range(const FocalArgs& a, int64_t begin, int64_t end, int64_t* hist) {
  FocalStats out;
  with_floating(a.logits_dtype, [&](auto x_tag) {
    with_integral(a.target_dtype, [&](auto y_tag) {
      out = focal_range_typed<decltype(x_tag), decltype(y_tag)>(a, begin, end, hist);
    });
  });
  return out;
}

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
