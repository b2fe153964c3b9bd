// CPU implementation of the region sums against dense targets (dense_region_kernel.h;
// marsops/dense_region.py normalises the tensors to the 3-D layouts checked here): per-class
// sums, then the gradient of x (and of a soft target).
#include <algorithm>

#include "../stable.h"
#include "buffer_pool.h"
#include "group_sums.h"
#include "kernels.h"

namespace marsops::cpu {
namespace {

constexpr int64_t kChunk = 4096;
constexpr const char* kOp = "marsops.dense_region";

// The arguments of both passes, after checking the layouts the Python side promises.
DenseRegionArgs dense_args(const Tensor& x, const Tensor& target, int64_t activation, bool class_last,
                           bool target_is_map, bool has_ignore, int64_t ignore_index, bool per_image) {
  MARSOPS_CHECK(x.dim() == 3 && x.is_contiguous(), kOp, ": x must be a contiguous 3-D tensor, got ", shape_str(x));
  MARSOPS_CHECK(is_floating(x.scalar_type()), kOp, ": x must be floating point, got ", dtype_str(x.scalar_type()));
  MARSOPS_CHECK(activation >= kDenseIdentity && activation <= kDenseSoftmax, kOp, ": bad activation code ",
                activation);
  MARSOPS_CHECK(same_device(x, target), kOp, ": target is on ", device_str(target), " but x is on ", device_str(x));
  const ScalarType td = target.scalar_type();
  DenseRegionArgs a{};
  a.N = x.size(0);
  a.C = class_last ? x.size(2) : x.size(1);
  a.P = class_last ? x.size(1) : x.size(2);
  MARSOPS_CHECK(a.C >= 1, kOp, ": x must have at least one class, got ", shape_str(x));
  if (target_is_map) {
    MARSOPS_CHECK(is_integral(td), kOp, ": a class map target must be integer, got ", dtype_str(td));
    MARSOPS_CHECK(target.dim() == 2 && target.size(0) == a.N && target.size(1) == a.P && target.is_contiguous(), kOp,
                  ": a class map target must be contiguous (", a.N, ", ", a.P, "), got ", shape_str(target));
    MARSOPS_CHECK(a.C <= (int64_t{1} << 24), kOp, ": the CPU kernel supports up to 2^24 classes");
  } else {
    MARSOPS_CHECK(is_floating(td) || is_integral(td), kOp, ": target must be floating or integer, got ",
                  dtype_str(td));
    MARSOPS_CHECK(sizes_of(target) == sizes_of(x) && target.is_contiguous(), kOp,
                  ": a dense target must be contiguous and of x's shape ", shape_str(x), ", got ", shape_str(target));
  }
  a.x = x.const_data_ptr();
  a.x_dtype = x.scalar_type();
  a.class_last = class_last;
  a.target = target.const_data_ptr();
  a.target_dtype = td;
  a.target_is_map = target_is_map;
  a.activation = activation;
  a.has_ignore = has_ignore;
  a.ignore_index = ignore_index;
  a.per_image = per_image;
  return a;
}

ScalarType compute_type(const Tensor& x) {
  return x.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

Tensor dense_region_stats_cpu(const Tensor& x, const Tensor& target, int64_t activation, bool class_last,
                              bool target_is_map, bool has_ignore, int64_t ignore_index, bool per_image) {
  const DenseRegionArgs a = dense_args(x, target, activation, class_last, target_is_map, has_ignore, ignore_index,
                                       per_image);
  const auto& kernels = simd_kernels();
  DenseRegionFlags flags;
  Tensor stats = chunked_group_sums(x, a.N, a.C, a.P, 3, per_image, kChunk, flags,
                                    [&](int64_t begin, int64_t end, double* rows, int64_t first_group) {
                                      return kernels.dense_region_stats(a, begin, end, rows, first_group);
                                    });
  MARSOPS_CHECK(!flags.bad_target || !target_is_map, kOp, ": target contains label ",
                static_cast<int64_t>(flags.target_value), ", outside [0, ", a.C, ") and not ignore_index");
  MARSOPS_CHECK(!flags.bad_target || !is_integral(target.scalar_type()), kOp, ": target contains ",
                static_cast<int64_t>(flags.target_value), ", outside {0, 1} and not ignore_index");
  MARSOPS_CHECK(!flags.bad_target, kOp, ": target contains ", flags.target_value,
                ", outside [0, 1] (soft labels are probabilities)");
  MARSOPS_CHECK(!flags.bad_probability, kOp, ": with from_logits=False the input holds probabilities, but it "
                "contains ", flags.probability_value, ", outside [0, 1]");
  return stats;
}

std::tuple<Tensor, Tensor> dense_region_grad_cpu(const Tensor& x, const Tensor& target, int64_t activation,
                                                 bool class_last, bool target_is_map, bool has_ignore,
                                                 int64_t ignore_index, bool per_image, const Tensor& coef,
                                                 bool want_target_grad) {
  DenseRegionArgs a = dense_args(x, target, activation, class_last, target_is_map, has_ignore, ignore_index,
                                 per_image);
  const ScalarType compute = compute_type(x);
  const int64_t groups = per_image ? a.N : 1;
  MARSOPS_CHECK(coef.dim() == 3 && coef.size(0) == groups && coef.size(1) == a.C && coef.size(2) == 3 &&
                    coef.scalar_type() == compute,
                kOp, ": coef must be (", groups, ", ", a.C, ", 3) of ", dtype_str(compute), ", got ", shape_str(coef),
                " of ", dtype_str(coef.scalar_type()));
  MARSOPS_CHECK(!want_target_grad || (!target_is_map && is_floating(target.scalar_type())), kOp,
                ": only a floating dense target has a gradient");
  const Tensor c = st::contiguous(coef);
  a.coef = c.const_data_ptr();
  Tensor grad_x = pooled_empty(sizes_of(x), x.scalar_type());
  a.grad_x = grad_x.mutable_data_ptr();
  Tensor grad_t = want_target_grad ? pooled_empty(sizes_of(target), compute) : empty_on(x, {0}, compute);
  a.grad_t = want_target_grad ? grad_t.mutable_data_ptr() : nullptr;
  const int64_t total = a.N * a.P;
  const auto& kernels = simd_kernels();
  // Chunk by chunk whatever the thread split: the SIMD blocks start at the same pixels every time.
  st::parallel_for(0, (total + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t k = c0; k < c1; ++k) kernels.dense_region_grad(a, k * kChunk, std::min(total, (k + 1) * kChunk));
  });
  return {grad_x, grad_t};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(marsops, CPU, m) {
  m.impl("dense_region_stats", TORCH_BOX(&dense_region_stats_cpu));
  m.impl("dense_region_grad", TORCH_BOX(&dense_region_grad_cpu));
}

}  // namespace marsops::cpu
