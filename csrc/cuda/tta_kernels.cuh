// Device code of marsops::views_argmax (host side: tta_cuda.cu): one thread per output pixel
// (grid-stride), the K views read in place through the outputs' strides (csrc/tta_common.h),
// confusion counts through a per-block shared-memory histogram, as the confusion-matrix kernel.
#pragma once
#include "../tta_common.h"
#include "device.cuh"

namespace marsops::cuda {

template <typename T, typename tgt_t>
__global__ void views_argmax_kernel(const T* __restrict__ y, ViewsGeometry g, bool softmax,
                                    const tgt_t* __restrict__ target, bool has_ignore, int64_t ignore_index,
                                    int64_t* __restrict__ pred_out, unsigned long long* __restrict__ hist,
                                    bool shared_bins) {
  MARSOPS_DYNAMIC_SHARED(unsigned int, bins);
  const int64_t C = g.C;
  if (hist && shared_bins) {
    for (int64_t j = threadIdx.x; j < C * C; j += blockDim.x) bins[j] = 0;
    __syncthreads();
  }
  const int64_t total = g.N * g.D * g.H * g.W;
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
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

}  // namespace marsops::cuda
