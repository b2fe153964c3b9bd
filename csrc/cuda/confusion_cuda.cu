// CUDA implementation of marsops::confusion_matrix: one thread per pixel (grid-stride), the
// argmax over classes fused in, counts into a per-block shared-memory histogram, merged into the
// (C, C) int64 output with integer atomics, so the result is exact and deterministic. A call is
// one memset and one kernel; a label outside [0, C) stops the kernel (device-side assertion).
#include <cassert>

#include "../confusion_common.h"
#include "cuda_utils.cuh"

namespace marsops::cuda {
namespace {

template <typename x_t, typename tgt_t, bool FROM_LOGITS>
__global__ void confusion_kernel(const x_t* __restrict__ x, const tgt_t* __restrict__ y, int64_t total, int64_t C,
                                 int64_t P, int64_t pixel_stride, int64_t class_stride, bool has_ignore,
                                 int64_t ignore_index, bool use_shared,
                                 unsigned long long* __restrict__ hist) {
  extern __shared__ unsigned int bins[];
  if (use_shared) {
    for (int64_t i = threadIdx.x; i < C * C; i += blockDim.x) bins[i] = 0;
    __syncthreads();
  }
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
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

template <typename x_t, typename tgt_t, bool FROM_LOGITS>
void launch(const ConfusionShapes& s, const Tensor& out, std::optional<int64_t> ignore_index, cudaStream_t stream) {
  const int64_t C = s.C, total = s.N * s.P;
  const bool use_shared = C * C <= kMaxSharedBins;
  const size_t shared_bytes = use_shared ? C * C * sizeof(unsigned int) : 0;
  confusion_kernel<x_t, tgt_t, FROM_LOGITS><<<grid_size(out, total), kThreads, shared_bytes, stream>>>(
      s.input.const_data_ptr<x_t>(), s.target.const_data_ptr<tgt_t>(), total, C, s.P, s.class_last ? C : 1,
      s.class_last ? 1 : s.P, ignore_index.has_value(),
      ignore_index.value_or(0), use_shared, static_cast<unsigned long long*>(out.mutable_data_ptr()));
  STD_CUDA_KERNEL_LAUNCH_CHECK();
}

Tensor confusion_matrix_cuda(const Tensor& input, const Tensor& target, int64_t num_classes,
                             std::optional<int64_t> ignore_index) {
  const auto s = confusion_shapes(input, target, num_classes);
  const st::accelerator::DeviceGuard guard(target.get_device_index());
  Tensor out = empty_on(target, {num_classes, num_classes}, ScalarType::Long);
  const cudaStream_t stream = current_stream(target);
  STD_CUDA_CHECK(cudaMemsetAsync(out.mutable_data_ptr(), 0, num_classes * num_classes * sizeof(int64_t), stream));
  if (s.N * s.P == 0) return out;
  dispatch_integral(s.target.scalar_type(), "marsops.confusion_matrix", [&](auto y_tag) {
    using tgt_t = decltype(y_tag);
    if (s.from_logits) {
      dispatch_floating(s.input.scalar_type(), "marsops.confusion_matrix", [&](auto x_tag) {
        launch<decltype(x_tag), tgt_t, true>(s, out, ignore_index, stream);
      });
    } else {
      dispatch_integral(s.input.scalar_type(), "marsops.confusion_matrix", [&](auto x_tag) {
        launch<decltype(x_tag), tgt_t, false>(s, out, ignore_index, stream);
      });
    }
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(marsops, CUDA, m) { m.impl("confusion_matrix", TORCH_BOX(&confusion_matrix_cuda)); }

}  // namespace marsops::cuda
