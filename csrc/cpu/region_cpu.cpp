// CPU implementations of the region-loss passes (region_kernel.h): per-class sums (in parallel,
// deterministic: group_sums.h), then the gradient.
#include <algorithm>

#include "../region_common.h"
#include "buffer_pool.h"
#include "group_sums.h"
#include "kernels.h"

namespace marsops::cpu {
namespace {

constexpr int64_t kChunk = 4096;

RegionArgs region_args(const FocalShapes& s, const Tensor& logits, int64_t ignore_index, bool per_image, bool focal,
                       const Tensor& focal_weight, double gamma, double label_smoothing) {
  RegionArgs a{};
  a.logits = s.logits.const_data_ptr();
  a.logits_dtype = logits.scalar_type();
  a.class_last = s.class_last;
  a.target = s.target.const_data_ptr();
  a.target_dtype = s.target.scalar_type();
  a.N = s.N;
  a.C = s.C;
  a.P = s.P;
  a.ignore_index = ignore_index;
  a.per_image = per_image;
  a.focal = focal;
  a.focal_weight = focal_weight.defined() ? focal_weight.const_data_ptr() : nullptr;
  a.gamma = gamma;
  a.label_smoothing = label_smoothing;
  return a;
}

ScalarType compute_type(const Tensor& logits) {
  return logits.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

Tensor weight_in(const std::optional<Tensor>& w, ScalarType compute) {
  return w.has_value() ? st::contiguous(st::to(*w, compute)) : Tensor();
}

std::tuple<Tensor, Tensor> region_stats_cpu(const Tensor& logits, const Tensor& target, int64_t ignore_index,
                                            bool per_image, bool focal, const std::optional<Tensor>& focal_weight,
                                            double gamma, double label_smoothing) {
  const auto s = region_shapes(logits, target, focal_weight, gamma, label_smoothing);
  MARSOPS_CHECK(s.C <= (int64_t{1} << 24), "marsops.region_loss: the CPU kernel supports up to 2^24 classes");
  const Tensor fw = weight_in(focal_weight, compute_type(logits));
  const RegionArgs a = region_args(s, logits, ignore_index, per_image, focal, fw, gamma, label_smoothing);
  const auto& kernels = simd_kernels();
  FocalStats fs;
  Tensor stats = chunked_group_sums(logits, s.N, s.C, s.P, 3, per_image, kChunk, fs,
                                    [&](int64_t begin, int64_t end, double* rows, int64_t first_group) {
                                      return kernels.region_stats(a, begin, end, rows, first_group);
                                    });
  MARSOPS_CHECK(!fs.bad, "marsops.region_loss: target contains label ", fs.bad_label, ", outside [0, ", s.C,
                ") and not ignore_index (", ignore_index, ")");
  Tensor focal_stats = empty_on(logits, {3}, ScalarType::Double);
  double* f = focal_stats.mutable_data_ptr<double>();
  f[0] = fs.loss_sum;
  f[1] = static_cast<double>(fs.count);
  f[2] = fs.weight_sum;
  return {stats, focal_stats};
}

Tensor region_grad_cpu(const Tensor& logits, const Tensor& target, int64_t ignore_index, bool per_image,
                       const Tensor& coef_i, const Tensor& coef_s, bool focal, const std::optional<Tensor>& focal_weight,
                       double gamma, double label_smoothing, double focal_scale) {
  const auto s = region_shapes(logits, target, focal_weight, gamma, label_smoothing);
  const ScalarType compute = compute_type(logits);
  const int64_t groups = per_image ? s.N : 1;
  check_coefficients(coef_i, groups, s.C, compute, "coef_i");
  check_coefficients(coef_s, groups, s.C, compute, "coef_s");
  const Tensor fw = weight_in(focal_weight, compute);
  const Tensor ci = st::contiguous(coef_i), cs = st::contiguous(coef_s);
  RegionArgs a = region_args(s, logits, ignore_index, per_image, focal, fw, gamma, label_smoothing);
  a.coef_i = ci.const_data_ptr();
  a.coef_s = cs.const_data_ptr();
  a.focal_scale = focal_scale;
  Tensor grad = empty_gradient(logits, s.class_last, pooled_empty);
  a.grad = grad.mutable_data_ptr();
  const int64_t total = s.N * s.P;
  const auto& kernels = simd_kernels();
  // Chunk by chunk, whatever the thread split: the SIMD blocks start at the same pixels every time,
  // so the gradient is bitwise the same for any thread count.
  st::parallel_for(0, (total + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) kernels.region_grad(a, c * kChunk, std::min(total, (c + 1) * kChunk));
  });
  return grad;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(marsops, CPU, m) {
  m.impl("region_stats", TORCH_BOX(&region_stats_cpu));
  m.impl("region_grad", TORCH_BOX(&region_grad_cpu));
}

}  // namespace marsops::cpu
