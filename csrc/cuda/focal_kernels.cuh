// Device code of marsops::focal_loss_forward (host side: focal_cuda.cu): one thread per pixel
// (grid-stride). In NCHW the class loop reads a pixel's logits with stride P, so a warp's loads are
// coalesced; in channels_last (class-last) a pixel's classes are contiguous and a warp reads one
// contiguous run. The loss and the gradient come out of the same pass. Per-block partial sums are
// reduced by the block that finishes last, in a fixed order (deterministic).
#pragma once
#include <cmath>

#include "../focal_math.h"
#include "../reduction.h"
#include "../saved_grad.h"
#include "device.cuh"

namespace marsops::cuda {

// The label of pixel i, or -1 when ignored; a label outside [0, C) stops the kernel.
template <typename tgt_t>
__device__ __forceinline__ int64_t read_label(const tgt_t* y, int64_t i, int64_t C, int64_t ignore_index) {
  const int64_t t = static_cast<int64_t>(y[i]);
  if (t == ignore_index) return -1;
  MARSOPS_DEVICE_ASSERT(t >= 0 && t < C,
                        "marsops.focal_loss: target contains a label outside [0, C) that is not ignore_index");
  return t;
}

// Sums the first `n` rows of a (blocks, k) partials array, column `col`, over the whole block
// (fixed assignment of rows to threads, then a fixed-order block sum: deterministic).
__device__ __forceinline__ double sum_column(const double* partial, int n, int k, int col, double* shared) {
  double v = 0;
  for (int b = threadIdx.x; b < n; b += blockDim.x) v += __ldcg(partial + b * k + col);
  return block_sum(v, shared);
}

// 1 / the mean's denominator (0 when nothing is counted), from the labels alone: the main pass
// writes the gradient already divided by it.
template <typename tgt_t>
__global__ void target_stats_kernel(const tgt_t* __restrict__ y, const float* __restrict__ w, int64_t n, int64_t C,
                                    int64_t ignore_index, bool weighted_mean, double* __restrict__ partial,
                                    float* __restrict__ scale, unsigned int* counter) {
  __shared__ double shared[32];
  double count = 0, wsum = 0;
  for (int64_t i = grid_start(); i < n; i += grid_step()) {
    const int64_t t = read_label(y, i, C, ignore_index);
    if (t < 0) continue;
    count += 1;
    wsum += w ? w[t] : 1.0f;
  }
  count = block_sum(count, shared);
  wsum = block_sum(wsum, shared);
  if (threadIdx.x == 0) {
    partial[blockIdx.x * 2 + 0] = count;
    partial[blockIdx.x * 2 + 1] = wsum;
  }
  if (!last_block_done(counter)) return;
  const double d = sum_column(partial, gridDim.x, 2, weighted_mean ? 1 : 0, shared);
  if (threadIdx.x == 0) *scale = d != 0 ? static_cast<float>(1.0 / d) : 0.0f;
}

// hist: the (C, C) int64 output of the confusion counts, or nullptr. With shared_bins, each block
// counts into shared memory first (C * C <= kMaxSharedBins) and adds its counts at the end.
template <typename in_t, typename tgt_t>
__global__ void focal_forward_kernel(const in_t* __restrict__ x, const tgt_t* __restrict__ y,
                                     const float* __restrict__ w, int64_t total, int64_t C, int64_t P,
                                     int64_t pixel_stride, int64_t class_stride, float gamma, float eps,
                                     int64_t ignore_index, const float* __restrict__ grad_scale, int64_t reduction,
                                     in_t* __restrict__ loss_out, saved_grad_t<in_t>* __restrict__ grad,
                                     double* __restrict__ partial,
                                     unsigned int* counter, unsigned long long* __restrict__ hist, bool shared_bins) {
  __shared__ double shared[32];
  MARSOPS_DYNAMIC_SHARED(unsigned int, bins);
  if (hist && shared_bins) {
    for (int64_t j = threadIdx.x; j < C * C; j += blockDim.x) bins[j] = 0;
    __syncthreads();
  }
  double loss_sum = 0, count = 0, wsum = 0;
  const float scale = grad_scale ? *grad_scale : 1.0f;
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    const int64_t n = i / P, p = i - n * P;
    const in_t* xp = x + n * C * P + p * pixel_stride;
    const int64_t t = read_label(y, i, C, ignore_index);
    const bool valid = t >= 0;
    const float wt = valid ? (w ? w[t] : 1.0f) : 0.0f;
    float m = -INFINITY, best = 0;
    int64_t pred = 0;
    for (int64_t c = 0; c < C; ++c) {
      const float v = static_cast<float>(xp[c * class_stride]);
      m = fmaxf(m, v);
      if (c == 0 || v > best || (v != v && best == best)) {  // argmax: first maximum; NaN wins, as torch
        best = v;
        pred = c;
      }
    }
    if (hist && valid) {
      if (shared_bins) {
        atomicAdd(&bins[t * C + pred], 1u);
      } else {
        atomicAdd(&hist[t * C + pred], 1ull);
      }
    }
    float s = 0, other = 0, xt = 0, et = 0;
    for (int64_t c = 0; c < C; ++c) {
      const float xc = static_cast<float>(xp[c * class_stride]);
      const float e = expf(xc - m);
      s += e;
      if (c == t) {
        xt = xc;
        et = e;
      } else {
        other += e;
      }
    }
    const float inv_s = 1.0f / s, log_s = logf(s);
    float loss = 0, coef = 0;
    if (valid) focal_terms(xt, m, log_s, et * inv_s, other * inv_s, wt, gamma, loss, coef);
    // Label smoothing: + eps / C of every class's focal term (each class's coefficient is recomputed
    // in the gradient loop rather than stored).
    auto class_terms = [&](int64_t c, float& lc, float& cc) {
      const float e = expf(static_cast<float>(xp[c * class_stride]) - m);
      focal_terms(static_cast<float>(xp[c * class_stride]), m, log_s, e * inv_s, fmaxf((s - e) * inv_s, 0.0f),
                  w ? w[c] : 1.0f, gamma, lc, cc);
    };
    float smooth_sum = 0;
    if (valid && eps > 0) {
      float smooth_loss = 0;
      for (int64_t c = 0; c < C; ++c) {
        float lc, cc;
        class_terms(c, lc, cc);
        smooth_loss += lc;
        smooth_sum += cc;
      }
      loss = (1.0f - eps) * loss + eps / C * smooth_loss;
    }
    if (reduction == kNone) loss_out[i] = static_cast<in_t>(loss);
    if (grad) {
      const float cs = (1.0f - eps) * coef * scale, ss = eps / C * scale;
      saved_grad_t<in_t>* gp = grad + n * C * P + p * pixel_stride;
      for (int64_t c = 0; c < C; ++c) {
        const float pc = expf(static_cast<float>(xp[c * class_stride]) - m) * inv_s;
        float g = cs * ((c == t ? 1.0f : 0.0f) - pc);
        if (eps > 0) {
          float lc, cc;
          class_terms(c, lc, cc);
          g += ss * (cc - pc * smooth_sum);
        }
        // Ignored pixels get an exact 0, whatever their logits hold (NaN and inf included).
        gp[c * class_stride] = static_cast<saved_grad_t<in_t>>(valid ? g : 0.0f);
      }
    }
    loss_sum += loss;
    count += valid;
    wsum += wt;
  }
  if (hist && shared_bins) {
    __syncthreads();
    for (int64_t j = threadIdx.x; j < C * C; j += blockDim.x)
      if (bins[j]) atomicAdd(&hist[j], static_cast<unsigned long long>(bins[j]));
  }
  if (reduction == kNone) return;
  loss_sum = block_sum(loss_sum, shared);
  count = block_sum(count, shared);
  wsum = block_sum(wsum, shared);
  if (threadIdx.x == 0) {
    partial[blockIdx.x * 3 + 0] = loss_sum;
    partial[blockIdx.x * 3 + 1] = count;
    partial[blockIdx.x * 3 + 2] = wsum;
  }
  if (!last_block_done(counter)) return;
  const double total_loss = sum_column(partial, gridDim.x, 3, 0, shared);
  const double d = reduction == kSum ? 1.0 : sum_column(partial, gridDim.x, 3, reduction == kMean ? 1 : 2, shared);
  if (threadIdx.x == 0) *loss_out = static_cast<in_t>(reduction == kSum ? total_loss : (d != 0 ? total_loss / d : 0.0));
}

}  // namespace marsops::cuda
