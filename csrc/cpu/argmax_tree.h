// The argmax of class-last fp32 blocks of 16 to 32 classes (AVX-512: 16 pixels x C classes,
// contiguous as [16][C]) without transposing the first 16 classes: each pixel's classes 0..15 are
// one load, and a tree of four stages halves each pixel's candidates (adjacent class ranges, the
// lower range first, so a tie keeps it as torch.argmax does), the shuffles of each stage leaving
// the 16 pixels' winners in pixel order after the last. That is 44 shuffles, 23 compares (8 of
// them the NaN check), 15 max and 8 masked adds a block, where the 16x16 square took 64 shuffles
// and then two compares and a max per class (a prototype at 19 classes, blocks in cache: 2.4 ->
// 1.9 ns a pixel; benchmarks/README.md, fifteenth pass). Classes 16..C-1 are class rows
// (transpose_rows) taken in order. A block with a NaN anywhere is redone by argmax_by_rule.
#pragma once
#include "simd.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {
#if defined(CPU_CAPABILITY_AVX512)
namespace argmax_tree {

constexpr int kMinClasses = 16, kMaxClasses = transpose_rows::kMaxClasses;

// One stage: the candidates of lo (lower classes) and hi, the higher's where strictly greater.
[[gnu::always_inline]] inline void keep_greater(__m512 lo, __m512 hi, __m512 ilo, __m512 ihi, __m512& best, __m512& idx) {
  idx = _mm512_mask_mov_ps(ilo, _mm512_cmp_ps_mask(hi, lo, _CMP_GT_OQ), ihi);
  best = _mm512_max_ps(hi, lo);
}

// Classes 0..15 of the block's 16 pixels (a pixel's 16 values start every C floats): the
// maximum and its class in pixel order; false where any of them is NaN.
template <int C>
[[gnu::always_inline]] inline bool first16(const float* __restrict__ src, __m512& best, __m512& idx) {
  __m512 v[8], id[8];
  __mmask16 nan = 0;
  // Stage 1, pixels 2m and 2m + 1: in each 128-bit lane q (classes 4q..4q + 3) shuffle_ps takes
  // the even classes of both pixels into lo, the odd ones into hi: classes (4q, 4q + 1) and
  // (4q + 2, 4q + 3) become one candidate each, their class a constant or that plus 1.
  const __m512 even = _mm512_setr_ps(0, 2, 0, 2, 4, 6, 4, 6, 8, 10, 8, 10, 12, 14, 12, 14);
  for (int m = 0; m < 8; ++m) {
    const __m512 a = _mm512_loadu_ps(src + 2 * m * C), b = _mm512_loadu_ps(src + (2 * m + 1) * C);
    const __m512 lo = _mm512_shuffle_ps(a, b, 0x88), hi = _mm512_shuffle_ps(a, b, 0xDD);
    nan |= _mm512_cmp_ps_mask(hi, lo, _CMP_UNORD_Q);  // every value of the 16 is in one pair
    id[m] = _mm512_mask_add_ps(even, _mm512_cmp_ps_mask(hi, lo, _CMP_GT_OQ), even, _mm512_set1_ps(1.f));
    v[m] = _mm512_max_ps(hi, lo);
  }
  // Stage 2, the same shuffles: lane q now holds 4 pixels' candidates for classes 4q..4q + 3.
  for (int m = 0; m < 4; ++m) {
    const __m512 a = v[2 * m], b = v[2 * m + 1], ia = id[2 * m], ib = id[2 * m + 1];
    keep_greater(_mm512_shuffle_ps(a, b, 0x88), _mm512_shuffle_ps(a, b, 0xDD), _mm512_shuffle_ps(ia, ib, 0x88),
                 _mm512_shuffle_ps(ia, ib, 0xDD), v[m], id[m]);
  }
  // Stages 3 and 4 pair 128-bit lanes: classes 0..3 with 4..7 and 8..11 with 12..15, then 0..7
  // with 8..15.
  for (int m = 0; m < 2; ++m) {
    const __m512 a = v[2 * m], b = v[2 * m + 1], ia = id[2 * m], ib = id[2 * m + 1];
    keep_greater(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD), _mm512_shuffle_f32x4(ia, ib, 0x88),
                 _mm512_shuffle_f32x4(ia, ib, 0xDD), v[m], id[m]);
  }
  keep_greater(_mm512_shuffle_f32x4(v[0], v[1], 0x88), _mm512_shuffle_f32x4(v[0], v[1], 0xDD),
               _mm512_shuffle_f32x4(id[0], id[1], 0x88), _mm512_shuffle_f32x4(id[0], id[1], 0xDD), best, idx);
  return nan == 0;
}

// The argmax (class indices as floats) of a block of C classes, kMinClasses <= C <= kMaxClasses.
template <int C>
inline __m512 block(const float* __restrict__ src) {
  static_assert(C >= kMinClasses && C <= kMaxClasses);
  __m512 best, idx;
  bool ok = first16<C>(src, best, idx);
  if constexpr (C > 16) {
    __m512 rows[16];
    transpose_rows::class_rows<C>(src, 16, rows);
    __mmask16 ordered = 0xFFFF;
    for (int c = 16; c < C; ++c) {
      const __m512 v = rows[c - 16];
      idx = _mm512_mask_mov_ps(idx, _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ), _mm512_set1_ps(static_cast<float>(c)));
      best = _mm512_max_ps(v, best);
      ordered = _mm512_mask_cmp_ps_mask(ordered, v, v, _CMP_ORD_Q);
    }
    ok = ok && ordered == 0xFFFF;
  }
  if (__builtin_expect(!ok, 0)) {
    alignas(64) float tile[16 * C];
    class_last::gather<C, 16>(src, tile);
    return argmax_by_rule<Vectorized<float>>([&](int64_t c) { return Vectorized<float>::loadu(tile + c * 16); }, C);
  }
  return idx;
}

// The same for a run-time C in [kMinClasses, kMaxClasses], through a table of the copies.
template <int... Cs>
inline __m512 block(const float* src, int64_t C, std::integer_sequence<int, Cs...>) {
  using Fn = __m512 (*)(const float*);
  static constexpr Fn table[] = {&block<Cs + kMinClasses>...};
  return table[C - kMinClasses](src);
}
inline __m512 block(const float* src, int64_t C) {
  return block(src, C, std::make_integer_sequence<int, kMaxClasses - kMinClasses + 1>{});
}

}  // namespace argmax_tree
#endif
}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
