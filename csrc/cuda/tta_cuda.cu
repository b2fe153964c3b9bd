// CUDA implementation of marsops::views_argmax: one thread per output pixel (grid-stride), the K
// views read in place through the outputs' strides (tta_common.h), confusion counts through a per-block shared-memory
// histogram, as the confusion-matrix kernel. A label outside [0, C) stops the kernel.
#include <cassert>

#include "../tta_checks.h"
#include "cuda_utils.cuh"

namespace marsops::cuda {
namespace {

template <typename T, typename tgt_t>
__global__ void views_argmax_kernel(const T* __restrict__ y, ViewsGeometry g, bool softmax,
                                    const tgt_t* __restrict__ target, bool has_ignore, int64_t ignore_index,
                                    int64_t* __restrict__ pred_out, unsigned long long* __restrict__ hist,
                                    bool shared_bins) {
  extern __shared__ unsigned int bins[];
  const int64_t C = g.C;
  if (hist && shared_bins) {
    for (int64_t j = threadIdx.x; j < C * C; j += blockDim.x) bins[j] = 0;
    __syncthreads();
  }
  const int64_t total = g.N * g.D * g.H * g.W;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t w = i % g.W, h = (i / g.W) % g.H, d = (i / (g.W * g.H)) % g.D, n = i / (g.W * g.H * g.D);
    const int64_t p = views_argmax_pixel(
        [&](int k, int64_t c) { return static_cast<float>(y[g.at(k, n, c, d, h, w)]); }, g.views.count, C, softmax);
    if (pred_out) pred_out[i] = p;
    if (!hist) continue;
    const int64_t t = static_cast<int64_t>(target[i]);
    if (has_ignore && t == ignore_index) continue;
    MARSOPS_DEVICE_ASSERT(t >= 0 && t < C, "marsops.flip4_argmax: target contains a label outside [0, C) and not "
                          "ignore_index");
    if (shared_bins) {
      atomicAdd(&bins[t * C + p], 1u);
    } else {
      atomicAdd(&hist[t * C + p], 1ull);
    }
  }
  if (hist && shared_bins) {
    __syncthreads();
    for (int64_t j = threadIdx.x; j < C * C; j += blockDim.x)
      if (bins[j]) atomicAdd(&hist[j], static_cast<unsigned long long>(bins[j]));
  }
}

std::tuple<Tensor, Tensor> views_argmax_cuda(const Tensor& outputs, const std::optional<Tensor>& target,
                                             std::optional<int64_t> ignore_index, bool softmax, bool want_pred,
                                             std::vector<int64_t> views, bool volume) {
  const auto s = views_argmax_shapes(outputs, target, views, volume);
  const ViewsGeometry g = s.g;
  const st::accelerator::DeviceGuard guard(outputs.get_device_index());
  const cudaStream_t stream = current_stream(outputs);
  Tensor pred = empty_on(outputs, want_pred ? views_pred_shape(outputs, g) : std::vector<int64_t>{0}, ScalarType::Long);
  const bool count = target.has_value();
  Tensor confusion = empty_on(outputs, count ? std::vector<int64_t>{g.C, g.C} : std::vector<int64_t>{0},
                              ScalarType::Long);
  if (count) STD_CUDA_CHECK(cudaMemsetAsync(confusion.mutable_data_ptr(), 0, g.C * g.C * sizeof(int64_t), stream));
  const int64_t total = g.N * g.D * g.H * g.W;
  if (total == 0) return {pred, confusion};
  const bool shared_bins = count && g.C * g.C <= kMaxSharedBins;
  const size_t shared_bytes = shared_bins ? g.C * g.C * sizeof(unsigned int) : 0;
  dispatch_floating(outputs.scalar_type(), "marsops.flip4_argmax", [&](auto x_tag) {
    using T = decltype(x_tag);
    auto launch = [&](auto t_tag) {
      using tgt_t = decltype(t_tag);
      views_argmax_kernel<T, tgt_t><<<grid_size(outputs, total), kThreads, shared_bytes, stream>>>(
          static_cast<const T*>(s.outputs.const_data_ptr()), g, softmax,
          count ? static_cast<const tgt_t*>(s.target.const_data_ptr()) : nullptr, ignore_index.has_value(),
          ignore_index.value_or(0), want_pred ? pred.mutable_data_ptr<int64_t>() : nullptr,
          count ? static_cast<unsigned long long*>(confusion.mutable_data_ptr()) : nullptr, shared_bins);
      STD_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (count) {
      dispatch_integral(s.target.scalar_type(), "marsops.flip4_argmax", launch);
    } else {
      launch(int64_t{});
    }
  });
  return {pred, confusion};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(marsops, CUDA, m) { m.impl("views_argmax", TORCH_BOX(&views_argmax_cuda)); }

}  // namespace marsops::cuda
