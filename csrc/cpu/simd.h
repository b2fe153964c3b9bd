// Lane-generic SIMD helpers shared by the CPU kernels. Included once per CPU capability (the
// simd_{default,avx2,avx512}.cpp files define CPU_CAPABILITY first), so at::vec types are that
// capability's. V is either a scalar type or at::vec::Vectorized of it, so one kernel body
// serves the SIMD main loop and the scalar tail.
//
// Only header-only parts of ATen are used here (the vector types, Half, BFloat16): nothing that
// needs a libtorch symbol but the C functions of the Sleef library libtorch_cpu exports.
#pragma once
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels.h"
#ifdef CPU_CAPABILITY_AVX512
#include "transpose16.h"
#endif
#include "transpose_rows.h"
#include "labels_simd.h"

namespace marsops::cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// The type arithmetic is done in: fp16 / bf16 are computed in fp32.
template <typename T> struct compute_type { using type = T; };
template <> struct compute_type<c10::Half> { using type = float; };
template <> struct compute_type<c10::BFloat16> { using type = float; };
template <typename T> using compute_t = typename compute_type<T>::type;

// Calls f(T{}) for the C++ type of a floating dtype; the ops validated it.
template <typename F>
inline void with_floating(ScalarType t, F&& f) {
  switch (t) {
    case ScalarType::Float: return f(float{});
    case ScalarType::Double: return f(double{});
    case ScalarType::Half: return f(c10::Half{});
    case ScalarType::BFloat16: return f(c10::BFloat16{});
    default: return;
  }
}

// Calls f(T{}) for the C++ type of an integer dtype; the ops validated it.
template <typename F>
inline void with_integral(ScalarType t, F&& f) {
  switch (t) {
    case ScalarType::Byte: return f(uint8_t{});
    case ScalarType::Char: return f(int8_t{});
    case ScalarType::Short: return f(int16_t{});
    case ScalarType::Int: return f(int32_t{});
    case ScalarType::Long: return f(int64_t{});
    default: return;
  }
}

// Lane-generic helpers: V is either the scalar compute type or Vectorized<compute type>.
// exp(x) for x <= 0 or NaN, the only arguments the kernels have (x - max for a softmax, -|x| for
// a sigmoid). The fp32 vector forms below keep at::vec's exp_u20 (its polynomial; on AVX-512 its
// reduction too, on AVX2 n rounded to nearest instead of floor(x log2(e) + 1/2), an ulp apart for
// 13 of the 26M floats in [-87.3, 0], in a numpy emulation) but form 2^n in fewer instructions,
// which x <= 0 allows: exp_u20 clamps x to both ends of the float range and builds 2^(n-1) in
// integer arithmetic, 19 instructions an exponential, five of them a block of the focal kernel at
// 5 classes.
template <typename T> inline T v_exp_nonpositive(T x) { return std::exp(x); }
template <typename T> inline Vectorized<T> v_exp_nonpositive(const Vectorized<T>& x) { return x.exp_u20(); }
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
namespace exp_u20 {
// at::vec's exp_u20: log2(e), ln(2) (one constant: the reduction is not split), the polynomial
// for exp(r), |r| <= ln(2) / 2, and the log of the smallest normal float, below which it gives 0.
constexpr float kLog2e = 1.44269502f, kLn2 = 0.693147182f, kLnFltMin = -87.3365479f;
constexpr float kC5 = 0.00828929059f, kC4 = 0.0418978221f, kC3 = 0.166676521f, kC2 = 0.499991506f,
                kC1 = 0.999999701f;
// exp(r) for r = x - n ln(2), exp_u20's polynomial.
inline Vectorized<float> exp_reduced(const Vectorized<float>& x, const Vectorized<float>& n) {
  using V = Vectorized<float>;
  const V r = at::vec::fmadd(n, V(-kLn2), x);
  V p = at::vec::fmadd(r, V(kC5), V(kC4));
  p = at::vec::fmadd(r, p, V(kC3));
  p = at::vec::fmadd(r, p, V(kC2));
  p = at::vec::fmadd(r, p, V(kC1));
  return at::vec::fmadd(r, p, V(1.f));
}
}  // namespace exp_u20
// 2^n exp(r), n the integer nearest x log2(e). AVX-512: n = floor(x log2(e) + 1/2) as exp_u20,
// and 2^n exp(r) in one scalef, which zeroes the lanes below the smallest normal (as exp_u20; no
// subnormals to slow later products); a NaN argument stays NaN. AVX2: x log2(e) + 1.5 * 2^23 + 127
// rounds to an integer (the float's unit in the last place is 1 there) whose low mantissa bits
// hold n + 127, the biased exponent of 2^n: a subtraction gives n and one shift 2^n (n <= 0 needs
// no 2^(n-1) step), where floor, convert, add and shift took four instructions; the lanes below
// the smallest normal are masked to 0 afterwards.
inline Vectorized<float> v_exp_nonpositive(const Vectorized<float>& x) {
  using V = Vectorized<float>;
#if defined(CPU_CAPABILITY_AVX512)
  const V n = at::vec::fmadd(x, V(exp_u20::kLog2e), V(0.5f)).floor();
  const __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(exp_u20::kLnFltMin), _CMP_NLT_UQ);
  return _mm512_maskz_scalef_ps(normal, exp_u20::exp_reduced(x, n), n);
#else
  constexpr float kRoundBias = 12582912.f + 127.f;  // 1.5 * 2^23 + 127, exact
  const V t = at::vec::fmadd(x, V(exp_u20::kLog2e), V(kRoundBias));
  const V n = t - V(kRoundBias);  // exact
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(exp_u20::kLnFltMin), _CMP_LT_OQ);
  const __m256i two_n = _mm256_slli_epi32(_mm256_castps_si256(t), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(exp_u20::exp_reduced(x, n), _mm256_castsi256_ps(two_n)));
#endif
}
#endif
// a * b + c with one rounding, written as one: left to the compiler, whether a * b + c was fused
// differed between copies of the same template (the focal gradient with int64 and with uint8
// labels came out 1 ulp apart). at::vec's fallback for CPUs without FMA rounds twice.
template <typename T> inline T v_fmadd(T a, T b, T c) { return std::fma(a, b, c); }
template <typename T>
inline Vectorized<T> v_fmadd(const Vectorized<T>& a, const Vectorized<T>& b, const Vectorized<T>& c) {
  return at::vec::fmadd(a, b, c);
}
template <typename T> inline T v_log(T x) { return std::log(x); }
template <typename T> inline T v_log1p(T x) { return std::log1p(x); }
template <typename T> inline Vectorized<T> v_log1p(const Vectorized<T>& x) { return x.log1p(); }
template <typename T> inline T v_abs(T x) { return std::abs(x); }
template <typename T> inline Vectorized<T> v_abs(const Vectorized<T>& x) { return x.abs(); }
template <typename T> inline Vectorized<T> v_log(const Vectorized<T>& x) { return x.log(); }
template <typename T> inline T v_max(T a, T b) { return (a > b || a != a) ? a : b; }
template <typename T> inline Vectorized<T> v_max(const Vectorized<T>& a, const Vectorized<T>& b) {
  return at::vec::maximum(a, b);
}
template <typename T> inline T v_min(T a, T b) { return (a < b || a != a) ? a : b; }
template <typename T> inline Vectorized<T> v_min(const Vectorized<T>& a, const Vectorized<T>& b) {
  return at::vec::minimum(a, b);
}
template <typename T> inline T v_where(bool m, T a, T b) { return m ? a : b; }
template <typename T> inline Vectorized<T> v_where(const Vectorized<T>& m, const Vectorized<T>& a, const Vectorized<T>& b) {
  return Vectorized<T>::blendv(b, a, m);
}
// v_where(m, a, 0), v_where(m, 0, a) and v_where(m, a, acc) for an acc that is 0 in m's lanes
// (one-hot selections: each lane chosen at most once, into a sum started at 0): an and, an
// andnot and an and + or of the all-ones lanes. On Intel's recent cores (Golden Cove) blendv is
// three instructions' work, and the focal kernel made four such selections per class and block.
template <typename T> inline T v_where_or_zero(bool m, T a) { return m ? a : T(0); }
template <typename T> inline T v_zero_where(bool m, T a) { return m ? T(0) : a; }
template <typename T> inline T v_take_where(bool m, T a, T acc) { return m ? a : acc; }
template <typename T> inline Vectorized<T> v_where_or_zero(const Vectorized<T>& m, const Vectorized<T>& a) {
  return m & a;
}
template <typename T> inline Vectorized<T> v_zero_where(const Vectorized<T>& m, const Vectorized<T>& a) {
  return a & ~m;
}
template <typename T>
inline Vectorized<T> v_take_where(const Vectorized<T>& m, const Vectorized<T>& a, const Vectorized<T>& acc) {
  return acc | (m & a);
}
#if defined(CPU_CAPABILITY_AVX2)
inline Vectorized<float> v_zero_where(const Vectorized<float>& m, const Vectorized<float>& a) {
  return _mm256_andnot_ps(m, a);
}
#endif
// Per-lane conditions for v_where: a bool for scalars, a vector of all-ones / zero lanes for
// at::vec types. AVX-512 compares write a mask register, which at::vec's comparison operators
// widen into such a vector (vpmovm2d) and blendv narrows back (vpcmpeqd) before each select (28
// of the 451 instructions of a focal block at 5 classes); for fp32 there the conditions stay masks
// (LaneMask).
template <typename T> inline auto lanes_eq(const T& a, const T& b) { return a == b; }
template <typename T> inline auto lanes_lt(const T& a, const T& b) { return a < b; }
template <typename T> inline auto lanes_ge(const T& a, const T& b) { return a >= b; }
#if defined(CPU_CAPABILITY_AVX512)
struct LaneMask {
  __mmask16 k;
};
inline LaneMask lanes_eq(const Vectorized<float>& a, const Vectorized<float>& b) {
  return {_mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ)};
}
inline LaneMask lanes_lt(const Vectorized<float>& a, const Vectorized<float>& b) {
  return {_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ)};
}
inline LaneMask lanes_ge(const Vectorized<float>& a, const Vectorized<float>& b) {
  return {_mm512_cmp_ps_mask(a, b, _CMP_GE_OQ)};
}
inline Vectorized<float> v_where(LaneMask m, const Vectorized<float>& a, const Vectorized<float>& b) {
  return _mm512_mask_blend_ps(m.k, b, a);
}
inline Vectorized<float> v_where_or_zero(LaneMask m, const Vectorized<float>& a) { return _mm512_maskz_mov_ps(m.k, a); }
inline Vectorized<float> v_zero_where(LaneMask m, const Vectorized<float>& a) {
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~m.k), a);
}
inline Vectorized<float> v_take_where(LaneMask m, const Vectorized<float>& a, const Vectorized<float>& acc) {
  return _mm512_mask_blend_ps(m.k, acc, a);
}
// at::vec::maximum's NaN propagation, its NaN lanes chosen by the mask too (a + b: a NaN there).
inline Vectorized<float> v_max(const Vectorized<float>& a, const Vectorized<float>& b) {
  const __m512 x = a, y = b;
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, y, _CMP_UNORD_Q), _mm512_max_ps(x, y), _mm512_add_ps(x, y));
}
#endif
// The largest logit of a softmax, m, whose exponentials exp(x - m) follow: v_max, which keeps a
// NaN operand, but for fp32 on AVX2 / AVX-512 the plain max instruction (one instruction where
// v_max takes three): a NaN it drops still makes that class's exp(x - m) NaN there, as
// v_exp_nonpositive keeps NaN, and so the softmax's sum.
template <typename V> inline V v_max_before_exp(const V& a, const V& b) { return v_max(a, b); }
#if defined(CPU_CAPABILITY_AVX512)
inline Vectorized<float> v_max_before_exp(const Vectorized<float>& a, const Vectorized<float>& b) {
  return _mm512_max_ps(a, b);
}
#elif defined(CPU_CAPABILITY_AVX2)
inline Vectorized<float> v_max_before_exp(const Vectorized<float>& a, const Vectorized<float>& b) {
  return _mm256_max_ps(a, b);
}
#endif

// torch.argmax over the classes of a block, logits(c) giving class c's lanes (c in [0, classes)):
// the first maximum's class, or where a class is NaN the first NaN's, as class indices in V's
// lanes. argmax_by_rule writes that rule as it reads: a compare, an or and a select through the
// running maximum, ~10 cycles a class on the Intel Xeon (AVX2 and AVX-512), and the blocks' chains
// were what bounded the confusion count at 19 classes. argmax_classes, for fp32 vectors: the
// running maximum is a max instruction (1 in the chain; it drops a NaN operand), the index moves
// where a class beats every earlier one (a compare off the chain), the NaN lanes are tracked in
// one instruction a class, and a block with a NaN anywhere is redone by the rule.
template <typename V, typename Logits>
[[gnu::always_inline]] inline V argmax_by_rule(const Logits& logits, int64_t classes) {
  V best = logits(0), idx(0), c_v(0);
  for (int64_t c = 1; c < classes; ++c) {
    const V v = logits(c);
    c_v = c_v + V(1);
    const auto take = (v > best) | ((v != v) & (best == best));  // strictly greater: the first max
    best = v_where(take, v, best);
    idx = v_where(take, c_v, idx);
  }
  return idx;
}
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// argmax_classes' instructions for fp32 vectors.
namespace argmax_ops {
#if defined(CPU_CAPABILITY_AVX512)
using R = __m512;
inline R set1(float f) { return _mm512_set1_ps(f); }
inline R add(R a, R b) { return _mm512_add_ps(a, b); }
inline R max(R v, R best) { return _mm512_max_ps(v, best); }  // best where v is NaN
// idx, or c where v > best.
inline R take(R idx, R v, R best, R c) { return _mm512_mask_mov_ps(idx, _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ), c); }
// The lanes that have seen no NaN: a masked ordered compare.
using NanTracker = __mmask16;
inline NanTracker nan_start(R v) { return _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q); }
inline NanTracker nan_step(NanTracker t, R v) { return _mm512_mask_cmp_ps_mask(t, v, v, _CMP_ORD_Q); }
inline bool nan_none(NanTracker t) { return t == 0xFFFF; }
#else
using R = __m256;
inline R set1(float f) { return _mm256_set1_ps(f); }
inline R add(R a, R b) { return _mm256_add_ps(a, b); }
inline R max(R v, R best) { return _mm256_max_ps(v, best); }
// c is above every earlier index, so a max takes it (no blendv, three instructions' work on
// Golden Cove).
inline R take(R idx, R v, R best, R c) { return _mm256_max_ps(idx, _mm256_and_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), c)); }
// A lane is 0 (+0.0) until a NaN, then all ones, itself a NaN: unordered from then on.
using NanTracker = __m256;
inline NanTracker nan_start(R v) { return _mm256_cmp_ps(v, v, _CMP_UNORD_Q); }
inline NanTracker nan_step(NanTracker t, R v) { return _mm256_cmp_ps(v, t, _CMP_UNORD_Q); }
inline bool nan_none(NanTracker t) { return _mm256_movemask_ps(t) == 0; }
#endif
}  // namespace argmax_ops
#endif
template <typename V, typename Logits>
[[gnu::always_inline]] inline V argmax_classes(const Logits& logits, int64_t classes) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<V, Vectorized<float>>) {
    namespace ops = argmax_ops;
    const ops::R one = ops::set1(1.f);
    ops::R best = logits(0), idx = ops::set1(0.f), c_v = idx;
    ops::NanTracker nan = ops::nan_start(best);
    for (int64_t c = 1; c < classes; ++c) {
      const ops::R v = logits(c);
      c_v = ops::add(c_v, one);
      idx = ops::take(idx, v, best, c_v);
      best = ops::max(v, best);  // a NaN v leaves best
      nan = ops::nan_step(nan, v);
    }
    if (__builtin_expect(ops::nan_none(nan), 1)) return idx;
  }
#endif
  return argmax_by_rule<V>(logits, classes);
}

template <typename T> inline T v_sum(T v) { return v; }
template <typename T> inline T v_sum(const Vectorized<T>& v) {
  T buf[Vectorized<T>::size()];
  v.store(buf);
  T s = 0;
  for (int i = 0; i < Vectorized<T>::size(); ++i) s += buf[i];
  return s;
}

// The sum of the lanes, in double: the kernels add their per-pixel losses up in double, so a sum
// (or a mean) is finite wherever its value is, even when partial sums in fp32 would overflow.
template <typename T> inline double v_sum_double(T v) { return static_cast<double>(v); }
template <typename T> inline double v_sum_double(const Vectorized<T>& v) {
  T buf[Vectorized<T>::size()];
  v.store(buf);
  double s = 0;
  for (int i = 0; i < Vectorized<T>::size(); ++i) s += static_cast<double>(buf[i]);
  return s;
}

// lanes[i] += v[i] in double for each lane i: one running sum per lane, which the kernels add up
// in lane order at the end of a segment (a result independent of the threads). Two vector
// conversions for fp32 on AVX2 / AVX-512, where GCC left the loop as one scalar conversion and
// add per lane (~1 cycle per pixel of the focal kernel).
template <typename T>
inline void add_lanes_double(const Vectorized<T>& v, double* lanes) {
  T buf[Vectorized<T>::size()];
  v.store(buf);
  for (int i = 0; i < Vectorized<T>::size(); ++i) lanes[i] += static_cast<double>(buf[i]);
}
#if defined(CPU_CAPABILITY_AVX512)
inline void add_lanes_double(const Vectorized<float>& v, double* lanes) {
  const __m512 f = v;
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(f));
  const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)));
  _mm512_storeu_pd(lanes, _mm512_add_pd(_mm512_loadu_pd(lanes), lo));
  _mm512_storeu_pd(lanes + 8, _mm512_add_pd(_mm512_loadu_pd(lanes + 8), hi));
}
#elif defined(CPU_CAPABILITY_AVX2)
inline void add_lanes_double(const Vectorized<float>& v, double* lanes) {
  const __m256 f = v;
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(f));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1));
  _mm256_storeu_pd(lanes, _mm256_add_pd(_mm256_loadu_pd(lanes), lo));
  _mm256_storeu_pd(lanes + 4, _mm256_add_pd(_mm256_loadu_pd(lanes + 4), hi));
}
#endif

// Calls f(n, p0, p1) for the pixels [begin, end) of a flattened (N, P) index, one sample at a
// time, so kernels can run their SIMD loop over contiguous pixels of one sample.
template <typename F>
inline void for_each_segment(int64_t begin, int64_t end, int64_t P, F&& f) {
  for (int64_t i = begin; i < end;) {
    const int64_t n = i / P, p0 = i % P, p1 = std::min(P, p0 + (end - i));
    f(n, p0, p1);
    i += p1 - p0;
  }
}

template <typename V> struct Lanes { static constexpr int n = V::size(); };
template <> struct Lanes<float> { static constexpr int n = 1; };
template <> struct Lanes<double> { static constexpr int n = 1; };

// Loads n lanes of `in_t` as V (converting from fp16/bf16 through a small buffer).
template <typename V, typename acc_t, typename in_t>
inline V load_as(const in_t* p) {
  if constexpr (Lanes<V>::n == 1) {
    return static_cast<acc_t>(*p);
  } else if constexpr (std::is_same_v<in_t, acc_t>) {
    return V::loadu(p);
  } else {
    acc_t buf[Lanes<V>::n];
    for (int i = 0; i < Lanes<V>::n; ++i) buf[i] = static_cast<acc_t>(p[i]);
    return V::loadu(buf);
  }
}

// f(std::integral_constant<int, C>) for C in [1, Max]; false (f not called) for a larger C.
template <int Max, typename F, int... Cs>
inline bool with_class_count(int64_t C, F&& f, std::integer_sequence<int, Cs...>) {
  return ((C == Cs + 1 ? (f(std::integral_constant<int, Cs + 1>{}), true) : false) || ...);
}
template <int Max, typename F>
inline bool with_class_count(int64_t C, F&& f) {
  return with_class_count<Max>(C, std::forward<F>(f), std::make_integer_sequence<int, Max>{});
}

// Class-last logits (N, P, C): the C values of each of L pixels are one contiguous run of L * C.
// gather_tile transposes them into a [C][L] tile of the compute type, scatter_tile the gradient
// back. fp32 blocks of up to 32 classes (the SIMD main loop) take a copy specialised for their C,
// through a table, with the way that measured fastest here (Zen 4; benchmarks/class_last_transposes.cpp,
// numbers in benchmarks/README.md): AVX-512 permutes pairs of registers up to 8 classes
// (transpose16.h) and transposes 16x16 squares from 9 to 32 (transpose_rows.h); AVX2 transposes
// 8x8 squares up to 32 (scatters of 2 classes: scalar moves; from 17 to 32 classes the scalar loops
// took 9.9 ns a pixel to gather and scatter, the squares 3.7-4.3, on an Intel Xeon). A run-time C
// costs 2-4x more (nothing unrolls).
namespace class_last {

constexpr int kMaxFixedClasses = 32;

template <int C, int L>
inline void gather(const float* __restrict__ src, float* __restrict__ tile) {
#ifdef CPU_CAPABILITY_AVX512
  if constexpr (L == 16 && C >= 2 && C <= 8) {
    transpose16::gather<C>(src, tile);
    return;
  }
#endif
#ifdef MARSOPS_TRANSPOSE_ROWS
  if constexpr (L == transpose_rows::L && C >= 2 && C <= transpose_rows::kMaxClasses) {
    transpose_rows::gather<C>(src, tile);
    return;
  }
#endif
  for (int c = 0; c < C; ++c)
    for (int i = 0; i < L; ++i) tile[c * L + i] = src[i * C + c];
}

template <int C, int L>
inline void scatter(const float* __restrict__ tile, float* __restrict__ dst) {
#ifdef CPU_CAPABILITY_AVX512
  if constexpr (L == 16 && C >= 2 && C <= 8) {
    transpose16::scatter<C>(tile, dst);
    return;
  }
#endif
#ifdef MARSOPS_TRANSPOSE_ROWS
  if constexpr (L == transpose_rows::L && C >= 3 && C <= transpose_rows::kMaxClasses) {
    transpose_rows::scatter<C>(tile, dst);
    return;
  }
#endif
  for (int i = 0; i < L; ++i)
    for (int c = 0; c < C; ++c) dst[i * C + c] = tile[c * L + i];
}

// Class-last blocks prefetch their lines this far ahead. One stream of C lines per block left the
// hardware prefetcher a few blocks ahead only (NCHW's C + 1 streams run ahead C times as far): the
// class-last confusion count at 5 classes ran at 0.69x of NCHW, and 0.92-1.02x with this (benchmarks/README.md).
constexpr int64_t kPrefetchDistance = 4096;

// WRITE: the block is about to be written (the focal gradient): the write hint, prefetchw where
// the target has PRFCHW, else prefetcht0 as for reads. (Integer arithmetic: the address may lie
// past the tensor's end, where a prefetch does nothing.)
template <bool WRITE = false>
[[gnu::always_inline]] inline void prefetch(const void* block, int64_t bytes) {
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(block) + kPrefetchDistance;
  for (int64_t j = 0; j < bytes; j += 64) __builtin_prefetch(reinterpret_cast<const void*>(ahead + j), WRITE, 3);
}

// Whether a class-last fp32 block of C classes can be read into registers (rows) instead of a
// tile: AVX-512 up to 8 classes (transpose16.h's permutes), AVX2 up to 8, one 8x8 transpose
// (measured: benchmarks/README.md; on Zen 4 the tile's 64-byte stores and immediate reloads
// cost the AVX-512 count 10-15%, seventh pass).
template <int C, int L>
constexpr bool rows_in_registers() {
#if defined(CPU_CAPABILITY_AVX512)
  return L == 16 && C >= 2 && C <= 8;
#elif defined(MARSOPS_TRANSPOSE_ROWS) && defined(CPU_CAPABILITY_AVX2)
  return L == transpose_rows::L && C >= 2 && C <= L;
#else
  return false;
#endif
}

// The C class rows of a block, as vectors (where rows_in_registers).
template <int C, typename V>
[[gnu::always_inline]] inline void rows(const float* __restrict__ src, V* out) {
  static_assert(rows_in_registers<C, Lanes<V>::n>(), "no register rows for this capability / class count");
#if defined(CPU_CAPABILITY_AVX512)
  __m512 r[C];
  if constexpr (transpose_rows::odd::applies<C>) {
    transpose_rows::odd::class_rows<C>(src, r);
  } else {
    transpose16::rows<C>(src, r);
  }
  for (int c = 0; c < C; ++c) out[c] = V(r[c]);
#elif defined(MARSOPS_TRANSPOSE_ROWS)
  transpose_rows::R r[transpose_rows::L];
  if constexpr (transpose_rows::odd::applies<C>) {
    transpose_rows::odd::class_rows<C>(src, r);
  } else {
    transpose_rows::class_rows<C>(src, 0, r);
  }
  for (int c = 0; c < C; ++c) out[c] = V(r[c]);
#endif
}

// Class rows (registers) back to a class-last block (where rows_in_registers).
template <int C, typename V>
[[gnu::always_inline]] inline void scatter_rows(const V* rows, float* __restrict__ dst) {
  static_assert(rows_in_registers<C, Lanes<V>::n>(), "no register rows for this capability / class count");
#if defined(CPU_CAPABILITY_AVX512)
  __m512 r[C];
  for (int c = 0; c < C; ++c) r[c] = rows[c];
  if constexpr (transpose_rows::odd::applies<C>) {
    transpose_rows::odd::scatter_rows<C>(r, dst);
  } else {
    transpose16::scatter_rows<C>(r, dst);
  }
#elif defined(MARSOPS_TRANSPOSE_ROWS)
  // Two classes: scalar moves (scatter above; faster from a tile, not measured from registers).
  if constexpr (C < 3) {
    alignas(64) float tile[C * transpose_rows::L];
    for (int c = 0; c < C; ++c) rows[c].store(tile + c * transpose_rows::L);
    scatter<C, transpose_rows::L>(tile, dst);
  } else {
    transpose_rows::R r[C];
    for (int c = 0; c < C; ++c) r[c] = rows[c];
    if constexpr (transpose_rows::odd::applies<C>) {
      transpose_rows::odd::scatter_rows<C>(r, dst);
    } else {
      transpose_rows::scatter_rows<C>(r, dst);
    }
  }
#endif
}

template <int L, int... Cs>
inline void gather(const float* src, int64_t C, float* tile, std::integer_sequence<int, Cs...>) {
  using Fn = void (*)(const float*, float*);
  static constexpr Fn table[] = {&gather<Cs + 1, L>...};
  table[C - 1](src, tile);
}

template <int L, int... Cs>
inline void scatter(const float* tile, int64_t C, float* dst, std::integer_sequence<int, Cs...>) {
  using Fn = void (*)(const float*, float*);
  static constexpr Fn table[] = {&scatter<Cs + 1, L>...};
  table[C - 1](tile, dst);
}

}  // namespace class_last

template <int L, typename acc_t, typename in_t>
inline void gather_tile(const in_t* __restrict__ src, int64_t C, acc_t* __restrict__ tile) {
  if constexpr (L == Vectorized<float>::size() && std::is_same_v<acc_t, float> && std::is_same_v<in_t, float>) {
    if (C <= class_last::kMaxFixedClasses) {
      class_last::gather<L>(src, C, tile, std::make_integer_sequence<int, class_last::kMaxFixedClasses>{});
      return;
    }
  }
#ifdef CPU_CAPABILITY_AVX512
  // fp16 / bf16 logits up to 16 classes: in-register permutes (transpose16.h), 3-4x fewer cycles.
  if constexpr (L == 16 && std::is_same_v<acc_t, float> &&
                (std::is_same_v<in_t, c10::Half> || std::is_same_v<in_t, c10::BFloat16>)) {
    if (transpose16::with_classes(C, [&](auto k) { transpose16::gather<decltype(k)::value>(src, tile); })) return;
  }
#endif
  for (int64_t c = 0; c < C; ++c)
    for (int i = 0; i < L; ++i) tile[c * L + i] = static_cast<acc_t>(src[i * C + c]);
}

template <int L, typename acc_t, typename out_t>
inline void scatter_tile(const acc_t* __restrict__ tile, int64_t C, out_t* __restrict__ dst) {
  if constexpr (L == Vectorized<float>::size() && std::is_same_v<acc_t, float> && std::is_same_v<out_t, float>) {
    if (C <= class_last::kMaxFixedClasses) {
      class_last::scatter<L>(tile, C, dst, std::make_integer_sequence<int, class_last::kMaxFixedClasses>{});
      return;
    }
  }
  for (int i = 0; i < L; ++i)  // contiguous writes; the tile's strided reads stay in L1
    for (int64_t c = 0; c < C; ++c) dst[i * C + c] = static_cast<out_t>(tile[c * L + i]);
}

template <typename V, typename acc_t, typename out_t>
inline void store_as(const V& v, out_t* p) {
  if constexpr (Lanes<V>::n == 1) {
    *p = static_cast<out_t>(v);
  } else if constexpr (std::is_same_v<out_t, acc_t>) {
    v.store(p);
  } else {
    acc_t buf[Lanes<V>::n];
    v.store(buf);
    for (int i = 0; i < Lanes<V>::n; ++i) p[i] = static_cast<out_t>(buf[i]);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace marsops::cpu
