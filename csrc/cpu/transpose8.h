// Class-last blocks transposed with 8x8 in-register transposes (AVX2 instructions; the AVX2 build
// and the AVX-512 build for C > 16, where transpose16.h stops): a block of L pixels (L a multiple
// of 8) x C classes, [L][C] in memory, to a [C][L] fp32 tile and back. Eight pixels and eight
// classes at a time: eight row loads (pixel i's classes c0 .. c0 + 7, at stride C), the classic
// unpack / shuffle / permute2f128 transpose (24 shuffles), and a store per class: about 0.6
// instructions per element, against two (a scalar load and store) in gather_tile's loops.
//
// Rows of a group past the last class read (gather) the next pixel's values, which are dropped;
// the last rows of a block would read past the block, so they are masked loads. In scatter, a
// row's lanes past the last class are written with garbage over the next pixel's first classes,
// which that pixel's own row overwrites right after (rows go in order); only stores that would
// pass the end of the block are masked.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace marsops::cpu {
namespace CPU_CAPABILITY {
namespace transpose8 {

// Lanes [0, n) set, n in [0, 8].
inline __m256i lane_mask(int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n < 0 ? 0 : n > 8 ? 8 : n)), idx);
}

inline void transpose(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// src: L pixels x C classes (fp32, [L][C]); tile: [C][L].
template <int L>
inline void gather(const float* __restrict__ src, int64_t C, float* __restrict__ tile) {
  static_assert(L % 8 == 0);
  const int64_t end = L * C;  // the block's extent: nothing at or past it is read
  for (int h = 0; h < L / 8; ++h) {
    for (int64_t c0 = 0; c0 < C; c0 += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) {
        const int64_t at = (8 * h + i) * C + c0;
        r[i] = at + 8 <= end ? _mm256_loadu_ps(src + at) : _mm256_maskload_ps(src + at, lane_mask(end - at));
      }
      transpose(r);
      const int64_t nc = C - c0 < 8 ? C - c0 : 8;
      for (int64_t j = 0; j < nc; ++j) _mm256_storeu_ps(tile + (c0 + j) * L + 8 * h, r[j]);
    }
  }
}

// tile: [C][L] fp32; dst: L pixels x C classes ([L][C]).
template <int L>
inline void scatter(const float* __restrict__ tile, int64_t C, float* __restrict__ dst) {
  static_assert(L % 8 == 0);
  constexpr int kMaxGroups = 4;  // C <= 32 (the caller checks)
  const int64_t end = L * C, groups = (C + 7) / 8;
  for (int h = 0; h < L / 8; ++h) {
    __m256 rows[kMaxGroups][8];
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = 8 * g, nc = C - c0 < 8 ? C - c0 : 8;
      for (int64_t j = 0; j < 8; ++j) rows[g][j] = j < nc ? _mm256_loadu_ps(tile + (c0 + j) * L + 8 * h) : _mm256_setzero_ps();
      transpose(rows[g]);
    }
    for (int i = 0; i < 8; ++i) {  // pixel by pixel, so a row's garbage lanes are overwritten next
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t at = (8 * h + i) * C + 8 * g;
        if (at + 8 <= end) {
          _mm256_storeu_ps(dst + at, rows[g][i]);
        } else {
          _mm256_maskstore_ps(dst + at, lane_mask(end - at), rows[g][i]);
        }
      }
    }
  }
}

}  // namespace transpose8
}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
