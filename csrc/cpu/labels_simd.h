// int64 labels (torch's default) loaded a vector at a time: L labels narrowed to int32 lanes, with
// the lanes that hold ignore_index and those in [0, C). The scalar loops these replace
// (read_labels, the confusion counts) converted, compared and selected one label at a time, which
// cost more than the rest of the confusion kernel. Values are exact: labels used as classes are in
// [0, C), C < 2^24 (float) and C * C < 2^31 (the confusion cell index) where these are called.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace marsops::cpu {
namespace CPU_CAPABILITY {
namespace labels_simd {

#if defined(CPU_CAPABILITY_AVX512)
constexpr int kLanes = 16;
using Mask = __mmask16;

// The labels y[0 .. 16) as int32 (valid where in [0, C)); ignored / in_range: lane masks.
[[gnu::always_inline]] inline __m512i load(const int64_t* y, int64_t ignore_index, int64_t C, Mask& ignored,
                                            Mask& in_range) {
  const __m512i lo = _mm512_loadu_si512(y), hi = _mm512_loadu_si512(y + 8);
  const __m512i ig = _mm512_set1_epi64(ignore_index), c = _mm512_set1_epi64(C);
  ignored = static_cast<Mask>(_mm512_cmpeq_epi64_mask(lo, ig) | (_mm512_cmpeq_epi64_mask(hi, ig) << 8));
  in_range = static_cast<Mask>(_mm512_cmplt_epu64_mask(lo, c) | (_mm512_cmplt_epu64_mask(hi, c) << 8));
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(lo)), _mm512_cvtepi64_epi32(hi), 1);
}
// The labels of read_checked_labels (validated: each in [0, C) or ignore_index). Where
// ignore_index fits in int32, the narrowed labels equal it exactly where the labels do (no class
// shares its low 32 bits), so one 32-bit compare finds the ignored ones.
[[gnu::always_inline]] inline __m512i load_checked(const int64_t* y, int64_t ignore_index, Mask& ignored) {
  const __m512i lo = _mm512_loadu_si512(y), hi = _mm512_loadu_si512(y + 8);
  const __m512i t = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(lo)), _mm512_cvtepi64_epi32(hi), 1);
  if (ignore_index == static_cast<int32_t>(ignore_index)) {
    ignored = _mm512_cmpeq_epi32_mask(t, _mm512_set1_epi32(static_cast<int32_t>(ignore_index)));
  } else {
    const __m512i ig = _mm512_set1_epi64(ignore_index);
    ignored = static_cast<Mask>(_mm512_cmpeq_epi64_mask(lo, ig) | (_mm512_cmpeq_epi64_mask(hi, ig) << 8));
  }
  return t;
}
inline bool none(Mask m) { return m == 0; }
inline Mask and_not(Mask a, Mask b) { return static_cast<Mask>(a & ~b); }  // a and not b
inline Mask not_(Mask a) { return static_cast<Mask>(~a); }

// read_checked_labels' class (-1 where ignored) and weight (0 where ignored; w[t], or 1 without w).
// Up to 16 classes the weights fit one register and w[t] is one permute (the low 4 bits of t; an
// ignored lane's index is arbitrary, its weight zeroed), where a gather of 16 loads cost ~5% of
// the focal kernel; the masked load reads only w[0 .. C).
inline void class_and_weight(__m512i t, Mask ignored, const float* w, int64_t C, float* cls, float* wt) {
  const Mask valid = not_(ignored);
  _mm512_storeu_ps(cls, _mm512_mask_blend_ps(valid, _mm512_set1_ps(-1.0f), _mm512_cvtepi32_ps(t)));
  __m512 weight;
  if (!w) {
    weight = _mm512_mask_blend_ps(valid, _mm512_setzero_ps(), _mm512_set1_ps(1.0f));
  } else if (C <= kLanes) {
    const __m512 w_lanes = _mm512_maskz_loadu_ps(static_cast<Mask>((1u << C) - 1), w);
    weight = _mm512_maskz_permutexvar_ps(valid, t, w_lanes);
  } else {
    weight = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, t, w, 4);
  }
  _mm512_storeu_ps(wt, weight);
}

// Confusion cells t * C + pred (pred: the argmax as float lanes), `empty` where not counted.
inline void cells(__m512i t, __m512 pred, Mask counted, int64_t C, int32_t empty, int32_t* out) {
  const __m512i cell = _mm512_add_epi32(_mm512_mullo_epi32(t, _mm512_set1_epi32(static_cast<int32_t>(C))),
                                        _mm512_cvttps_epi32(pred));
  _mm512_storeu_si512(out, _mm512_mask_blend_epi32(counted, _mm512_set1_epi32(empty), cell));
}
#define MARSOPS_LABELS_SIMD 1

#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kLanes = 8;
using Mask = __m256i;  // all-ones lanes

// The low 32 bits of 4 + 4 int64 lanes: the even int32 of both (a0 a2 b0 b2 | a4 a6 b4 b6), then
// the middle 64-bit pairs swapped; two shuffles where two permutes and a lane insert took three.
inline __m256i narrow(__m256i a, __m256i b) {
  const __m256 even = _mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), _MM_SHUFFLE(2, 0, 2, 0));
  return _mm256_permute4x64_epi64(_mm256_castps_si256(even), _MM_SHUFFLE(3, 1, 2, 0));
}

[[gnu::always_inline]] inline __m256i load(const int64_t* y, int64_t ignore_index, int64_t C, Mask& ignored,
                                            Mask& in_range) {
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y));
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y + 4));
  const __m256i ig = _mm256_set1_epi64x(ignore_index), c = _mm256_set1_epi64x(C), zero = _mm256_setzero_si256();
  ignored = narrow(_mm256_cmpeq_epi64(a, ig), _mm256_cmpeq_epi64(b, ig));
  auto inside = [&](__m256i u) { return _mm256_andnot_si256(_mm256_cmpgt_epi64(zero, u), _mm256_cmpgt_epi64(c, u)); };
  in_range = narrow(inside(a), inside(b));
  return narrow(a, b);
}
// As the AVX-512 load_checked.
[[gnu::always_inline]] inline __m256i load_checked(const int64_t* y, int64_t ignore_index, Mask& ignored) {
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y));
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y + 4));
  const __m256i t = narrow(a, b);
  if (ignore_index == static_cast<int32_t>(ignore_index)) {
    ignored = _mm256_cmpeq_epi32(t, _mm256_set1_epi32(static_cast<int32_t>(ignore_index)));
  } else {
    const __m256i ig = _mm256_set1_epi64x(ignore_index);
    ignored = narrow(_mm256_cmpeq_epi64(a, ig), _mm256_cmpeq_epi64(b, ig));
  }
  return t;
}
inline bool none(Mask m) { return _mm256_testz_si256(m, m); }
inline Mask and_not(Mask a, Mask b) { return _mm256_andnot_si256(b, a); }
inline Mask not_(Mask a) { return _mm256_xor_si256(a, _mm256_set1_epi32(-1)); }

// As the AVX-512 form: a permute (the low 3 bits of t) up to 8 classes, the masked load reading
// only w[0 .. C).
inline void class_and_weight(__m256i t, Mask ignored, const float* w, int64_t C, float* cls, float* wt) {
  const __m256 ig = _mm256_castsi256_ps(ignored);
  _mm256_storeu_ps(cls, _mm256_cvtepi32_ps(_mm256_or_si256(t, ignored)));  // ignored lanes: int -1
  __m256 weight;
  if (!w) {
    weight = _mm256_blendv_ps(_mm256_set1_ps(1.0f), _mm256_setzero_ps(), ig);
  } else if (C <= kLanes) {
    const __m256i first_c = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(C)),
                                               _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 w_lanes = _mm256_maskload_ps(w, first_c);
    weight = _mm256_andnot_ps(ig, _mm256_permutevar8x32_ps(w_lanes, t));
  } else {
    weight = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), w, t, _mm256_castsi256_ps(not_(ignored)), 4);
  }
  _mm256_storeu_ps(wt, weight);
}

inline void cells(__m256i t, __m256 pred, Mask counted, int64_t C, int32_t empty, int32_t* out) {
  const __m256i cell = _mm256_add_epi32(_mm256_mullo_epi32(t, _mm256_set1_epi32(static_cast<int32_t>(C))),
                                        _mm256_cvttps_epi32(pred));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_blendv_epi8(_mm256_set1_epi32(empty), cell, counted));
}
#define MARSOPS_LABELS_SIMD 1
#endif

}  // namespace labels_simd
}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
