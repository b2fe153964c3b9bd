// Lane-generic SIMD helpers shared by the CPU kernels. Included once per CPU capability (the
// simd_{default,avx2,avx512}.cpp files define CPU_CAPABILITY first), so at::vec types are that
// capability's. V is either a scalar type or at::vec::Vectorized of it, so one kernel body
// serves the SIMD main loop and the scalar tail.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

namespace marsops::cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// Lane-generic helpers: V is either the scalar compute type or Vectorized<compute type>.
template <typename T> inline T v_exp(T x) { return std::exp(x); }
template <typename T> inline Vectorized<T> v_exp(const Vectorized<T>& x) { return x.exp_u20(); }
template <typename T> inline T v_log(T x) { return std::log(x); }
template <typename T> inline Vectorized<T> v_log(const Vectorized<T>& x) { return x.log(); }
template <typename T> inline T v_max(T a, T b) { return (a > b || a != a) ? a : b; }
template <typename T> inline Vectorized<T> v_max(const Vectorized<T>& a, const Vectorized<T>& b) {
  return at::vec::maximum(a, b);
}
template <typename T> inline T v_where(bool m, T a, T b) { return m ? a : b; }
template <typename T> inline Vectorized<T> v_where(const Vectorized<T>& m, const Vectorized<T>& a, const Vectorized<T>& b) {
  return Vectorized<T>::blendv(b, a, m);
}
template <typename T> inline T v_sum(T v) { return v; }
template <typename T> inline T v_sum(const Vectorized<T>& v) {
  T buf[Vectorized<T>::size()];
  v.store(buf);
  T s = 0;
  for (int i = 0; i < Vectorized<T>::size(); ++i) s += buf[i];
  return s;
}

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
