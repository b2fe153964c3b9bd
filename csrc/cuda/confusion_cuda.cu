// CUDA implementation of marsops::confusion_matrix: one thread per pixel (grid-stride), the
// argmax over classes fused in, counts into a per-block shared-memory histogram, merged into the
// (C, C) int64 output with integer atomics, so the result is exact and deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../confusion_common.h"
#include "cuda_utils.cuh"

namespace marsops::cuda {
namespace {

constexpr int64_t kMaxSharedBins = 8192;  // 32 KB of unsigned counters per block

template <typename x_t, typename tgt_t, bool FROM_LOGITS>
__global__ void confusion_kernel(const x_t* __restrict__ x, const tgt_t* __restrict__ y, int64_t total, int64_t C,
                                 int64_t P, bool has_ignore, int64_t ignore_index, bool use_shared,
                                 unsigned long long* __restrict__ hist, int* bad) {
  extern __shared__ unsigned int bins[];
  if (use_shared) {
    for (int64_t i = threadIdx.x; i < C * C; i += blockDim.x) bins[i] = 0;
    __syncthreads();
  }
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = static_cast<int64_t>(y[i]);
    if (has_ignore && t == ignore_index) continue;
    int64_t pred = 0;
    if constexpr (FROM_LOGITS) {
      using acc_t = at::opmath_type<x_t>;
      const int64_t n = i / P, p = i - n * P;
      const x_t* xp = x + n * C * P + p;
      acc_t best = static_cast<acc_t>(xp[0]);
      for (int64_t c = 1; c < C; ++c) {
        const acc_t v = static_cast<acc_t>(xp[c * P]);
        if (v > best || (v != v && best == best)) {  // first maximum; NaN wins, as torch.argmax
          best = v;
          pred = c;
        }
      }
    } else {
      pred = static_cast<int64_t>(x[i]);
    }
    if (t < 0 || t >= C) { atomicOr(bad, 1); continue; }
    if (pred < 0 || pred >= C) { atomicOr(bad, 2); continue; }
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

at::Tensor confusion_matrix_cuda(const at::Tensor& input, const at::Tensor& target, int64_t num_classes,
                                 c10::optional<int64_t> ignore_index) {
  const auto s = confusion_shapes(input, target, num_classes);
  const c10::cuda::CUDAGuard guard(target.device());
  at::Tensor out = at::zeros({num_classes, num_classes}, target.options().dtype(at::kLong));
  at::Tensor bad = at::zeros({}, target.options().dtype(at::kInt));
  const int64_t total = s.N * s.P;
  if (total == 0) return out;
  const bool use_shared = num_classes * num_classes <= kMaxSharedBins;
  const size_t shared_bytes = use_shared ? num_classes * num_classes * sizeof(unsigned int) : 0;
  const int blocks = grid_size(total);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  auto* hist = reinterpret_cast<unsigned long long*>(out.mutable_data_ptr<int64_t>());
  AT_DISPATCH_INTEGRAL_TYPES(s.target.scalar_type(), "marsops_confusion_cuda_target", [&] {
    using tgt_t = scalar_t;
    if (s.from_logits) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.input.scalar_type(), "marsops_confusion_cuda", [&] {
        confusion_kernel<scalar_t, tgt_t, true><<<blocks, kThreads, shared_bytes, stream>>>(
            s.input.const_data_ptr<scalar_t>(), s.target.const_data_ptr<tgt_t>(), total, num_classes, s.P,
            ignore_index.has_value(), ignore_index.value_or(0), use_shared, hist, bad.mutable_data_ptr<int>());
      });
    } else {
      AT_DISPATCH_INTEGRAL_TYPES(s.input.scalar_type(), "marsops_confusion_cuda_pred", [&] {
        confusion_kernel<scalar_t, tgt_t, false><<<blocks, kThreads, shared_bytes, stream>>>(
            s.input.const_data_ptr<scalar_t>(), s.target.const_data_ptr<tgt_t>(), total, num_classes, s.P,
            ignore_index.has_value(), ignore_index.value_or(0), use_shared, hist, bad.mutable_data_ptr<int>());
      });
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // Device-side checks, no host synchronisation (see focal_cuda.cu).
  at::_assert_async(bad.bitwise_and(1).eq(0),
                    "marsops.confusion_matrix: target contains a label outside [0, num_classes) and not ignore_index");
  at::_assert_async(bad.bitwise_and(2).eq(0), "marsops.confusion_matrix: predictions contain a label outside "
                    "[0, num_classes)");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(marsops, CUDA, m) { m.impl("confusion_matrix", &confusion_matrix_cuda); }

}  // namespace marsops::cuda
