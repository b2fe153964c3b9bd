// Per-class counts of a range of labels, built once per CPU capability: the pre-pass of the focal
// loss's mean reductions, which need the count and weight sum of the counted pixels before the
// gradient is written. Up to kVectorCountClasses classes, labels are counted a vector at a time
// (one compare and one masked add per class per vector): int64 labels directly, other integer
// dtypes widened to int64 4096 at a time; otherwise, and in the rest, label by label into four
// interleaved histograms.
#pragma once
#include <algorithm>
#include <vector>

#include "simd.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {

constexpr int kVectorCountClasses = 8;

// Adds to counts (C + 1 int64; slot C: ignored or bad) label by label; returns whether a label
// was neither ignore_index nor in [0, C).
template <typename tgt_t>
bool histogram_labels(const tgt_t* __restrict__ y, int64_t n, int64_t C, int64_t ignore_index, int64_t* counts) {
  // Four interleaved histograms: consecutive equal labels would otherwise chain each increment to
  // the previous one's store (one label per store-forwarding latency instead of ~1 per cycle).
  const int64_t E = C + 1;
  std::vector<int64_t> h4(4 * E, 0);
  bool any_bad = false;
  auto slot = [&](int64_t i) {
    const int64_t t = static_cast<int64_t>(y[i]);
    const bool ignored = t == ignore_index;
    const bool in_range = static_cast<uint64_t>(t) < static_cast<uint64_t>(C);
    any_bad |= !ignored && !in_range;
    return (!ignored && in_range) ? t : C;
  };
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const int64_t s0 = slot(i), s1 = slot(i + 1), s2 = slot(i + 2), s3 = slot(i + 3);
    h4[s0] += 1;
    h4[E + s1] += 1;
    h4[2 * E + s2] += 1;
    h4[3 * E + s3] += 1;
  }
  for (; i < n; ++i) h4[slot(i)] += 1;
  for (int64_t c = 0; c < E; ++c) counts[c] += h4[c] + h4[E + c] + h4[2 * E + c] + h4[3 * E + c];
  return any_bad;
}

#ifdef MARSOPS_LABELS_SIMD
// The whole vectors of y[0 .. n) counted with C a compile-time constant; returns how many labels
// that was (the caller counts the rest). The counts of a class stay in int32 lanes for at most
// kBlocksPerFlush vectors.
template <int C>
int64_t vector_count_labels(const int64_t* __restrict__ y, int64_t n, int64_t ignore_index, int64_t* counts,
                            bool& any_bad) {
  namespace ls = labels_simd;
  constexpr int L = ls::kLanes;
  constexpr int64_t kBlocksPerFlush = int64_t{1} << 24;
  const int64_t whole = n / L * L;
  int64_t counted_total = 0, ignored_total = 0;
  for (int64_t start = 0; start < whole; start += kBlocksPerFlush * L) {
    const int64_t stop = std::min(whole, start + kBlocksPerFlush * L);
    ls::IntV acc[C + 1];  // acc[C]: the ignored labels
    for (int c = 0; c <= C; ++c) acc[c] = ls::zero();
    for (int64_t i = start; i < stop; i += L) {
      ls::Mask ignored, in_range;
      const ls::IntV t = ls::load(y + i, ignore_index, C, ignored, in_range);
      const ls::Mask counted = ls::and_not(in_range, ignored);
      for (int c = 0; c < C; ++c) acc[c] = ls::add_one(acc[c], ls::and_(ls::equal(t, c), counted));
      acc[C] = ls::add_one(acc[C], ignored);
    }
    for (int c = 0; c < C; ++c) {
      const int64_t k = ls::lane_sum(acc[c]);
      counts[c] += k;
      counted_total += k;
    }
    ignored_total += ls::lane_sum(acc[C]);
  }
  // Every label of these vectors not counted in a class is ignored or bad (slot C); a bad one
  // exists where fewer than all were counted or ignored.
  counts[C] += whole - counted_total;
  any_bad |= counted_total + ignored_total < whole;
  return whole;
}
#endif

// Adds the per-class counts of y[begin, end) (tgt_t: the labels' integer type) to counts (C + 1
// int64; slot C: ignored or bad); returns whether any label was neither ignore_index nor in [0, C).
inline bool label_counts_range(const void* labels, ScalarType dtype, int64_t begin, int64_t end, int64_t C,
                               int64_t ignore_index, int64_t* counts) {
  bool any_bad = false;
  with_integral(dtype, [&](auto tag) {
    using tgt_t = decltype(tag);
    const tgt_t* y = static_cast<const tgt_t*>(labels) + begin;
    int64_t n = end - begin, done = 0;
#ifdef MARSOPS_LABELS_SIMD
    if constexpr (std::is_same_v<tgt_t, int64_t>) {
      with_class_count<kVectorCountClasses>(
          C, [&](auto k) { done = vector_count_labels<decltype(k)::value>(y, n, ignore_index, counts, any_bad); });
    } else {
      // Other label dtypes (int32, uint8 masks): widened to int64 a block at a time (L1-sized),
      // then counted a vector at a time; label by label they took a fifth of a uint8 focal call.
      constexpr int64_t kBlock = 4096;  // whole vectors of either capability
      with_class_count<kVectorCountClasses>(C, [&](auto k) {
        int64_t wide[kBlock];
        for (; done + kBlock <= n; done += kBlock) {
          for (int64_t i = 0; i < kBlock; ++i) wide[i] = static_cast<int64_t>(y[done + i]);
          vector_count_labels<decltype(k)::value>(wide, kBlock, ignore_index, counts, any_bad);
        }
      });
    }
#endif
    any_bad |= histogram_labels(y + done, n - done, C, ignore_index, counts);
  });
  return any_bad;
}

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
