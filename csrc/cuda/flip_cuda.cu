// CUDA implementations of the flip ops: one thread per element (grid-stride), each input element
// read once; reversed rows still fall in the same memory segments, so accesses stay coalesced.
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
                                 acc_t<T> scale) {
  using acc = acc_t<T>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t w = i % W, h = (i / W) % H, plane = i - h * W - w;
    const int64_t lr = plane + h * W + (W - 1 - w), ud = plane + (H - 1 - h) * W + w;
    const int64_t both = plane + (H - 1 - h) * W + (W - 1 - w);
    const acc s = static_cast<acc>(y[i]) + static_cast<acc>(y[total + lr]) + static_cast<acc>(y[2 * total + ud]) +
                  static_cast<acc>(y[3 * total + both]);
    out[i] = static_cast<T>(s * scale);
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

Tensor flip4_cuda(const Tensor& x_in) {
  const auto s = flip_shapes(x_in, "flip4");
  check_flip_dtype(x_in, "flip4");
  const st::accelerator::DeviceGuard guard(x_in.get_device_index());
  const Tensor x = st::contiguous(x_in);
  Tensor out = empty_on(x, flip4_shape(x), x.scalar_type());
  const int64_t total = x.numel();
  if (total == 0) return out;
  dispatch_bytes(x, "marsops.flip4", [&](auto tag) {
    using T = decltype(tag);
    flip4_kernel<T><<<grid_size(x, total), kThreads, 0, current_stream(x)>>>(
        static_cast<const T*>(x.const_data_ptr()), static_cast<T*>(out.mutable_data_ptr()), total, s.H, s.W);
    STD_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

Tensor flip4_sum_cuda(const Tensor& y_in, double scale) {
  const auto out_shape = flip4_sum_shape(y_in);
  const st::accelerator::DeviceGuard guard(y_in.get_device_index());
  Tensor out = empty_on(y_in, out_shape, y_in.scalar_type());
  const auto s = flip_shapes(out, "flip4_merge");
  const Tensor y = st::contiguous(y_in);
  const int64_t total = out.numel();
  if (total == 0) return out;
  dispatch_floating(y.scalar_type(), "marsops.flip4_merge", [&](auto tag) {
    using T = decltype(tag);
    flip4_sum_kernel<T><<<grid_size(y, total), kThreads, 0, current_stream(y)>>>(
        static_cast<const T*>(y.const_data_ptr()), static_cast<T*>(out.mutable_data_ptr()), total, s.H, s.W,
        static_cast<acc_t<T>>(scale));
    STD_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

Tensor flip_by_flags_cuda(const Tensor& x_in, const Tensor& flags) {
  const auto s = flip_shapes(x_in, "random_flip");
  check_flip_dtype(x_in, "random_flip");
  check_flags(x_in, flags);
  const st::accelerator::DeviceGuard guard(x_in.get_device_index());
  const Tensor x = st::contiguous(x_in), f = st::contiguous(flags);
  Tensor out = empty_on(x, sizes_of(x), x.scalar_type());
  const int64_t total = x.numel();
  if (total == 0) return out;
  dispatch_bytes(x, "marsops.random_flip", [&](auto tag) {
    using T = decltype(tag);
    flip_by_flags_kernel<T><<<grid_size(x, total), kThreads, 0, current_stream(x)>>>(
        static_cast<const T*>(x.const_data_ptr()), f.const_data_ptr<uint8_t>(), static_cast<T*>(out.mutable_data_ptr()),
        total, s.M * s.H * s.W, s.H, s.W);
    STD_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(marsops, CUDA, m) {
  m.impl("flip4", TORCH_BOX(&flip4_cuda));
  m.impl("flip4_sum", TORCH_BOX(&flip4_sum_cuda));
  m.impl("flip_by_flags", TORCH_BOX(&flip_by_flags_cuda));
}

}  // namespace marsops::cuda
