// The first include of every host translation unit (the op schemas, the CPU and CUDA ops).
//
// These files see only the LibTorch stable ABI (torch/csrc/stable, torch/headeronly), built for
// torch 2.10: one build of marsops loads on every torch >= 2.10. The SIMD kernel bodies
// (csrc/cpu/simd_*.cpp) are the exception: they use ATen's header-only vector types and see only
// raw pointers (csrc/cpu/kernels.h), so they cannot include this file and need no libtorch symbol.
#pragma once
#ifndef TORCH_TARGET_VERSION
#define TORCH_TARGET_VERSION 0x020a000000000000ULL  // [major 2][minor 10][patch 0][ABI tag]: torch 2.10
#endif

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "numeric.h"  // acc_t

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace marsops {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;
namespace st = torch::stable;

// Throws a RuntimeError whose message is exactly the concatenated parts (STD_TORCH_CHECK would
// prefix the function, file and line).
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw std::runtime_error(message.str());
}

#define MARSOPS_CHECK(cond, ...)              \
  do {                                        \
    if (!(cond)) ::marsops::fail(__VA_ARGS__); \
  } while (0)

// "(2, 5, 64, 128)" for messages.
inline std::string shape_str(const Tensor& t) {
  std::ostringstream s;
  s << "(";
  for (int64_t d = 0; d < t.dim(); ++d) s << (d ? ", " : "") << t.size(d);
  s << (t.dim() == 1 ? ",)" : ")");
  return s.str();
}

inline std::string device_str(const Tensor& t) {
  return t.is_cuda() ? "cuda:" + std::to_string(t.get_device_index()) : (t.is_cpu() ? "cpu" : "another device");
}

inline bool same_device(const Tensor& a, const Tensor& b) {
  return a.is_cuda() == b.is_cuda() && (!a.is_cuda() || a.get_device_index() == b.get_device_index());
}

inline bool is_floating(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half || t == ScalarType::BFloat16;
}

inline bool is_integral(ScalarType t) {
  return t == ScalarType::Byte || t == ScalarType::Char || t == ScalarType::Short || t == ScalarType::Int ||
         t == ScalarType::Long;
}

inline std::string dtype_str(ScalarType t) { return torch::headeronly::toString(t); }

// Calls f(T{}) with T the C++ type of a floating dtype (fp32, fp64, fp16, bf16).
template <typename F>
void dispatch_floating(ScalarType t, const char* what, F&& f) {
  switch (t) {
    case ScalarType::Float: return f(float{});
    case ScalarType::Double: return f(double{});
    case ScalarType::Half: return f(torch::headeronly::Half{});
    case ScalarType::BFloat16: return f(torch::headeronly::BFloat16{});
    default: fail(what, ": expected a floating dtype (float32, float64, float16, bfloat16), got ", dtype_str(t));
  }
}

// Calls f(T{}) with T the C++ type of an integer dtype (uint8, int8, int16, int32, int64).
template <typename F>
void dispatch_integral(ScalarType t, const char* what, F&& f) {
  switch (t) {
    case ScalarType::Byte: return f(uint8_t{});
    case ScalarType::Char: return f(int8_t{});
    case ScalarType::Short: return f(int16_t{});
    case ScalarType::Int: return f(int32_t{});
    case ScalarType::Long: return f(int64_t{});
    default: fail(what, ": expected an integer dtype (uint8, int8, int16, int32, int64), got ", dtype_str(t));
  }
}

// Flips only move bytes: calls f(U{}) with U an unsigned integer of the element size.
template <typename F>
void dispatch_bytes(const Tensor& x, const char* what, F&& f) {
  switch (x.element_size()) {
    case 1: return f(uint8_t{});
    case 2: return f(uint16_t{});
    case 4: return f(uint32_t{});
    case 8: return f(uint64_t{});
    default: fail(what, ": unsupported element size ", x.element_size(), " (", dtype_str(x.scalar_type()), ")");
  }
}

// An uninitialised contiguous tensor on `like`'s device.
inline Tensor empty_on(const Tensor& like, const std::vector<int64_t>& sizes, ScalarType dtype) {
  return st::empty(sizes, dtype, std::nullopt, like.device());
}

// Whether logits (N, C, *spatial) lie in memory as the contiguous (N, *spatial, C): channels_last
// (NHWC, NDHWC) and its relatives; the ops read them in place. Size-1 dimensions are ignored, as
// torch's own contiguity checks do.
inline bool is_class_last(const Tensor& t) {
  if (t.dim() < 3 || t.is_contiguous()) return false;
  std::vector<int64_t> inner_to_outer = {1};
  for (int64_t d = t.dim() - 1; d >= 2; --d) inner_to_outer.push_back(d);
  inner_to_outer.push_back(0);
  int64_t expected = 1;
  for (int64_t d : inner_to_outer) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

// (N, C, *spatial) viewed as (N, *spatial, C), which class-last logits are contiguously, and the
// inverse. Adjacent transposes (views), not st::permute: that needs torch >= 2.14 headers, and the
// sources must build against the headers of any torch >= 2.10.
inline Tensor classes_last(Tensor t) {
  for (int64_t d = 1; d + 1 < t.dim(); ++d) t = st::transpose(t, d, d + 1);
  return t;
}

inline Tensor classes_second(Tensor t) {
  for (int64_t d = t.dim() - 1; d > 1; --d) t = st::transpose(t, d - 1, d);
  return t;
}

inline std::vector<int64_t> sizes_of(const Tensor& t) {
  std::vector<int64_t> s(t.dim());
  for (int64_t d = 0; d < t.dim(); ++d) s[d] = t.size(d);
  return s;
}

}  // namespace marsops
