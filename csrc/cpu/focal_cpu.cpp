// CPU implementation of marsops::focal_loss_forward: validates, picks the SIMD kernel for this
// CPU's capability and folds the reduction.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../focal_common.h"
#include "buffer_pool.h"
#include "kernels.h"

namespace marsops::cpu {
namespace {

// Counts and weight sum of the non-ignored labels: the mean reductions need them before the
// gradient is written. Branch-free per-class histogram (slot C: ignored or bad); also rejects
// labels outside [0, C).
FocalStats target_stats(const at::Tensor& target, const at::Tensor& weight, int64_t C, int64_t ignore_index) {
  FocalStats out;
  AT_DISPATCH_INTEGRAL_TYPES(target.scalar_type(), "marsops_focal_target_stats", [&] {
    const scalar_t* y = target.const_data_ptr<scalar_t>();
    const int64_t n = target.numel();
    constexpr int64_t kChunk = 1 << 16;
    const int64_t num_chunks = (n + kChunk - 1) / kChunk;
    std::vector<int64_t> hist(num_chunks * (C + 1), 0);
    std::vector<char> bad(num_chunks, 0);
    at::parallel_for(0, num_chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t chunk = b; chunk < e; ++chunk) {
        int64_t* h = hist.data() + chunk * (C + 1);
        bool any_bad = false;
        for (int64_t i = chunk * kChunk; i < std::min(n, (chunk + 1) * kChunk); ++i) {
          const int64_t t = static_cast<int64_t>(y[i]);
          const bool ignored = t == ignore_index;
          const bool in_range = static_cast<uint64_t>(t) < static_cast<uint64_t>(C);
          any_bad |= !ignored && !in_range;
          h[(!ignored && in_range) ? t : C] += 1;
        }
        bad[chunk] = any_bad;
      }
    });
    const double* w = weight.defined() ? weight.const_data_ptr<double>() : nullptr;
    for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t k = hist[chunk * (C + 1) + c];
        out.count += k;
        out.weight_sum += static_cast<double>(k) * (w ? w[c] : 1.0);
      }
      if (bad[chunk] && !out.bad) {  // error path: find the first offending label for the message
        for (int64_t i = chunk * kChunk; i < std::min(n, (chunk + 1) * kChunk); ++i) {
          const int64_t t = static_cast<int64_t>(y[i]);
          if (t != ignore_index && (t < 0 || t >= C)) { out.bad = true; out.bad_label = t; break; }
        }
      }
    }
  });
  return out;
}

void check_labels(const FocalStats& st, int64_t C, int64_t ignore_index) {
  TORCH_CHECK_VALUE(!st.bad, "marsops.focal_loss: target contains label ", st.bad_label, ", outside [0, ", C,
                    ") and not ignore_index (", ignore_index, ")");
}

double denominator(const FocalStats& st, int64_t reduction) {
  if (reduction == kMean) return static_cast<double>(st.count);
  if (reduction == kWeightedMean) return st.weight_sum;
  return 1.0;
}

std::tuple<at::Tensor, at::Tensor> focal_loss_forward_cpu(const at::Tensor& logits_in, const at::Tensor& target_in,
                                                          const c10::optional<at::Tensor>& weight, double gamma,
                                                          int64_t ignore_index, int64_t reduction, bool compute_grad) {
  TORCH_CHECK(gamma >= 0, "marsops.focal_loss: gamma must be >= 0, got ", gamma);
  const auto s = focal_shapes(logits_in, target_in, weight, reduction);
  const auto acc_dtype = logits_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  FocalArgs a;
  a.logits = s.logits;
  a.target = s.target;
  if (weight.has_value()) a.weight = weight->to(acc_dtype).contiguous();
  a.gamma = gamma;
  a.ignore_index = ignore_index;
  a.grad_scale = 1.0;
  const bool mean = reduction == kMean || reduction == kWeightedMean;
  if (compute_grad && mean) {
    // The gradient is written in the main pass, so its 1/denominator must be known before it.
    const auto pre = target_stats(s.target, weight.has_value() ? weight->to(at::kDouble).contiguous() : at::Tensor(),
                                  s.C, ignore_index);
    check_labels(pre, s.C, ignore_index);
    const double d = denominator(pre, reduction);
    a.grad_scale = d > 0 ? 1.0 / d : 0.0;  // nothing counted: zero loss, zero gradient
  }
  at::Tensor loss = empty_loss(logits_in, target_in, reduction);
  at::Tensor grad = compute_grad ? pooled_empty(logits_in.sizes(), logits_in.options()) : empty_grad(logits_in, false);
  if (reduction == kNone) a.loss_none = loss.view({s.N, s.P});
  if (compute_grad) a.grad = grad.view({s.N, s.C, s.P});
  const FocalStats st = s.N * s.P == 0 ? FocalStats{} : simd_kernels().focal_forward(a);
  check_labels(st, s.C, ignore_index);
  if (reduction != kNone) {
    const double d = denominator(st, reduction);
    loss.fill_(reduction == kSum ? st.loss_sum : (d > 0 ? st.loss_sum / d : 0.0));
  }
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(marsops, CPU, m) { m.impl("focal_loss_forward", &focal_loss_forward_cpu); }

}  // namespace marsops::cpu
