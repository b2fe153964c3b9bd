// Interface between the CPU focal-loss op (focal_cpu.cpp) and its per-capability SIMD kernels.
#pragma once
#include <ATen/core/Tensor.h>

namespace marsops::cpu {

struct FocalArgs {
  at::Tensor logits;     // (N, C, P) contiguous
  at::Tensor target;     // (N, P) contiguous, any integer dtype
  at::Tensor weight;     // (C,) in the compute dtype, or undefined for all ones
  double gamma;
  int64_t ignore_index;
  double grad_scale;     // folded into the gradient (1 / denominator of the mean reductions)
  at::Tensor loss_none;  // (N, P) per-pixel loss, or undefined when reduced
  at::Tensor grad;       // (N, C, P) dloss/dlogits, or undefined when not needed
};

struct FocalStats {
  double loss_sum = 0;    // sum of per-pixel losses
  double weight_sum = 0;  // sum of w[y] over non-ignored pixels
  int64_t count = 0;      // number of non-ignored pixels
  bool bad = false;       // a label outside [0, C) that is not ignore_index was seen
  int64_t bad_label = 0;
  void merge(const FocalStats& o) {
    loss_sum += o.loss_sum;
    weight_sum += o.weight_sum;
    count += o.count;
    if (o.bad && !bad) { bad = true; bad_label = o.bad_label; }
  }
};

// One per CPU capability (csrc/cpu/focal_kernel_*.cpp); chosen at run time.
FocalStats focal_forward_default(const FocalArgs& a);
FocalStats focal_forward_avx2(const FocalArgs& a);
FocalStats focal_forward_avx512(const FocalArgs& a);

}  // namespace marsops::cpu
