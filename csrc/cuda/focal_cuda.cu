// CUDA implementation of marsops::focal_loss_forward: one thread per pixel (grid-stride), the
// class loop reads the logits of a pixel with stride P, so a warp's loads are coalesced. The
// loss and the gradient come out of the same pass; per-block partial sums are reduced by torch
// on the device, so nothing synchronises with the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../focal_common.h"
#include "../focal_math.h"
#include "cuda_utils.cuh"

namespace marsops::cuda {
namespace {

// Per block: [loss sum, count, weight sum].
constexpr int kStats = 3;

template <typename tgt_t>
__device__ __forceinline__ bool read_label(const tgt_t* y, int64_t i, int64_t C, int64_t ignore_index,
                                           int* bad, int64_t& t) {
  t = static_cast<int64_t>(y[i]);
  if (t == ignore_index) return false;
  if (t < 0 || t >= C) {
    atomicExch(bad, 1);
    return false;
  }
  return true;
}

template <typename tgt_t>
__global__ void target_stats_kernel(const tgt_t* __restrict__ y, const float* __restrict__ w, int64_t n, int64_t C,
                                    int64_t ignore_index, double* __restrict__ partial, int* bad) {
  __shared__ double shared[32];
  double count = 0, wsum = 0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t t;
    if (!read_label(y, i, C, ignore_index, bad, t)) continue;
    count += 1;
    wsum += w ? w[t] : 1.0f;
  }
  count = block_sum(count, shared);
  wsum = block_sum(wsum, shared);
  if (threadIdx.x == 0) {
    partial[blockIdx.x * 2 + 0] = count;
    partial[blockIdx.x * 2 + 1] = wsum;
  }
}

template <typename in_t, typename tgt_t>
__global__ void focal_forward_kernel(const in_t* __restrict__ x, const tgt_t* __restrict__ y,
                                     const float* __restrict__ w, int64_t total, int64_t C, int64_t P, float gamma,
                                     int64_t ignore_index, const float* __restrict__ grad_scale,
                                     in_t* __restrict__ loss_none, in_t* __restrict__ grad,
                                     double* __restrict__ partial, int* bad) {
  __shared__ double shared[32];
  double loss_sum = 0, count = 0, wsum = 0;
  const float scale = grad_scale ? *grad_scale : 1.0f;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t n = i / P, p = i - n * P;
    const in_t* xp = x + n * C * P + p;
    int64_t t;
    const bool valid = read_label(y, i, C, ignore_index, bad, t);
    const float wt = valid ? (w ? w[t] : 1.0f) : 0.0f;
    float m = -INFINITY;
    for (int64_t c = 0; c < C; ++c) m = fmaxf(m, static_cast<float>(xp[c * P]));
    float s = 0, other = 0, xt = 0, et = 0;
    for (int64_t c = 0; c < C; ++c) {
      const float xc = static_cast<float>(xp[c * P]);
      const float e = expf(xc - m);
      s += e;
      if (valid && c == t) { xt = xc; et = e; } else { other += e; }
    }
    const float inv_s = 1.0f / s;
    float loss = 0, coef = 0;
    if (valid) focal_terms(xt - m - logf(s), et * inv_s, other * inv_s, wt, gamma, loss, coef);
    if (loss_none) loss_none[i] = static_cast<in_t>(loss);
    if (grad) {
      const float cs = coef * scale;
      in_t* gp = grad + n * C * P + p;
      for (int64_t c = 0; c < C; ++c) {
        const float pc = expf(static_cast<float>(xp[c * P]) - m) * inv_s;
        // Ignored pixels get an exact 0, whatever their logits hold (NaN and inf included).
        gp[c * P] = static_cast<in_t>(valid ? cs * ((c == t ? 1.0f : 0.0f) - pc) : 0.0f);
      }
    }
    loss_sum += loss;
    count += valid;
    wsum += wt;
  }
  loss_sum = block_sum(loss_sum, shared);
  count = block_sum(count, shared);
  wsum = block_sum(wsum, shared);
  if (threadIdx.x == 0) {
    partial[blockIdx.x * kStats + 0] = loss_sum;
    partial[blockIdx.x * kStats + 1] = count;
    partial[blockIdx.x * kStats + 2] = wsum;
  }
}

// 1 / denominator of the reduction (0 when nothing was counted), as a device scalar.
at::Tensor inverse_denominator(const at::Tensor& count, const at::Tensor& wsum, int64_t reduction) {
  const at::Tensor d = reduction == kMean ? count : wsum;
  return at::where(d > 0, d.reciprocal(), at::zeros_like(d));
}

std::tuple<at::Tensor, at::Tensor> focal_loss_forward_cuda(const at::Tensor& logits_in, const at::Tensor& target_in,
                                                           const c10::optional<at::Tensor>& weight, double gamma,
                                                           int64_t ignore_index, int64_t reduction, bool compute_grad) {
  TORCH_CHECK(gamma >= 0, "marsops.focal_loss: gamma must be >= 0, got ", gamma);
  TORCH_CHECK(logits_in.scalar_type() != at::kDouble, "marsops.focal_loss: the CUDA kernel computes in fp32; "
              "float64 logits are supported by the cpu and reference backends");
  const auto s = focal_shapes(logits_in, target_in, weight, reduction);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = s.N * s.P;
  const at::Tensor w = weight.has_value() ? weight->to(at::kFloat).contiguous() : at::Tensor();
  const float* w_ptr = w.defined() ? w.const_data_ptr<float>() : nullptr;
  at::Tensor bad = at::zeros({}, logits_in.options().dtype(at::kInt));
  at::Tensor loss = empty_loss(logits_in, target_in, reduction);
  at::Tensor grad = empty_grad(logits_in, compute_grad);
  const bool mean = reduction == kMean || reduction == kWeightedMean;
  at::Tensor scale;
  const int blocks = grid_size(total);
  AT_DISPATCH_INTEGRAL_TYPES(s.target.scalar_type(), "marsops_focal_cuda_target", [&] {
    using tgt_t = scalar_t;
    if (compute_grad && mean) {
      // The gradient is written in the main pass, so its 1/denominator is computed first.
      at::Tensor pre = at::empty({blocks, 2}, logits_in.options().dtype(at::kDouble));
      target_stats_kernel<tgt_t><<<blocks, kThreads, 0, stream>>>(
          s.target.const_data_ptr<tgt_t>(), w_ptr, total, s.C, ignore_index, pre.mutable_data_ptr<double>(),
          bad.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const at::Tensor sums = pre.sum(0);
      scale = inverse_denominator(sums[0], sums[1], reduction).to(at::kFloat);
    }
    at::Tensor partial = at::empty({blocks, kStats}, logits_in.options().dtype(at::kDouble));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.logits.scalar_type(), "marsops_focal_cuda", [&] {
      focal_forward_kernel<scalar_t, tgt_t><<<blocks, kThreads, 0, stream>>>(
          s.logits.const_data_ptr<scalar_t>(), s.target.const_data_ptr<tgt_t>(), w_ptr, total, s.C, s.P,
          static_cast<float>(gamma), ignore_index, scale.defined() ? scale.const_data_ptr<float>() : nullptr,
          reduction == kNone ? loss.mutable_data_ptr<scalar_t>() : nullptr,
          compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr, partial.mutable_data_ptr<double>(),
          bad.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (reduction != kNone) {
      const at::Tensor sums = partial.sum(0);
      at::Tensor value = reduction == kSum ? sums[0] : sums[0] * inverse_denominator(sums[1], sums[2], reduction);
      loss.copy_(value);
    }
  });
  // Device-side check: no host synchronisation (like torch's own losses, a bad label raises a
  // device-side assertion). The kernel itself never reads out of bounds for such a label.
  at::_assert_async(bad.eq(0), "marsops.focal_loss: target contains a label outside [0, C) that is not ignore_index");
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(marsops, CUDA, m) { m.impl("focal_loss_forward", &focal_loss_forward_cuda); }

}  // namespace marsops::cuda
