// Per-class counts of a range of labels, built once per CPU capability: the pre-pass of the focal
// loss's mean reductions, which need the count and weight sum of the counted pixels before the
// gradient is written. Up to kVectorCountClasses classes, with AVX2 / AVX-512, labels are counted
// a vector at a time into byte counters (vector_count_labels): int64 labels directly, other
// integer dtypes widened to int64 4096 at a time; otherwise, and in the rest, label by label into
// four interleaved histograms.
#pragma once
#include <algorithm>
#include <type_traits>
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

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#define MARSOPS_BYTE_COUNTS 1
// The whole vectors of 4 labels of y[0 .. n) counted, C <= 8; returns how many labels that was
// (the caller counts the rest). Each int64 lane holds eight byte counters, one per class 0..7: a
// label t adds (1 << t) << 7t = 1 << 8t, and nothing when t is outside [0, 8) (a shift by 64 or
// more gives 0; shifting by t first, so that no t outside [0, 8) wraps to a small count). Two
// shifts and an add per vector, where the per-class counters (a compare, an and and an add per
// class, after narrowing the labels to int32) took 2.5x longer with AVX2. 256-bit with AVX-512
// too: a 512-bit form measured slower there than the old per-class counters (0.32 against 0.26
// ns a label in L2; this one 0.19, benchmarks/README.md). Counts are added up every 255
// vectors, before a byte can overflow.
inline int64_t vector_count_labels(const int64_t* __restrict__ y, int64_t n, int64_t C, int64_t ignore_index,
                                   int64_t* counts, bool& any_bad) {
  constexpr int L = 4;
  constexpr int64_t kVectorsPerFlush = 255;
  const int64_t whole = n / L * L;
  int64_t per_byte[8] = {}, ignored_total = 0;
  const __m256i one = _mm256_set1_epi64x(1), ig = _mm256_set1_epi64x(ignore_index);
  for (int64_t start = 0; start < whole; start += kVectorsPerFlush * L) {
    const int64_t stop = std::min(whole, start + kVectorsPerFlush * L);
    __m256i bytes = _mm256_setzero_si256(), ignored = _mm256_setzero_si256();
    for (int64_t i = start; i < stop; i += L) {
      const __m256i t = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y + i));
      const __m256i seven_t = _mm256_sub_epi64(_mm256_slli_epi64(t, 3), t);
      bytes = _mm256_add_epi64(bytes, _mm256_sllv_epi64(_mm256_sllv_epi64(one, t), seven_t));
      ignored = _mm256_sub_epi64(ignored, _mm256_cmpeq_epi64(t, ig));  // all-ones lanes: -1
    }
    alignas(32) uint64_t b[L];
    alignas(32) int64_t g[L];
    _mm256_store_si256(reinterpret_cast<__m256i*>(b), bytes);
    _mm256_store_si256(reinterpret_cast<__m256i*>(g), ignored);
    for (int l = 0; l < L; ++l) {
      for (int k = 0; k < 8; ++k) per_byte[k] += static_cast<int64_t>((b[l] >> (8 * k)) & 0xff);
      ignored_total += g[l];
    }
  }
  // An ignore_index in [0, 8) was counted in its byte too.
  if (ignore_index >= 0 && ignore_index < 8) per_byte[ignore_index] -= ignored_total;
  int64_t counted_total = 0;
  for (int64_t c = 0; c < C; ++c) {
    counts[c] += per_byte[c];
    counted_total += per_byte[c];
  }
  // Every label not counted in a class is ignored or bad (slot C); a bad one exists where fewer
  // than all were counted or ignored (labels in [C, 8) sit in bytes no class reads).
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
#ifdef MARSOPS_BYTE_COUNTS
    if (C <= kVectorCountClasses) {
      if constexpr (std::is_same_v<tgt_t, int64_t>) {
        done = vector_count_labels(y, n, C, ignore_index, counts, any_bad);
      } else {
        // Other label dtypes (int32, uint8 masks): widened to int64 a block at a time (L1-sized),
        // then counted a vector at a time; label by label they took a fifth of a uint8 focal call.
        constexpr int64_t kBlock = 4096;  // whole vectors
        int64_t wide[kBlock];
        for (; done + kBlock <= n; done += kBlock) {
          for (int64_t i = 0; i < kBlock; ++i) wide[i] = static_cast<int64_t>(y[done + i]);
          vector_count_labels(wide, kBlock, C, ignore_index, counts, any_bad);
        }
      }
    }
#endif
    any_bad |= histogram_labels(y + done, n - done, C, ignore_index, counts);
  });
  return any_bad;
}

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
