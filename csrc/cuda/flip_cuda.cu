// CUDA implementations of the flip ops, host side (the kernels: flip_kernels.cuh).
#include "../flip_common.h"
#include "cuda_utils.cuh"
#include "flip_kernels.cuh"

namespace marsops::cuda {
namespace {

Tensor flip_views_cuda(const Tensor& x_in, std::vector<int64_t> views, bool volume) {
  const auto s = flip_shapes(x_in, volume, "flip4");
  check_flip_dtype(x_in, "flip4");
  const ViewList list = view_list(views, s, volume, "flip4");
  const DeviceGuard guard(x_in.get_device_index());
  const Tensor x = st::contiguous(x_in);
  Tensor out = empty_on(x, flip_views_shape(x, list.count), x.scalar_type());
  const int64_t total = x.numel();
  if (total == 0) return out;
  dispatch_bytes(x, "marsops.flip4", [&](auto tag) {
    using T = decltype(tag);
    launch(flip_views_kernel<T>, grid_stride_on(x, total * list.count), current_stream(x),
           static_cast<const T*>(x.const_data_ptr()), static_cast<T*>(out.mutable_data_ptr()), total,
           FlipLayout{s.D, s.H, s.W}, list);
  });
  return out;
}

Tensor flip_views_sum_cuda(const Tensor& y_in, std::vector<int64_t> views, bool volume, double scale) {
  const int64_t K = static_cast<int64_t>(views.size());
  MARSOPS_CHECK(K >= 1, "marsops.flip4_merge: no views");
  const auto out_shape = flip_views_sum_shape(y_in, K);
  const DeviceGuard guard(y_in.get_device_index());
  Tensor out = empty_on(y_in, out_shape, y_in.scalar_type());
  const auto s = flip_shapes(out, volume, "flip4_merge");
  const ViewList list = view_list(views, s, volume, "flip4_merge");
  const Tensor y = st::contiguous(y_in);
  const int64_t total = out.numel();
  if (total == 0) return out;
  dispatch_floating(y.scalar_type(), "marsops.flip4_merge", [&](auto tag) {
    using T = decltype(tag);
    launch(flip_views_sum_kernel<T>, grid_stride_on(y, total), current_stream(y),
           static_cast<const T*>(y.const_data_ptr()), static_cast<T*>(out.mutable_data_ptr()), total,
           FlipLayout{s.D, s.H, s.W}, list, static_cast<acc_t<T>>(scale));
  });
  return out;
}

Tensor flip_by_flags_cuda(const Tensor& x_in, const Tensor& flags, bool volume) {
  const auto s = flip_shapes(x_in, volume, "random_flip");
  check_flip_dtype(x_in, "random_flip");
  check_flags(x_in, flags);
  const DeviceGuard guard(x_in.get_device_index());
  const Tensor x = st::contiguous(x_in), f = st::contiguous(flags);
  Tensor out = empty_on(x, sizes_of(x), x.scalar_type());
  const int64_t total = x.numel();
  if (total == 0) return out;
  const int allowed = kReverseW | kReverseH | (volume ? kReverseD : 0) | (s.H == s.W ? kTranspose : 0);
  dispatch_bytes(x, "marsops.random_flip", [&](auto tag) {
    using T = decltype(tag);
    launch(flip_by_flags_kernel<T>, grid_stride_on(x, total), current_stream(x),
           static_cast<const T*>(x.const_data_ptr()), f.const_data_ptr<uint8_t>(),
           static_cast<T*>(out.mutable_data_ptr()), total, s.M * s.plane(), FlipLayout{s.D, s.H, s.W}, allowed);
  });
  return out;
}

}  // namespace

MARSOPS_CUDA_OPS_IMPL(m) {
  m.impl("flip_views", TORCH_BOX(&flip_views_cuda));
  m.impl("flip_views_sum", TORCH_BOX(&flip_views_sum_cuda));
  m.impl("flip_by_flags", TORCH_BOX(&flip_by_flags_cuda));
}

}  // namespace marsops::cuda
