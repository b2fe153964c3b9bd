// Device code of marsops::confusion_matrix (host side: confusion_cuda.cu): one thread per pixel
// (grid-stride), the argmax over classes fused in, counts into a per-block shared-memory histogram
// merged into the (C, C) int64 output with integer atomics (exact and deterministic), or straight
// into the output with global atomics when C * C is too large for shared memory.
#pragma once
#include "device.cuh"

namespace marsops::cuda {

template <typename x_t, typename tgt_t, bool FROM_LOGITS>
__global__ void confusion_kernel(const x_t* __restrict__ x, const tgt_t* __restrict__ y, int64_t total, int64_t C,
                                 int64_t P, int64_t pixel_stride, int64_t class_stride, bool has_ignore,
                                 int64_t ignore_index, bool use_shared, unsigned long long* __restrict__ hist) {
  MARSOPS_DYNAMIC_SHARED(unsigned int, bins);
  if (use_shared) {
    for (int64_t i = threadIdx.x; i < C * C; i += blockDim.x) bins[i] = 0;
    __syncthreads();
  }
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    const int64_t t = static_cast<int64_t>(y[i]);
    if (has_ignore && t == ignore_index) continue;
    MARSOPS_DEVICE_ASSERT(t >= 0 && t < C, "marsops.confusion_matrix: target contains a label outside "
                          "[0, num_classes) and not ignore_index");
    int64_t pred = 0;
    if constexpr (FROM_LOGITS) {
      using acc = acc_t<x_t>;
      const int64_t n = i / P, p = i - n * P;
      const x_t* xp = x + n * C * P + p * pixel_stride;
      acc best = static_cast<acc>(xp[0]);
      for (int64_t c = 1; c < C; ++c) {
        const acc v = static_cast<acc>(xp[c * class_stride]);
        if (v > best || (v != v && best == best)) {  // first maximum; NaN wins, as torch.argmax
          best = v;
          pred = c;
        }
      }
    } else {
      pred = static_cast<int64_t>(x[i]);
      MARSOPS_DEVICE_ASSERT(pred >= 0 && pred < C,
                            "marsops.confusion_matrix: predictions contain a label outside [0, num_classes)");
    }
    if (use_shared) {
      atomicAdd(&bins[t * C + pred], 1u);
    } else {
      atomicAdd(&hist[t * C + pred], 1ull);
    }
  }
  if (use_shared) {
    __syncthreads();
    for (int64_t i = threadIdx.x; i < C * C; i += blockDim.x)
      if (bins[i]) atomicAdd(&hist[i], static_cast<unsigned long long>(bins[i]));
  }
}

}  // namespace marsops::cuda
