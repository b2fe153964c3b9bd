// The argmax of class-last fp32 blocks of 16 to 32 classes (L pixels x C classes, contiguous as
// [L][C]; L = 16 with AVX-512, 8 with AVX2) without transposing the first 16 classes: a pixel's
// classes are whole-register loads (AVX-512 classes 0..15, AVX2 0..7 and 8..15), and a shuffle
// tree halves each pixel's candidates stage by stage (adjacent class ranges, the lower range
// first, so a tie keeps it as torch.argmax does), leaving the pixels' winners in pixel order
// after the last stage. AVX-512: 44 shuffles, 23 compares (8 of them the NaN check), 15 max and
// 8 masked adds a block, where the 16x16 square took 64 shuffles and then two compares and a max
// per class (a prototype at 19 classes, blocks in cache: 2.4 -> 1.9 ns a pixel); AVX2: two trees
// of 20 shuffles and a merge, where two 8x8 squares took 48 (2.8 -> 2.3 ns a pixel). Classes
// 16..C-1 are class rows (transpose_rows) taken in order. A block with a NaN anywhere is redone
// by argmax_by_rule. Numbers: benchmarks/README.md, fifteenth pass.
#pragma once
#include "simd.h"

#if defined(MARSOPS_TRANSPOSE_ROWS)
#define MARSOPS_ARGMAX_TREE 1
namespace marsops::cpu {
namespace CPU_CAPABILITY {
namespace argmax_tree {

namespace ops = argmax_ops;
using R = ops::R;
constexpr int L = transpose_rows::L;
constexpr int kMinClasses = 16, kMaxClasses = transpose_rows::kMaxClasses;

// One stage: the candidates of lo (lower classes) and hi, the higher's where strictly greater
// (every class of hi is above lo's, which AVX2's take, a max of indices, relies on).
[[gnu::always_inline]] inline void keep_greater(R lo, R hi, R ilo, R ihi, R& best, R& idx) {
  idx = ops::take(ilo, hi, lo, ihi);
  best = ops::max(hi, lo);
}

// Stage 2 of both trees: registers 2m and 2m + 1 (stage 1's candidates of two pixels each) to
// register m, the same even / odd shuffle within 128-bit lanes pairing adjacent candidates.
template <int N>
[[gnu::always_inline]] inline void in_lane_stage(R* v, R* id) {
  using transpose_rows::shuffle;
  for (int m = 0; m < N; ++m) {
    const R a = v[2 * m], b = v[2 * m + 1], ia = id[2 * m], ib = id[2 * m + 1];
    keep_greater(shuffle<0x88>(a, b), shuffle<0xDD>(a, b), shuffle<0x88>(ia, ib), shuffle<0xDD>(ia, ib), v[m], id[m]);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// Classes 0..15 of the block's 16 pixels: the maximum and its class in pixel order; false where
// any of them is NaN.
template <int C>
[[gnu::always_inline]] inline bool first16(const float* __restrict__ src, R& best, R& idx) {
  R v[8], id[8];
  __mmask16 nan = 0;
  // Stage 1, pixels 2m and 2m + 1: in each 128-bit lane q (classes 4q..4q + 3) shuffle_ps takes
  // the even classes of both pixels into lo, the odd ones into hi: classes (4q, 4q + 1) and
  // (4q + 2, 4q + 3) become one candidate each, their class a constant or that plus 1.
  const R even = _mm512_setr_ps(0, 2, 0, 2, 4, 6, 4, 6, 8, 10, 8, 10, 12, 14, 12, 14);
  for (int m = 0; m < 8; ++m) {
    const R a = _mm512_loadu_ps(src + 2 * m * C), b = _mm512_loadu_ps(src + (2 * m + 1) * C);
    const R lo = _mm512_shuffle_ps(a, b, 0x88), hi = _mm512_shuffle_ps(a, b, 0xDD);
    nan |= _mm512_cmp_ps_mask(hi, lo, _CMP_UNORD_Q);  // every value of the 16 is in one pair
    id[m] = _mm512_mask_add_ps(even, _mm512_cmp_ps_mask(hi, lo, _CMP_GT_OQ), even, _mm512_set1_ps(1.f));
    v[m] = _mm512_max_ps(hi, lo);
  }
  // Stage 2: lane q now holds 4 pixels' candidates for classes 4q..4q + 3.
  in_lane_stage<4>(v, id);
  // Stages 3 and 4 pair 128-bit lanes: classes 0..3 with 4..7 and 8..11 with 12..15, then 0..7
  // with 8..15.
  for (int m = 0; m < 2; ++m) {
    const R a = v[2 * m], b = v[2 * m + 1], ia = id[2 * m], ib = id[2 * m + 1];
    keep_greater(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD), _mm512_shuffle_f32x4(ia, ib, 0x88),
                 _mm512_shuffle_f32x4(ia, ib, 0xDD), v[m], id[m]);
  }
  keep_greater(_mm512_shuffle_f32x4(v[0], v[1], 0x88), _mm512_shuffle_f32x4(v[0], v[1], 0xDD),
               _mm512_shuffle_f32x4(id[0], id[1], 0x88), _mm512_shuffle_f32x4(id[0], id[1], 0xDD), best, idx);
  return nan == 0;
}
#else
// Classes k0..k0 + 7 of the block's 8 pixels, the same stages with 8 lanes: shuffle_ps pairs
// classes within 128-bit lanes twice, then permute2f128 pairs the lanes. NaN lanes are or-ed into
// unord.
template <int C>
[[gnu::always_inline]] inline void eight(const float* __restrict__ src, int k0, R& best, R& idx, R& unord) {
  const R even = _mm256_add_ps(_mm256_setr_ps(0, 2, 0, 2, 4, 6, 4, 6), _mm256_set1_ps(static_cast<float>(k0)));
  R v[4], id[4];
  for (int m = 0; m < 4; ++m) {
    const R a = _mm256_loadu_ps(src + 2 * m * C + k0), b = _mm256_loadu_ps(src + (2 * m + 1) * C + k0);
    const R lo = _mm256_shuffle_ps(a, b, 0x88), hi = _mm256_shuffle_ps(a, b, 0xDD);
    unord = _mm256_or_ps(unord, _mm256_cmp_ps(hi, lo, _CMP_UNORD_Q));
    id[m] = _mm256_add_ps(even, _mm256_and_ps(_mm256_cmp_ps(hi, lo, _CMP_GT_OQ), _mm256_set1_ps(1.f)));
    v[m] = _mm256_max_ps(hi, lo);
  }
  in_lane_stage<2>(v, id);
  keep_greater(_mm256_permute2f128_ps(v[0], v[1], 0x20), _mm256_permute2f128_ps(v[0], v[1], 0x31),
               _mm256_permute2f128_ps(id[0], id[1], 0x20), _mm256_permute2f128_ps(id[0], id[1], 0x31), best, idx);
}
// Classes 0..15 of the block's 8 pixels: two trees of 8 and the higher's where strictly greater.
template <int C>
[[gnu::always_inline]] inline bool first16(const float* __restrict__ src, R& best, R& idx) {
  R unord = _mm256_setzero_ps(), best_hi, idx_hi;
  eight<C>(src, 0, best, idx, unord);
  eight<C>(src, 8, best_hi, idx_hi, unord);
  keep_greater(best, best_hi, idx, idx_hi, best, idx);
  return _mm256_movemask_ps(unord) == 0;
}
#endif

// The argmax (class indices as floats) of a block of C classes, kMinClasses <= C <= kMaxClasses.
template <int C>
inline R block(const float* __restrict__ src) {
  static_assert(C >= kMinClasses && C <= kMaxClasses);
  R best, idx;
  bool ok = first16<C>(src, best, idx);
  if constexpr (C > 16) {
    ops::NanTracker nan = ops::nan_start(ops::set1(0.f));  // no NaN yet
    for (int j = 16; j < C; j += L) {
      R rows[L];
      transpose_rows::class_rows<C>(src, j, rows);
      for (int k = 0; k < L && j + k < C; ++k) {
        idx = ops::take(idx, rows[k], best, ops::set1(static_cast<float>(j + k)));
        best = ops::max(rows[k], best);
        nan = ops::nan_step(nan, rows[k]);
      }
    }
    ok = ok && ops::nan_none(nan);
  }
  if (__builtin_expect(!ok, 0)) {
    alignas(64) float tile[L * C];
    class_last::gather<C, L>(src, tile);
    return argmax_by_rule<Vectorized<float>>([&](int64_t c) { return Vectorized<float>::loadu(tile + c * L); }, C);
  }
  return idx;
}

// The same for a run-time C in [kMinClasses, kMaxClasses], through a table of the copies.
template <int... Cs>
inline R block(const float* src, int64_t C, std::integer_sequence<int, Cs...>) {
  using Fn = R (*)(const float*);
  static constexpr Fn table[] = {&block<Cs + kMinClasses>...};
  return table[C - kMinClasses](src);
}
inline R block(const float* src, int64_t C) {
  return block(src, C, std::make_integer_sequence<int, kMaxClasses - kMinClasses + 1>{});
}

}  // namespace argmax_tree
}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
#endif
