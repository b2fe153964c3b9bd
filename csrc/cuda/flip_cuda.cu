// CUDA implementations of the flip ops (views: csrc/views.h): one thread per output element
// (grid-stride), writes coalesced; a flipped row is read from the same memory segments, so its
// reads stay coalesced too (a transposing view reads a column).
#include "../flip_common.h"
#include "cuda_utils.cuh"

namespace marsops::cuda {
namespace {

// Flat index of (volume start, d, h, w) in a (planes, D, H, W) layout.
struct Layout {
  int64_t D, H, W;
  __device__ __forceinline__ void split(int64_t i, int64_t& first, int64_t& d, int64_t& h, int64_t& w) const {
    w = i % W;
    h = (i / W) % H;
    d = (i / (W * H)) % D;
    first = i - (d * H + h) * W - w;
  }
  __device__ __forceinline__ int64_t at(int64_t first, int64_t d, int64_t h, int64_t w) const {
    return first + (d * H + h) * W + w;
  }
};

template <typename T>
__global__ void flip_views_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t total, Layout g,
                                  ViewList views) {
  const int64_t all = total * views.count;
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < all; j += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = j / total, i = j - k * total;
    int64_t first, d, h, w;
    g.split(i, first, d, h, w);
    view_source(views.code[k], g.D, g.H, g.W, d, h, w);
    out[j] = x[g.at(first, d, h, w)];
  }
}

template <typename T>
__global__ void flip_views_sum_kernel(const T* __restrict__ y, T* __restrict__ out, int64_t total, Layout g,
                                      ViewList views, acc_t<T> scale) {
  using acc = acc_t<T>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t first, d0, h0, w0;
    g.split(i, first, d0, h0, w0);
    acc s = 0;
    for (int k = 0; k < views.count; ++k) {  // in view order: the merge's rounding is fixed
      int64_t d = d0, h = h0, w = w0;
      view_target(views.code[k], g.D, g.H, g.W, d, h, w);
      s += static_cast<acc>(y[k * total + g.at(first, d, h, w)]);
    }
    out[i] = static_cast<T>(s * scale);
  }
}

template <typename T>
__global__ void flip_by_flags_kernel(const T* __restrict__ x, const uint8_t* __restrict__ flags, T* __restrict__ out,
                                     int64_t total, int64_t per_sample, Layout g, int allowed) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t first, d, h, w;
    g.split(i, first, d, h, w);
    view_source(flags[i / per_sample] & allowed, g.D, g.H, g.W, d, h, w);
    out[i] = x[g.at(first, d, h, w)];
  }
}

Tensor flip_views_cuda(const Tensor& x_in, std::vector<int64_t> views, bool volume) {
  const auto s = flip_shapes(x_in, volume, "flip4");
  check_flip_dtype(x_in, "flip4");
  const ViewList list = view_list(views, s, volume, "flip4");
  const st::accelerator::DeviceGuard guard(x_in.get_device_index());
  const Tensor x = st::contiguous(x_in);
  Tensor out = empty_on(x, flip_views_shape(x, list.count), x.scalar_type());
  const int64_t total = x.numel();
  if (total == 0) return out;
  dispatch_bytes(x, "marsops.flip4", [&](auto tag) {
    using T = decltype(tag);
    flip_views_kernel<T><<<grid_size(x, total * list.count), kThreads, 0, current_stream(x)>>>(
        static_cast<const T*>(x.const_data_ptr()), static_cast<T*>(out.mutable_data_ptr()), total,
        Layout{s.D, s.H, s.W}, list);
    STD_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

Tensor flip_views_sum_cuda(const Tensor& y_in, std::vector<int64_t> views, bool volume, double scale) {
  const int64_t K = static_cast<int64_t>(views.size());
  MARSOPS_CHECK(K >= 1, "marsops.flip4_merge: no views");
  const auto out_shape = flip_views_sum_shape(y_in, K);
  const st::accelerator::DeviceGuard guard(y_in.get_device_index());
  Tensor out = empty_on(y_in, out_shape, y_in.scalar_type());
  const auto s = flip_shapes(out, volume, "flip4_merge");
  const ViewList list = view_list(views, s, volume, "flip4_merge");
  const Tensor y = st::contiguous(y_in);
  const int64_t total = out.numel();
  if (total == 0) return out;
  dispatch_floating(y.scalar_type(), "marsops.flip4_merge", [&](auto tag) {
    using T = decltype(tag);
    flip_views_sum_kernel<T><<<grid_size(y, total), kThreads, 0, current_stream(y)>>>(
        static_cast<const T*>(y.const_data_ptr()), static_cast<T*>(out.mutable_data_ptr()), total,
        Layout{s.D, s.H, s.W}, list, static_cast<acc_t<T>>(scale));
    STD_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

Tensor flip_by_flags_cuda(const Tensor& x_in, const Tensor& flags, bool volume) {
  const auto s = flip_shapes(x_in, volume, "random_flip");
  check_flip_dtype(x_in, "random_flip");
  check_flags(x_in, flags);
  const st::accelerator::DeviceGuard guard(x_in.get_device_index());
  const Tensor x = st::contiguous(x_in), f = st::contiguous(flags);
  Tensor out = empty_on(x, sizes_of(x), x.scalar_type());
  const int64_t total = x.numel();
  if (total == 0) return out;
  const int allowed = kReverseW | kReverseH | (volume ? kReverseD : 0) | (s.H == s.W ? kTranspose : 0);
  dispatch_bytes(x, "marsops.random_flip", [&](auto tag) {
    using T = decltype(tag);
    flip_by_flags_kernel<T><<<grid_size(x, total), kThreads, 0, current_stream(x)>>>(
        static_cast<const T*>(x.const_data_ptr()), f.const_data_ptr<uint8_t>(), static_cast<T*>(out.mutable_data_ptr()),
        total, s.M * s.plane(), Layout{s.D, s.H, s.W}, allowed);
    STD_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(marsops, CUDA, m) {
  m.impl("flip_views", TORCH_BOX(&flip_views_cuda));
  m.impl("flip_views_sum", TORCH_BOX(&flip_views_sum_cuda));
  m.impl("flip_by_flags", TORCH_BOX(&flip_by_flags_cuda));
}

}  // namespace marsops::cuda
