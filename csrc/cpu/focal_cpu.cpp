// CPU implementation of marsops::focal_loss_forward: validates, runs the SIMD kernel of this
// CPU's capability over fixed-size chunks in parallel, and folds the reduction.
#include <algorithm>
#include <mutex>

#include "../focal_common.h"
#include "buffer_pool.h"
#include "kernels.h"
#include "parallel_chunks.h"

namespace marsops::cpu {
namespace {

// Fixed-size chunks, summed in order: the result does not depend on the thread count.
constexpr int64_t kChunk = 4096;

// Counts and weight sum of the non-ignored labels: the mean reductions need them before the
// gradient is written (simd_kernels().label_counts, per chunk of labels in parallel); also finds
// the first label outside [0, C) that is not ignore_index.
template <typename tgt_t>
FocalStats target_stats(const tgt_t* y, ScalarType dtype, int64_t n, const double* w, int64_t C,
                        int64_t ignore_index) {
  constexpr int64_t kLabelChunk = 1 << 16;
  const int64_t num_chunks = (n + kLabelChunk - 1) / kLabelChunk;
  std::vector<int64_t> hist(num_chunks * (C + 1), 0);
  std::vector<char> bad(num_chunks, 0);
  const auto& kernels = simd_kernels();
  st::parallel_for(0, num_chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t chunk = b; chunk < e; ++chunk)
      bad[chunk] = kernels.label_counts(y, dtype, chunk * kLabelChunk, std::min(n, (chunk + 1) * kLabelChunk), C,
                                        ignore_index, hist.data() + chunk * (C + 1));
  });
  FocalStats out;
  for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t k = hist[chunk * (C + 1) + c];
      out.count += k;
      // Absent classes add nothing: 0 * a NaN or infinite weight would make the sum NaN, where the
      // per-pixel sums (the kernels without the pre-pass, the reference) never read that weight.
      if (k != 0) out.weight_sum += static_cast<double>(k) * (w ? w[c] : 1.0);
    }
    if (bad[chunk] && !out.bad) {  // error path: find the first offending label for the message
      for (int64_t i = chunk * kLabelChunk; i < std::min(n, (chunk + 1) * kLabelChunk); ++i) {
        const int64_t t = static_cast<int64_t>(y[i]);
        if (t != ignore_index && (t < 0 || t >= C)) {
          out.bad = true;
          out.bad_label = t;
          break;
        }
      }
    }
  }
  return out;
}

void check_labels(const FocalStats& st, int64_t C, int64_t ignore_index) {
  MARSOPS_CHECK(!st.bad, "marsops.focal_loss: target contains label ", st.bad_label, ", outside [0, ", C,
                ") and not ignore_index (", ignore_index, ")");
}

double denominator(const FocalStats& st, int64_t reduction) {
  if (reduction == kMean) return static_cast<double>(st.count);
  if (reduction == kWeightedMean) return st.weight_sum;
  return 1.0;
}

std::tuple<Tensor, Tensor, Tensor> focal_loss_forward_cpu(const Tensor& logits_in, const Tensor& target_in,
                                                          const std::optional<Tensor>& weight, double gamma,
                                                          int64_t ignore_index, int64_t reduction, bool compute_grad,
                                                          bool count_confusion, double label_smoothing) {
  const auto s = focal_shapes(logits_in, target_in, weight, gamma, reduction, label_smoothing);
  // The SIMD kernel keeps class indices in float lanes: exact up to 2^24.
  MARSOPS_CHECK(s.C <= (int64_t{1} << 24), "marsops.focal_loss: the CPU kernel supports up to 2^24 classes, got ",
                s.C, "; use backend='reference'");
  const ScalarType dtype = logits_in.scalar_type();
  const ScalarType compute = dtype == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  FocalArgs a{};
  a.logits = s.logits.const_data_ptr();
  a.logits_dtype = dtype;
  a.class_last = s.class_last;
  a.target = s.target.const_data_ptr();
  a.target_dtype = s.target.scalar_type();
  a.N = s.N;
  a.C = s.C;
  a.P = s.P;
  a.gamma = gamma;
  a.label_smoothing = label_smoothing;
  a.ignore_index = ignore_index;
  a.grad_scale = 1.0;
  Tensor w_compute, w_double;  // kept alive while the kernels read them
  if (weight.has_value()) {
    w_compute = st::contiguous(st::to(*weight, compute));
    a.weight = w_compute.const_data_ptr();
  }
  const bool mean = reduction == kMean || reduction == kWeightedMean;
  FocalStats pre;
  if (compute_grad && mean) {
    // The gradient is written in the main pass, so its 1/denominator must be known before it.
    if (weight.has_value()) w_double = st::contiguous(st::to(*weight, ScalarType::Double));
    dispatch_integral(a.target_dtype, "marsops.focal_loss", [&](auto tag) {
      using tgt_t = decltype(tag);
      pre = target_stats(static_cast<const tgt_t*>(a.target), a.target_dtype, s.N * s.P,
                         w_double.defined() ? w_double.const_data_ptr<double>() : nullptr, s.C, ignore_index);
    });
    check_labels(pre, s.C, ignore_index);
    const double d = denominator(pre, reduction);
    a.grad_scale = d != 0 ? 1.0 / d : 0.0;  // nothing counted: zero loss, zero gradient
    a.labels_checked = true;  // the main pass need not count or validate the labels again
  }
  Tensor loss = empty_loss(logits_in, target_in, reduction);
  Tensor grad = compute_grad ? empty_gradient(logits_in, s.class_last, pooled_empty) : empty_on(logits_in, {0}, dtype);
  if (reduction == kNone) a.loss_none = loss.mutable_data_ptr();
  if (compute_grad) a.grad = grad.mutable_data_ptr();

  Tensor confusion = empty_on(logits_in, count_confusion ? std::vector<int64_t>{s.C, s.C} : std::vector<int64_t>{0},
                              ScalarType::Long);
  if (count_confusion) st::zero_(confusion);

  const int64_t total = s.N * s.P;
  const int64_t num_chunks = (total + kChunk - 1) / kChunk;
  std::vector<FocalStats> parts(num_chunks);
  const auto& kernels = simd_kernels();
  std::mutex mutex;
  parallel_chunks(num_chunks, [&](auto next) {
    std::vector<int64_t> hist(count_confusion ? s.C * s.C : 0, 0);  // private counts, merged below
    for (int64_t chunk = next(); chunk < num_chunks; chunk = next()) {
      parts[chunk] = kernels.focal(a, chunk * kChunk, std::min(total, (chunk + 1) * kChunk),
                                   count_confusion ? hist.data() : nullptr);
    }
    if (count_confusion) {
      std::lock_guard<std::mutex> lock(mutex);
      int64_t* counts = confusion.mutable_data_ptr<int64_t>();
      for (int64_t j = 0; j < s.C * s.C; ++j) counts[j] += hist[j];
    }
  });
  FocalStats stats;
  for (const auto& part : parts) stats.merge(part);
  if (a.labels_checked) {  // the kernel skipped them: the pre-pass has them
    stats.count = pre.count;
    stats.weight_sum = pre.weight_sum;
  }
  check_labels(stats, s.C, ignore_index);
  if (reduction != kNone) {
    const double d = denominator(stats, reduction);
    st::fill_(loss, within_range(reduction == kSum ? stats.loss_sum : (d != 0 ? stats.loss_sum / d : 0.0), dtype));
  }
  return {loss, grad, confusion};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(marsops, CPU, m) { m.impl("focal_loss_forward", TORCH_BOX(&focal_loss_forward_cpu)); }

}  // namespace marsops::cpu
