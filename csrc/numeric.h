// The type arithmetic is done in: fp16 / bf16 are computed in fp32. Torch-free (header-only
// Half / BFloat16), so the CUDA kernel headers can use it under the host-compiler emulation too.
#pragma once
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

namespace marsops {

template <typename T> struct acc { using type = T; };
template <> struct acc<torch::headeronly::Half> { using type = float; };
template <> struct acc<torch::headeronly::BFloat16> { using type = float; };
template <typename T> using acc_t = typename acc<T>::type;

}  // namespace marsops
