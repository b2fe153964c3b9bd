// CUDA implementations of the flip ops: one thread per element (grid-stride), each input element
// read once; reversed rows still fall in the same memory segments, so accesses stay coalesced.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../flip_common.h"
#include "cuda_utils.cuh"

namespace marsops::cuda {
namespace {

template <typename T>
__global__ void flip4_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t total, int64_t H, int64_t W) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t w = i % W, h = (i / W) % H, plane = i - h * W - w;
    const T v = x[i];
    const int64_t lr = plane + h * W + (W - 1 - w), ud = plane + (H - 1 - h) * W + w;
    const int64_t both = plane + (H - 1 - h) * W + (W - 1 - w);
    out[i] = v;
    out[total + lr] = v;
    out[2 * total + ud] = v;
    out[3 * total + both] = v;
  }
}

template <typename T>
__global__ void flip4_sum_kernel(const T* __restrict__ y, T* __restrict__ out, int64_t total, int64_t H, int64_t W,
                                 float scale) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t w = i % W, h = (i / W) % H, plane = i - h * W - w;
    const int64_t lr = plane + h * W + (W - 1 - w), ud = plane + (H - 1 - h) * W + w;
    const int64_t both = plane + (H - 1 - h) * W + (W - 1 - w);
    const acc_t s = static_cast<acc_t>(y[i]) + static_cast<acc_t>(y[total + lr]) +
                    static_cast<acc_t>(y[2 * total + ud]) + static_cast<acc_t>(y[3 * total + both]);
    out[i] = static_cast<T>(s * static_cast<acc_t>(scale));
  }
}

template <typename T>
__global__ void flip_by_flags_kernel(const T* __restrict__ x, const uint8_t* __restrict__ flags, T* __restrict__ out,
                                     int64_t total, int64_t per_sample, int64_t H, int64_t W) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const uint8_t f = flags[i / per_sample];
    const int64_t w = i % W, h = (i / W) % H, plane = i - h * W - w;
    out[i] = x[plane + ((f & 2) ? H - 1 - h : h) * W + ((f & 1) ? W - 1 - w : w)];
  }
}

at::Tensor flip4_cuda(const at::Tensor& x_in) {
  const auto s = flip_shapes(x_in, "flip4");
  const at::Tensor x = x_in.contiguous();
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(flip4_shape(x), x.options());
  const int64_t total = x.numel();
  if (total == 0) return out;
  by_element_size(x, [&](auto tag) {
    using T = decltype(tag);
    flip4_kernel<T><<<grid_size(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        static_cast<const T*>(x.const_data_ptr()), static_cast<T*>(out.mutable_data_ptr()), total, s.H, s.W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor flip4_sum_cuda(const at::Tensor& y_in, double scale) {
  at::Tensor out = at::empty(flip4_sum_shape(y_in), y_in.options());
  const auto s = flip_shapes(out, "flip4_merge");
  const at::Tensor y = y_in.contiguous();
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "marsops_flip4_sum_cuda", [&] {
    flip4_sum_kernel<scalar_t><<<grid_size(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        y.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), total, s.H, s.W, static_cast<float>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor flip_by_flags_cuda(const at::Tensor& x_in, const at::Tensor& flags) {
  const auto s = flip_shapes(x_in, "random_flip");
  check_flags(x_in, flags);
  const at::Tensor x = x_in.contiguous(), f = flags.contiguous();
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int64_t total = x.numel();
  if (total == 0) return out;
  by_element_size(x, [&](auto tag) {
    using T = decltype(tag);
    flip_by_flags_kernel<T><<<grid_size(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        static_cast<const T*>(x.const_data_ptr()), f.const_data_ptr<uint8_t>(), static_cast<T*>(out.mutable_data_ptr()),
        total, s.M * s.H * s.W, s.H, s.W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(marsops, CUDA, m) {
  m.impl("flip4", &flip4_cuda);
  m.impl("flip4_sum", &flip4_sum_cuda);
  m.impl("flip_by_flags", &flip_by_flags_cuda);
}

}  // namespace marsops::cuda
