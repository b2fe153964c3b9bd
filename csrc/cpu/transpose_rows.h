// Class-last blocks of fp32 (channels_last logits, L pixels x C classes, contiguous as [L][C]) to a
// [C][L] tile or class rows in registers and back, through square L x L register transposes (8x8
// with AVX2, 16x16 with AVX-512): pixel i's classes [jL, jL + L) are one unaligned vector load, L
// such rows make one transpose, and the transpose's first C - jL rows are class rows of the tile.
// A block's last 1-4 classes (C - jL <= 4, C >= 2) are read instead as 128-bit loads, one a pixel,
// and transposed within 128-bit lanes (narrow_class_rows). It costs about (C / L) * (L loads + L
// log2 L shuffles) per block against 2 * L * C scalar moves; simd.h's class_last picks it where it
// measured faster than both the scalar loops and transpose16.h's pairwise permutes (~C * C / 2
// shuffles): AVX-512 from 9 to 32 classes, AVX2 up to 32 (four squares).
//
// No access leaves the block: a row that would read past its end is read from the block's last L
// values and rotated into place (its extra lanes are other pixels', never used), and the 128-bit
// load of the block's last pixel is masked to its own values. Stores go part by part, the partial
// last part first, pixel by pixel in order: a full-width store of a pixel's partial part runs into
// the next pixel's first values, which later stores overwrite; a store that would run past the
// block is cut to its own lanes (masked with AVX-512, lane by lane with AVX2). So a block never
// touches its neighbours' memory, which other threads may be writing
// (tests/cpp/class_last_bounds.cpp puts blocks against guard pages).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

namespace marsops::cpu {
namespace CPU_CAPABILITY {
namespace transpose_rows {

#if defined(CPU_CAPABILITY_AVX512)
constexpr int L = 16;
using R = __m512;
inline R load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, R v) { _mm512_storeu_ps(p, v); }
inline R zero() { return _mm512_setzero_ps(); }
// Lanes [s, s + L) of the L values at p, wrapping (lanes past L are the block's, unused).
inline R load_rotated(const float* p, int s) {
  alignas(64) static constexpr int32_t idx[2 * L] = {0, 1, 2,  3,  4,  5,  6,  7,  8, 9, 10, 11, 12, 13, 14, 15,
                                                     0, 1, 2,  3,  4,  5,  6,  7,  8, 9, 10, 11, 12, 13, 14, 15};
  return _mm512_permutexvar_ps(_mm512_loadu_si512(idx + s), _mm512_loadu_ps(p));
}
// The first n (< L) lanes of v to p.
inline void store_first(float* p, R v, int n) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v); }
// The 4 values at each of p[0], p[1], p[2], p[3] as the register's four 128-bit lanes, but only
// the first n at p[3] (the block's last pixel; the rest of that lane is 0): no read past the block.
inline R load_quads(const float* const* p, int n) {
  const __m128 last = _mm_maskz_loadu_ps(static_cast<__mmask8>((1u << n) - 1), p[3]);
  const __m256 lo = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p[0])), _mm_loadu_ps(p[1]), 1);
  const __m256 hi = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p[2])), last, 1);
  return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}

// Within each 128-bit lane: unpack*_ps, shuffle_ps.
inline R unpack_lo(R a, R b) { return _mm512_unpacklo_ps(a, b); }
inline R unpack_hi(R a, R b) { return _mm512_unpackhi_ps(a, b); }
template <int imm> inline R shuffle(R a, R b) { return _mm512_shuffle_ps(a, b, imm); }

// Stages 3 and 4 of transpose: 128-bit lanes between registers four apart, then eight apart.
[[gnu::always_inline]] inline void transpose_lanes(R* r) {
  R t[16];
  for (int i = 0; i < 16; i += 8)
    for (int k = 0; k < 4; ++k) {
      t[i + k] = _mm512_shuffle_f32x4(r[i + k], r[i + k + 4], 0x88);
      t[i + k + 4] = _mm512_shuffle_f32x4(r[i + k], r[i + k + 4], 0xDD);
    }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0x88);
    r[k + 8] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0xDD);
  }
}
#define MARSOPS_TRANSPOSE_ROWS 1

#elif defined(CPU_CAPABILITY_AVX2)
constexpr int L = 8;
using R = __m256;
inline R load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, R v) { _mm256_storeu_ps(p, v); }
inline R zero() { return _mm256_setzero_ps(); }
inline R load_rotated(const float* p, int s) {
  static constexpr int32_t idx[2 * L] = {0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7};
  return _mm256_permutevar8x32_ps(_mm256_loadu_ps(p), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + s)));
}
inline void store_first(float* p, R v, int n) {
  alignas(32) float buf[L];
  _mm256_store_ps(buf, v);
  for (int i = 0; i < n; ++i) p[i] = buf[i];
}
inline R load_quads(const float* const* p, int n) {
  const __m128i first_n = _mm_cmpgt_epi32(_mm_set1_epi32(n), _mm_setr_epi32(0, 1, 2, 3));
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p[0])), _mm_maskload_ps(p[1], first_n), 1);
}

inline R unpack_lo(R a, R b) { return _mm256_unpacklo_ps(a, b); }
inline R unpack_hi(R a, R b) { return _mm256_unpackhi_ps(a, b); }
template <int imm> inline R shuffle(R a, R b) { return _mm256_shuffle_ps(a, b, imm); }

// Stage 3 of transpose: 128-bit lanes between registers four apart.
[[gnu::always_inline]] inline void transpose_lanes(R* r) {
  R u[8];
  for (int k = 0; k < 4; ++k) {
    u[k] = _mm256_permute2f128_ps(r[k], r[k + 4], 0x20);
    u[k + 4] = _mm256_permute2f128_ps(r[k], r[k + 4], 0x31);
  }
  for (int k = 0; k < 8; ++k) r[k] = u[k];
}
#define MARSOPS_TRANSPOSE_ROWS 1
#endif

#ifdef MARSOPS_TRANSPOSE_ROWS
// Registers in[0 .. 4) transposed as 4x4 squares within each 128-bit lane into out[0 .. 4) (in
// place allowed): four unpacks, four shuffles, taken in the order that puts the rows in place.
[[gnu::always_inline]] inline void transpose_in_lanes(const R* in, R* out) {
  const R t0 = unpack_lo(in[0], in[1]), t1 = unpack_hi(in[0], in[1]);
  const R t2 = unpack_lo(in[2], in[3]), t3 = unpack_hi(in[2], in[3]);
  out[0] = shuffle<0x44>(t0, t2);
  out[1] = shuffle<0xEE>(t0, t2);
  out[2] = shuffle<0x44>(t1, t3);
  out[3] = shuffle<0xEE>(t1, t3);
}

// The L x L square r transposed: each four registers within their 128-bit lanes, then the lanes
// between registers (L log2 L shuffles). The in-lane squares put their rows in order (where the
// shuffles' natural order swaps rows 1 and 2); that swap may come before the lane stages because
// those treat the registers of every group of four alike.
[[gnu::always_inline]] inline void transpose(R* r) {
  for (int i = 0; i < L; i += 4) transpose_in_lanes(r + i, r + i);
  transpose_lanes(r);
}

constexpr int kMaxClasses = 32;  // simd.h's class_last::kMaxFixedClasses: the blocks any class count uses

// Classes [j, C) of block src when there are at most 4 (C >= 2): a 128-bit load of the 4 values at
// src + iC + j for each pixel i, which runs into pixel i + 1's values where C - j < 4 (C >= 2 keeps
// that inside the block; the last pixel's load is masked), register k's 128-bit lanes holding
// pixels k, k + 4, ..., then a 4x4 transpose within the lanes (4 unpacks, a shuffle a row) leaves
// row c's lanes in pixel order. For these few rows the square took ~37 shuffles with AVX-512 (its
// unused rows' shuffles removed by the compiler); here 4 + C - j once inlined (the rows a caller
// never reads are removed the same way), plus the lane inserts (most with a memory operand).
template <int C>
[[gnu::always_inline]] inline void narrow_class_rows(const float* __restrict__ src, int j, R* r) {
  constexpr int lanes = L / 4;
  R q[4];
  for (int k = 0; k < 4; ++k) {
    const float* p[lanes];
    for (int l = 0; l < lanes; ++l) p[l] = src + (4 * l + k) * C + j;
    q[k] = load_quads(p, k == 3 ? C - j : 4);  // the block's last pixel: its own values only
  }
  transpose_in_lanes(q, r);  // rows [C - j, 4) hold other values, unused
}

// Classes [j, j + L) of block src (L pixels x C classes) as L class rows in r (rows past C are
// other pixels' values; where narrow_class_rows applies only rows [0, 4) are written).
template <int C>
[[gnu::always_inline]] inline void class_rows(const float* __restrict__ src, int j, R* r) {
  if constexpr (C >= 2) {
    if (C - j <= 4) {
      narrow_class_rows<C>(src, j, r);
      return;
    }
  }
  constexpr int end = L * C;
  for (int i = 0; i < L; ++i) {
    const int off = i * C + j;
    r[i] = off + L <= end ? load(src + off) : load_rotated(src + end - L, off - (end - L));
  }
  transpose(r);
}

// Block src (L pixels x C classes) to tile [C][L]. C is a compile-time constant: with it every
// loop unrolls and the rows stay in registers (a run-time C measured 2-4x slower).
template <int C>
inline void gather(const float* __restrict__ src, float* __restrict__ tile) {
  static_assert(C >= 1 && C <= kMaxClasses);
  for (int j = 0; j < C; j += L) {
    R r[L];
    class_rows<C>(src, j, r);
    for (int k = 0; k < L && j + k < C; ++k) store(tile + (j + k) * L, r[k]);
  }
}

// Class rows [C] (registers) back to the block dst (L pixels x C classes), one part (L classes) at a
// time, the last (partial) part first: a full-width store of a pixel's partial part runs into the
// next pixel's first classes, which the full part's stores write afterwards; only the store that
// would run past the block is cut to its own lanes. Part by part, L registers are live, not C
// rounded up to 2L (with 19 classes on AVX-512 the 32 registers of both parts left the
// compiler copying rows through the stack: scatter took 3.4 ns a pixel, 2.2 this way, Intel Xeon).
template <int C>
[[gnu::always_inline]] inline void scatter_rows(const R* rows, float* __restrict__ dst) {
  static_assert(C >= 1 && C <= kMaxClasses);
  constexpr int parts = (C + L - 1) / L;
  for (int part = parts - 1; part >= 0; --part) {
    const int j = part * L;
    R r[L];
    for (int k = 0; k < L; ++k) r[k] = j + k < C ? rows[j + k] : zero();
    transpose(r);
    for (int i = 0; i < L; ++i) {
      const int off = i * C + j;
      if (off + L > L * C) {
        store_first(dst + off, r[i], std::min(L, C - j));
      } else {
        store(dst + off, r[i]);
      }
    }
  }
}

// Tile [C][L] back to the block dst.
template <int C>
inline void scatter(const float* __restrict__ tile, float* __restrict__ dst) {
  R rows[C];
  for (int c = 0; c < C; ++c) rows[c] = load(tile + c * L);
  scatter_rows<C>(rows, dst);
}
#endif

#ifdef MARSOPS_TRANSPOSE_ROWS
// An odd class count C < L: the block is exactly C registers, and the value of pixel i, class c
// (element C i + c) is lane (C i + c) % L of register (C i + c) / L. C being odd (L a power of
// two), one class's L values sit in L different lanes, so its row is C - 1 blends by constant
// masks (each lane taken from the register that holds it) and one permute (lane (C i + c) % L to
// lane i): C permutes a block, where the squares' transposes take L log2 L shuffles (24 with
// AVX2) on the same port. Scatter is the same backwards: each row permuted to its values' lanes,
// then each register blended from the rows. Whole-register loads and stores, none partial.
namespace odd {
// Where it measured faster (Intel Xeon, rows from a block into registers and back, ns a pixel; a
// standalone loop, benchmarks/README's thirteenth pass, as class_last_transposes.cpp's tiles
// misbehave at 5 classes with AVX2): AVX2 3 and 5 classes (0.67 -> 0.26, 0.95 -> 0.61; 7: 1.08
// against 1.13, its 42 blends outweigh the square's shuffles), AVX-512 5 and 7 (0.61 -> 0.48,
// 1.20 -> 0.86; 3: the same).
template <int C>
constexpr bool applies = C % 2 == 1 && C > 1 && C < L && (L == 16 || C <= 5);

// The lanes (bits) of register k that hold class c.
template <int C, int c, int k>
constexpr unsigned lanes_of() {
  unsigned m = 0;
  for (int i = 0; i < L; ++i)
    if ((C * i + c) / L == k) m |= 1u << ((C * i + c) % L);
  return m;
}
// Permute indices: class row from its lanes (GATHER), or to them.
template <int C, int c, bool GATHER>
struct Perm {
  alignas(64) static constexpr auto idx = [] {
    std::array<int32_t, L> a{};
    for (int i = 0; i < L; ++i) {
      if (GATHER) {
        a[i] = (C * i + c) % L;
      } else {
        a[(C * i + c) % L] = i;
      }
    }
    return a;
  }();
};

#if defined(CPU_CAPABILITY_AVX512)
template <unsigned mask>
inline R blend(R a, R b) { return _mm512_mask_blend_ps(static_cast<__mmask16>(mask), a, b); }
template <int C, int c, bool GATHER>
inline R permute(R v) { return _mm512_permutexvar_ps(_mm512_load_si512(Perm<C, c, GATHER>::idx.data()), v); }
#else
template <unsigned mask>
inline R blend(R a, R b) { return _mm256_blend_ps(a, b, mask); }
template <int C, int c, bool GATHER>
inline R permute(R v) {
  return _mm256_permutevar8x32_ps(v, _mm256_load_si256(reinterpret_cast<const __m256i*>(Perm<C, c, GATHER>::idx.data())));
}
#endif

template <int C, int c, int... k>
[[gnu::always_inline]] inline R class_row(const R* in, std::integer_sequence<int, k...>) {
  R v = in[0];
  ((v = blend<lanes_of<C, c, k + 1>()>(v, in[k + 1])), ...);
  return permute<C, c, true>(v);
}
template <int C, int... c>
[[gnu::always_inline]] inline void class_rows(const float* __restrict__ src, R* rows, std::integer_sequence<int, c...>) {
  R in[C];
  for (int k = 0; k < C; ++k) in[k] = load(src + k * L);
  ((rows[c] = class_row<C, c>(in, std::make_integer_sequence<int, C - 1>{})), ...);
}
// Block src (L pixels x C classes) as C class rows.
template <int C>
[[gnu::always_inline]] inline void class_rows(const float* __restrict__ src, R* rows) {
  static_assert(applies<C>);
  class_rows<C>(src, rows, std::make_integer_sequence<int, C>{});
}

template <int C, int k, int... c>
[[gnu::always_inline]] inline R block_register(const R* placed, std::integer_sequence<int, c...>) {
  R v = placed[0];
  ((v = blend<lanes_of<C, c + 1, k>()>(v, placed[c + 1])), ...);
  return v;
}
// n: 0 .. C - 1, the classes and as many registers.
template <int C, int... n>
[[gnu::always_inline]] inline void scatter_rows(const R* rows, float* __restrict__ dst, std::integer_sequence<int, n...>) {
  R placed[C];
  ((placed[n] = permute<C, n, false>(rows[n])), ...);
  ((store(dst + n * L, block_register<C, n>(placed, std::make_integer_sequence<int, C - 1>{}))), ...);
}
// C class rows back to the block dst.
template <int C>
[[gnu::always_inline]] inline void scatter_rows(const R* rows, float* __restrict__ dst) {
  static_assert(applies<C>);
  scatter_rows<C>(rows, dst, std::make_integer_sequence<int, C>{});
}
}  // namespace odd
#endif

}  // namespace transpose_rows
}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
