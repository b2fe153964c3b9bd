// CPU implementation of marsops::sigmoid_focal_loss_forward (csrc/cpu/sigmoid_kernel.h): one
// pass over logits and targets writes the loss (or its per-chunk sums, added in chunk order:
// deterministic whatever the thread count) and the gradient.
#include <algorithm>

#include "../saved_grad.h"
#include "../stable.h"
#include "buffer_pool.h"
#include "kernels.h"

namespace marsops::cpu {
namespace {

constexpr int64_t kChunk = 8192;
enum : int64_t { kNone = 0, kSum = 1, kMean = 2 };

// Elements that count towards the mean: all but the integer targets equal to ignore_index.
int64_t counted(const Tensor& y, bool has_ignore, int64_t ignore_index) {
  if (!has_ignore || is_floating(y.scalar_type())) return y.numel();
  int64_t kept = 0;
  dispatch_integral(y.scalar_type(), "marsops.sigmoid_focal_loss", [&](auto tag) {
    using tgt_t = decltype(tag);
    const tgt_t* p = y.const_data_ptr<tgt_t>();
    const int64_t n = y.numel(), chunks = (n + kChunk - 1) / kChunk;
    std::vector<int64_t> parts(chunks, 0);
    st::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i)
          parts[c] += static_cast<int64_t>(p[i]) != ignore_index;
    });
    for (int64_t k : parts) kept += k;
  });
  return kept;
}

std::tuple<Tensor, Tensor> sigmoid_focal_loss_forward_cpu(const Tensor& logits, const Tensor& target,
                                                          const std::optional<Tensor>& pos_weight, double alpha,
                                                          double gamma, std::optional<int64_t> ignore_index,
                                                          int64_t reduction, bool compute_grad) {
  const char* op = "marsops.sigmoid_focal_loss";
  MARSOPS_CHECK(is_floating(logits.scalar_type()), op, ": logits must be floating point, got ",
                dtype_str(logits.scalar_type()));
  const ScalarType td = target.scalar_type();
  MARSOPS_CHECK(is_floating(td) || is_integral(td) || td == ScalarType::Bool, op,
                ": target must be a float (soft labels), integer or bool tensor, got ", dtype_str(td));
  MARSOPS_CHECK(sizes_of(target) == sizes_of(logits), op, ": target shape ", shape_str(target),
                " must equal the logits shape ", shape_str(logits));
  MARSOPS_CHECK(same_device(target, logits), op, ": target is on ", device_str(target), " but logits are on ",
                device_str(logits));
  MARSOPS_CHECK(reduction >= kNone && reduction <= kMean, op, ": bad reduction code ", reduction);
  MARSOPS_CHECK(gamma >= 0, op, ": gamma must be >= 0, got ", gamma);
  MARSOPS_CHECK(alpha <= 1, op, ": alpha must be <= 1 (negative: no alpha weighting), got ", alpha);
  const ScalarType dtype = logits.scalar_type();
  const ScalarType compute = dtype == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  const int64_t numel = logits.numel();
  int64_t C = 1;
  Tensor pw;
  if (pos_weight.has_value()) {
    MARSOPS_CHECK(is_floating(pos_weight->scalar_type()), op, ": pos_weight must be floating point");
    MARSOPS_CHECK(same_device(*pos_weight, logits), op, ": pos_weight is on ", device_str(*pos_weight),
                  " but logits are on ", device_str(logits));
    const int64_t k = pos_weight->numel();
    MARSOPS_CHECK(k == 1 || (logits.dim() >= 2 && pos_weight->dim() == 1 && k == logits.size(1)), op,
                  ": pos_weight must hold one value or one per class (logits (N, C, *) with C = ", k, "), got ",
                  shape_str(*pos_weight), " for logits ", shape_str(logits));
    C = k;
    pw = st::contiguous(st::to(*pos_weight, compute));
  }
  const Tensor x = st::contiguous(logits);
  const Tensor y = st::contiguous(td == ScalarType::Bool ? st::to(target, ScalarType::Byte) : target);
  SigmoidArgs a{};
  a.logits = x.const_data_ptr();
  a.logits_dtype = dtype;
  a.target = y.const_data_ptr();
  a.target_dtype = y.scalar_type();
  a.C = C;
  // Planes of one class each when pos_weight is per class; else one long row.
  a.P = C > 1 ? numel / std::max<int64_t>(1, logits.size(0) * C) : std::max<int64_t>(numel, 1);
  a.pos_weight = pw.defined() ? pw.const_data_ptr() : nullptr;
  a.alpha = alpha;
  a.gamma = gamma;
  a.has_ignore = ignore_index.has_value();
  a.ignore_index = ignore_index.value_or(0);
  const int64_t count = reduction == kMean ? counted(y, a.has_ignore, a.ignore_index) : 0;
  a.grad_scale = reduction != kMean ? 1.0 : (count > 0 ? 1.0 / static_cast<double>(count) : 0.0);
  Tensor loss = reduction == kNone ? empty_on(logits, sizes_of(logits), dtype) : empty_on(logits, {}, dtype);
  Tensor grad = compute_grad ? pooled_empty(sizes_of(logits), saved_grad_dtype(dtype)) : empty_on(logits, {0}, dtype);
  if (reduction == kNone) a.loss_none = loss.mutable_data_ptr();
  if (compute_grad) a.grad = grad.mutable_data_ptr();

  const int64_t num_chunks = (numel + kChunk - 1) / kChunk;
  std::vector<FocalStats> parts(num_chunks);
  const auto& kernels = simd_kernels();
  st::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) parts[c] = kernels.sigmoid_focal(a, c * kChunk, std::min(numel, (c + 1) * kChunk));
  });
  FocalStats stats;
  for (const auto& part : parts) stats.merge(part);
  if (is_floating(td)) {
    MARSOPS_CHECK(!stats.bad, op, ": target contains a value outside [0, 1] (float targets are soft labels)");
  } else {
    MARSOPS_CHECK(!stats.bad, op, ": target contains label ", stats.bad_label, ", outside {0, 1}",
                  a.has_ignore ? " and not ignore_index (" + std::to_string(a.ignore_index) + ")" : std::string());
  }
  if (reduction != kNone) st::fill_(loss, within_range(reduction == kSum ? stats.loss_sum : stats.loss_sum * a.grad_scale, dtype));
  return {loss, grad};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(marsops, CPU, m) {
  m.impl("sigmoid_focal_loss_forward", TORCH_BOX(&sigmoid_focal_loss_forward_cpu));
}

}  // namespace marsops::cpu
