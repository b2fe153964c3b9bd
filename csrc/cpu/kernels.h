// Interface between the CPU ops (*_cpu.cpp) and their per-capability SIMD kernels (simd_*.cpp).
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

struct ConfusionArgs {
  at::Tensor input;   // logits (N, C, P) floating (argmax fused), or predicted labels (N, P) integer
  at::Tensor target;  // (N, P) integer
  int64_t num_classes;
  bool has_ignore;
  int64_t ignore_index;
};

struct ConfusionResult {
  std::vector<int64_t> counts;  // (C * C), row = true class, column = predicted class
  bool bad_target = false, bad_pred = false;
  int64_t bad_value = 0;
};

// The kernels of one CPU capability.
struct SimdKernels {
  FocalStats (*focal_forward)(const FocalArgs&);
  ConfusionResult (*confusion)(const ConfusionArgs&);
};

// One set per capability (csrc/cpu/simd_*.cpp).
extern const SimdKernels simd_default, simd_avx2, simd_avx512;

// The set for this CPU (honours ATEN_CPU_CAPABILITY), chosen once.
const SimdKernels& simd_kernels();

}  // namespace marsops::cpu
