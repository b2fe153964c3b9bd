// The dtype of the gradient the fused losses write in their forward pass and hand to backward.
// fp16 logits get an fp32 gradient: the per-pixel gradient of a mean over many pixels (1/N of the
// loss' sensitivity) sits below fp16's normal range (6e-5) from about 10^4 pixels on, where
// rounding would keep one or two significant bits or flush it to 0, before the upstream
// gradient (a loss scale of 2^12 .. 2^16 under mixed precision) could lift it. bf16 has fp32's
// exponent range and keeps its dtype. Autograd casts the result to the logits' dtype once.
#pragma once
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Half.h>

#include <type_traits>

namespace marsops {

template <typename T>
using saved_grad_t = std::conditional_t<std::is_same_v<T, torch::headeronly::Half>, float, T>;

inline torch::headeronly::ScalarType saved_grad_dtype(torch::headeronly::ScalarType t) {
  return t == torch::headeronly::ScalarType::Half ? torch::headeronly::ScalarType::Float : t;
}

}  // namespace marsops
