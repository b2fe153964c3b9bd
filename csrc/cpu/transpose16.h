// In-register transposes of class-last blocks for the AVX-512 build: 16 pixels x C classes
// (2 <= C <= 16), contiguous as [16][C] in memory (channels_last logits), to a [C][16] tile of
// fp32 (one register per class) and back. A block of 16 * C values is C vector loads; each output
// register takes its lanes from every pair of input registers with one two-source permute
// (vpermt2ps) and a masked move, so a block costs about C * C / 2 shuffles instead of 32 * C
// scalar moves (gather_tile's loops). The permutation tables are computed at compile time per C.
#pragma once
#include <immintrin.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>
#include <utility>

namespace marsops::cpu {
namespace CPU_CAPABILITY {
namespace transpose16 {

constexpr int kMaxClasses = 16;

template <int C>
struct Plan {
  static constexpr int NP = (C + 1) / 2;  // pairs of registers (the last one alone when C is odd)
  // gather: tile row c, pair j -> lanes' index into the pair's 32 values, and the lanes it owns.
  int32_t gather_idx[C][NP][16];
  uint16_t gather_mask[C][NP];
  // scatter: memory register k (values 16k .. 16k + 15), pair j of tile rows.
  int32_t scatter_idx[C][NP][16];
  uint16_t scatter_mask[C][NP];

  constexpr Plan() : gather_idx{}, gather_mask{}, scatter_idx{}, scatter_mask{} {
    for (int c = 0; c < C; ++c)
      for (int j = 0; j < NP; ++j)
        for (int i = 0; i < 16; ++i) {
          const int f = i * C + c;  // pixel i, class c: value f of the block
          gather_idx[c][j][i] = (f - 32 * j) & 31;
          if (f / 32 == j) gather_mask[c][j] = static_cast<uint16_t>(gather_mask[c][j] | (1u << i));
        }
    for (int k = 0; k < C; ++k)
      for (int j = 0; j < NP; ++j)
        for (int l = 0; l < 16; ++l) {
          const int f = 16 * k + l, cls = f % C, pixel = f / C;
          scatter_idx[k][j][l] = ((cls - 2 * j) * 16 + pixel) & 31;
          if (cls / 2 == j) scatter_mask[k][j] = static_cast<uint16_t>(scatter_mask[k][j] | (1u << l));
        }
  }
};

template <typename in_t>
inline __m512 load16(const in_t* p) {
  if constexpr (std::is_same_v<in_t, float>) {
    return _mm512_loadu_ps(p);
  } else if constexpr (std::is_same_v<in_t, c10::Half>) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else {  // bf16: the upper half of an fp32
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
}

// Permutes registers v[0 .. C) by a plan's (idx, mask) tables into one register.
template <int C>
inline __m512 permute_pairs(const __m512* v, const int32_t (*idx)[16], const uint16_t* mask) {
  constexpr int NP = Plan<C>::NP;
  __m512 out = _mm512_permutex2var_ps(v[0], _mm512_loadu_si512(idx[0]), v[C > 1 ? 1 : 0]);
  for (int j = 1; j < NP; ++j) {
    const __m512 t = _mm512_permutex2var_ps(v[2 * j], _mm512_loadu_si512(idx[j]), v[2 * j + 1 < C ? 2 * j + 1 : 2 * j]);
    out = _mm512_mask_mov_ps(out, static_cast<__mmask16>(mask[j]), t);
  }
  return out;
}

// The C class rows of block src, in registers.
template <int C, typename in_t>
[[gnu::always_inline]] inline void rows(const in_t* __restrict__ src, __m512* out) {
  static constexpr Plan<C> plan{};
  __m512 v[C];
  for (int k = 0; k < C; ++k) v[k] = load16(src + 16 * k);
  for (int c = 0; c < C; ++c) out[c] = permute_pairs<C>(v, plan.gather_idx[c], plan.gather_mask[c]);
}

template <int C, typename in_t>
inline void gather(const in_t* __restrict__ src, float* __restrict__ tile) {
  __m512 r[C];
  rows<C>(src, r);
  for (int c = 0; c < C; ++c) _mm512_storeu_ps(tile + 16 * c, r[c]);
}

// Class rows t (registers) back to the block dst.
template <int C>
[[gnu::always_inline]] inline void scatter_rows(const __m512* t, float* __restrict__ dst) {
  static constexpr Plan<C> plan{};
  for (int k = 0; k < C; ++k)
    _mm512_storeu_ps(dst + 16 * k, permute_pairs<C>(t, plan.scatter_idx[k], plan.scatter_mask[k]));
}

template <int C>
inline void scatter(const float* __restrict__ tile, float* __restrict__ dst) {
  __m512 t[C];
  for (int c = 0; c < C; ++c) t[c] = _mm512_loadu_ps(tile + 16 * c);
  scatter_rows<C>(t, dst);
}

// Calls f(std::integral_constant<int, C>{}) for 2 <= C <= kMaxClasses; returns false otherwise.
template <typename F, int... Cs>
inline bool with_classes(int64_t C, F&& f, std::integer_sequence<int, Cs...>) {
  return ((C == Cs + 2 ? (f(std::integral_constant<int, Cs + 2>{}), true) : false) || ...);
}
template <typename F>
inline bool with_classes(int64_t C, F&& f) {
  return with_classes(C, std::forward<F>(f), std::make_integer_sequence<int, kMaxClasses - 1>{});
}

}  // namespace transpose16
}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
