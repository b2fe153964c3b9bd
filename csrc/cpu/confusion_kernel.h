// The confusion-matrix kernel, built once per CPU capability. From logits (N, C, P) the argmax
// over C is computed L pixels at a time (ties: the first class, NaN counts as the maximum, as
// torch.argmax) and never stored; from class-last logits (N, P, C) (channels_last), a pixel's
// classes are contiguous and scanned in place. Counts go to the caller's private histogram,
// merged by the op (integer sums: exact, and independent of the thread count).
#pragma once
#include "argmax_tree.h"
#include "simd.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {

// The SIMD count's interleaved histograms, for matrices up to this many cells (kSubHists x (C * C + 1)
// int64 per range, merged into the caller's at its end); larger ones are counted pixel by pixel.
constexpr int kSubHists = 4;
constexpr int64_t kSubHistMaxCells = 1024;
// fp32 logits with int64 labels and up to this many classes are counted with C a compile-time
// constant (one dispatch per segment): class-last, instead of a transpose called through a table
// per block, and an unrolled argmax (at 16 classes argmax_tree.h's copy for 16); NCHW, an
// unrolled argmax over the planes (5-15% faster than the loop over a run-time C from 2 to 8
// classes, both capabilities; benchmarks/README.md, sixteenth pass).
constexpr int kMaxFixedConfusionClasses = 16;
constexpr int kMaxFixedPlaneClasses = 8;

// Class-last blocks of at least five cache lines are counted from the two halves of a segment in
// turn: two streams for the hardware prefetchers instead of one (NCHW gives them C + 1). From
// memory, 2 threads (the roofline benchmark's order of calls), the NHWC count took 2.1-2.7 ms and
// 1.6-2.0 with this at 19 classes (AVX-512 and AVX2), 3.6-3.8 and 2.6-2.8 at 5 (AVX-512); blocks in
// L2 lost at most 5%. Narrower blocks are left in order: in L2, AVX-512 at 3 and 4 classes lost
// 20-30% (at 3 it gained 18% from memory) and AVX2 at 5 lost 6-10%, from memory too
// (benchmarks/README.md, seventeenth pass).
constexpr int64_t kTwoStreamMinBlockBytes = 5 * 64;

// The b-th of `blocks` blocks to visit: in turn from [0, half) and [half, 2 * half), then in order.
// half is odd, so that for power-of-two block sizes the two streams do not sit a multiple of 4 KB
// apart (the same cache sets). The counts are integer sums, so the order changes none of them; the
// bad label an error names is the first a segment meets in this order, so with several bad labels
// the two layouts may name different ones (as different threads could already).
inline int64_t two_stream_block(int64_t b, int64_t half) {
  return b < 2 * half ? (b >> 1) + (b & 1) * half : b;
}
inline int64_t two_stream_half(int64_t blocks) {
  const int64_t half = blocks / 2;
  return half - (half > 0 && half % 2 == 0);
}

template <typename x_t, typename tgt_t>
struct ConfusionKernel {
  const x_t* x;
  const tgt_t* y;
  int64_t C, P;
  bool has_ignore;
  int64_t ignore_index;
  bool class_last;

  compute_t<x_t>* tile;  // scratch: C * lanes (class-last layout)
  int64_t* sub;          // scratch: subs * (C * C + 1) counts, zeroed (logits_segment)
  int subs;              // kSubHists, or 0: no SIMD count

  // Argmax over classes of the lanes of V at pixel p of sample n, into pred. FIXED_C > 0: C is
  // that compile-time constant (fp32 blocks: the loop unrolls; class-last, the transpose inlines).
  template <bool CLASS_LAST, typename V, int FIXED_C = 0>
  inline void argmax(int64_t n, int64_t p, int64_t* pred) const {
    using acc = compute_t<x_t>;
    constexpr int L = Lanes<V>::n;
    acc buf[L];
    store_as<V, acc>(argmax_vec<CLASS_LAST, V, FIXED_C>(n, p), buf);
    for (int i = 0; i < L; ++i) pred[i] = static_cast<int64_t>(buf[i]);
  }

  // The same as class indices in the lanes of V. Always inlined: a call returns V through memory.
  template <bool CLASS_LAST, typename V, int FIXED_C = 0>
  [[gnu::always_inline]] inline V argmax_vec(int64_t n, int64_t p) const {
    using acc = compute_t<x_t>;
    constexpr int L = Lanes<V>::n;
    const int64_t classes = FIXED_C > 0 ? FIXED_C : C;  // segment() passes FIXED_C only when it is C
    const x_t* xn = x + n * classes * P + (CLASS_LAST ? p * classes : p);
    constexpr bool in_registers = CLASS_LAST && FIXED_C > 0 && class_last::rows_in_registers<FIXED_C, L>();
    [[maybe_unused]] V rows[in_registers ? FIXED_C : 1];
    if constexpr (CLASS_LAST && L > 1) class_last::prefetch(xn, classes * L * sizeof(x_t));
#if defined(MARSOPS_ARGMAX_TREE)
    if constexpr (CLASS_LAST && L == argmax_tree::L && std::is_same_v<x_t, float>) {  // 16 to 32 classes: argmax_tree.h
      if constexpr (FIXED_C >= argmax_tree::kMinClasses) {
        return argmax_tree::block<FIXED_C>(xn);
      } else if constexpr (FIXED_C == 0) {
        if (classes >= argmax_tree::kMinClasses && classes <= argmax_tree::kMaxClasses) return argmax_tree::block(xn, classes);
      }
    }
#endif
    if constexpr (in_registers) {
      class_last::rows<FIXED_C>(xn, rows);
    } else if constexpr (CLASS_LAST && FIXED_C > 0 && L > 1) {
      class_last::gather<FIXED_C, L>(xn, tile);
    } else if constexpr (CLASS_LAST) {
      gather_tile<L>(xn, classes, tile);
    }
    auto logits = [&](int64_t c) {
      if constexpr (in_registers) {
        return rows[c];
      } else if constexpr (CLASS_LAST) {
        return load_as<V, acc, acc>(tile + c * L);
      } else {
        return load_as<V, acc>(xn + c * P);
      }
    };
    return argmax_classes<V>(logits, classes);
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
      if constexpr (std::is_same_v<x_t, float> && std::is_same_v<tgt_t, int64_t>) {
        if (class_last) {
          auto fixed = [&](auto k) { logits_segment<true, k>(n, p0, p1, hist, r); };
          if (with_class_count<kMaxFixedConfusionClasses>(C, fixed)) return;
        } else {
          auto fixed = [&](auto k) { logits_segment<false, k>(n, p0, p1, hist, r); };
          if (with_class_count<kMaxFixedPlaneClasses>(C, fixed)) return;
        }
      }
      if (class_last) {
        logits_segment<true>(n, p0, p1, hist, r);
      } else {
        logits_segment<false>(n, p0, p1, hist, r);
      }
    } else {
      for (int64_t p = p0; p < p1; ++p) count(n * P + p, static_cast<int64_t>(x[n * P + p]), hist, r);
    }
  }

  template <bool CLASS_LAST, int FIXED_C = 0>
  void logits_segment(int64_t n, int64_t p0, int64_t p1, int64_t* hist, ConfusionFlags& r) const {
    using Vec = Vectorized<compute_t<x_t>>;
    constexpr int L = Vec::size();
    int64_t pred[L];
    int64_t p = p0;
#ifdef MARSOPS_LABELS_SIMD
    // int64 labels, fp32 logits: the cells of a block as one vector (labels_simd.h).
    if constexpr (L == labels_simd::kLanes && std::is_same_v<compute_t<x_t>, float> &&
                  std::is_same_v<tgt_t, int64_t>) {
      if (subs > 0) {  // C * C <= kSubHistMaxCells: fits int32
        const int64_t CC = C * C;
        const int64_t blocks = (p1 - p0) / L;
        const bool two_streams = CLASS_LAST && C * L * int64_t{sizeof(x_t)} >= kTwoStreamMinBlockBytes;
        const int64_t half = two_streams ? two_stream_half(blocks) : 0;
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t q = p0 + L * two_stream_block(b, half);  // the block's first pixel
          labels_simd::Mask ignored, in_range;
          const auto t = labels_simd::load(y + n * P + q, ignore_index, C, ignored, in_range);
          if (!has_ignore) ignored = labels_simd::and_not(ignored, ignored);  // none
          if (!labels_simd::none(labels_simd::and_not(labels_simd::not_(in_range), ignored))) {
            argmax<CLASS_LAST, Vec, FIXED_C>(n, q, pred);  // a bad label: count() records it
            for (int i = 0; i < L; ++i) count(n * P + q + i, pred[i], hist, r);
            continue;
          }
          int32_t cell[L];
          labels_simd::cells(t, argmax_vec<CLASS_LAST, Vec, FIXED_C>(n, q), labels_simd::and_not(in_range, ignored), C,
                             static_cast<int32_t>(CC), cell);
          // kSubHists interleaved histograms, so that equal neighbouring cells do not chain each
          // increment to the previous one's store.
          for (int i = 0; i < L; ++i) sub[(i % kSubHists) * (CC + 1) + cell[i]] += 1;
        }
        p = p0 + blocks * L;
      }
    }
#endif
    for (; p + L <= p1; p += L) {
      argmax<CLASS_LAST, Vec, FIXED_C>(n, p, pred);
      for (int i = 0; i < L; ++i) count(n * P + p + i, pred[i], hist, r);
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
  const int64_t cells = a.C * a.C;
  const int subs = !std::is_integral_v<x_t> && cells <= kSubHistMaxCells ? kSubHists : 0;
  std::vector<int64_t> sub(subs * (cells + 1), 0);
  const ConfusionKernel<x_t, tgt_t> k{static_cast<const x_t*>(a.input), static_cast<const tgt_t*>(a.target), a.C,
                                      a.P, a.has_ignore, a.ignore_index, a.class_last, tile.data(), sub.data(), subs};
  for_each_segment(begin, end, a.P, [&](int64_t n, int64_t p0, int64_t p1) { k.segment(n, p0, p1, hist, flags); });
  for (int s = 0; s < subs; ++s)
    for (int64_t j = 0; j < cells; ++j) hist[j] += sub[s * (cells + 1) + j];
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
