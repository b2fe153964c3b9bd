// Interface between the CPU ops (*_cpu.cpp, stable ABI) and their per-capability SIMD kernels
// (simd_*.cpp, ATen vector headers). Only raw pointers and plain structs cross it, so the SIMD
// translation units need no libtorch symbol and the ops need no unstable header.
#pragma once
#include <torch/headeronly/core/ScalarType.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../tta_common.h"

namespace marsops::cpu {

using torch::headeronly::ScalarType;

struct FocalArgs {
  const void* logits;        // (N, C, P) contiguous, or (N, P, C) contiguous when class_last; float dtypes
  ScalarType logits_dtype;
  bool class_last;           // channels_last logits, read in place; the gradient is written the same way
  const void* target;        // (N, P) contiguous, any integer dtype
  ScalarType target_dtype;
  const void* weight;        // (C,) in the compute type (double for float64 logits, else float), or nullptr
  int64_t N, C, P;
  double gamma;
  double label_smoothing;    // eps: (1 - eps) of the label's term + eps / C of every class's
  int64_t ignore_index;
  double grad_scale;         // folded into the gradient (1 / denominator of the mean reductions)
  void* loss_none;           // (N, P) per-pixel loss in logits_dtype, or nullptr when reduced
  void* grad;                // dloss/dlogits in logits_dtype and layout, or nullptr
  // The labels were counted and validated before (the mean reductions with a gradient): the kernel
  // neither counts them nor looks for bad ones (FocalStats' count, weight_sum and bad stay 0).
  bool labels_checked = false;
};

// A reduced loss as fill_ takes it for an output of `dtype`: +-inf beyond the dtype's range (a
// sum of finite losses may pass it; fill_ refuses to convert such a double), else the value.
inline double within_range(double v, ScalarType dtype) {
  double max = 0;
  switch (dtype) {
    case ScalarType::Float: max = 3.4028234663852886e38; break;
    case ScalarType::Half: max = 65504.0; break;
    case ScalarType::BFloat16: max = 3.3895313892515355e38; break;
    default: return v;
  }
  return v > max ? HUGE_VAL : v < -max ? -HUGE_VAL : v;
}

// The first label outside [0, C) that is not ignore_index, of a range of pixels; merged in
// pixel order, so the one named is the first of the whole call.
struct FirstBadLabel {
  bool bad = false;
  int64_t bad_label = 0;
  void merge_bad(const FirstBadLabel& o) {
    if (o.bad && !bad) {
      bad = true;
      bad_label = o.bad_label;
    }
  }
};

struct FocalStats : FirstBadLabel {
  double loss_sum = 0;    // sum of per-pixel losses
  double weight_sum = 0;  // sum of w[y] over non-ignored pixels
  int64_t count = 0;      // number of non-ignored pixels
  void merge(const FocalStats& o) {
    loss_sum += o.loss_sum;
    weight_sum += o.weight_sum;
    count += o.count;
    merge_bad(o);
  }
};

struct ConfusionArgs {
  const void* input;  // logits (N, C, P) or class_last (N, P, C), floating (argmax fused); or labels (N, P)
  ScalarType input_dtype;
  bool from_logits;
  bool class_last;
  const void* target;  // (N, P) integer
  ScalarType target_dtype;
  int64_t N, C, P;
  bool has_ignore;
  int64_t ignore_index;
};

struct ConfusionFlags {
  bool bad_target = false, bad_pred = false;
  int64_t bad_value = 0;
  void merge(const ConfusionFlags& o) {
    if ((o.bad_target || o.bad_pred) && !(bad_target || bad_pred)) *this = o;
  }
};

// The region losses (Dice, Jaccard, Tversky) and their sums with a focal / cross-entropy term, in
// two passes over the logits: per-class sums, then the gradient.
struct RegionArgs {
  const void* logits;  // (N, C, P) contiguous, or (N, P, C) when class_last
  ScalarType logits_dtype;
  bool class_last;
  const void* target;  // (N, P) contiguous
  ScalarType target_dtype;
  int64_t N, C, P;
  int64_t ignore_index;
  bool per_image;            // sums per image (groups = N), else over the batch (groups = 1)
  bool focal;                // with a focal / cross-entropy term
  const void* focal_weight;  // (C,) compute type, or nullptr
  double gamma, label_smoothing;
  // The gradient pass: dL/dI and dL/dS of each (group, class), compute type; the focal term's
  // scale (its lambda / its reduction's denominator).
  const void* coef_i;
  const void* coef_s;
  double focal_scale;
  void* grad;  // in the logits' dtype and layout
};

// The region losses against dense targets (dense_region_kernel.h): x (N, C, P) contiguous, or
// (N, P, C) when class_last; the target of the same shape and layout (floating: soft labels in
// [0, 1]; integer: 0 / 1 masks, or ignore_index), or a class map (N, P) of labels in [0, C).
enum DenseActivation : int64_t { kDenseIdentity = 0, kDenseSigmoid = 1, kDenseSoftmax = 2 };

struct DenseRegionArgs {
  const void* x;
  ScalarType x_dtype;
  bool class_last;
  const void* target;
  ScalarType target_dtype;
  bool target_is_map;
  int64_t N, C, P;
  int64_t activation;  // DenseActivation
  bool has_ignore;
  int64_t ignore_index;
  bool per_image;   // sums per image (groups = N), else over the batch (groups = 1)
  const void* coef;  // the gradient pass: (groups, C, 3) dL/d(I, S, T) in the compute type
  void* grad_x;      // in x's dtype and layout
  void* grad_t;      // in the compute type and the target's layout, or nullptr
};

// The first bad target value and the first probability outside [0, 1] a pass met.
struct DenseRegionFlags {
  bool bad_target = false, bad_probability = false;
  double target_value = 0, probability_value = 0;
  void target(double v) {
    if (!bad_target) bad_target = true, target_value = v;
  }
  void probability(double v) {
    if (!bad_probability) bad_probability = true, probability_value = v;
  }
  void merge(const DenseRegionFlags& o) {
    if (o.bad_target) target(o.target_value);
    if (o.bad_probability) probability(o.probability_value);
  }
};

// The sigmoid focal loss, elementwise: logits and target viewed as (planes, P) contiguous, plane k
// of class k % C (for pos_weight; C = 1 without a per-class pos_weight).
struct SigmoidArgs {
  const void* logits;
  ScalarType logits_dtype;
  const void* target;  // the logits' shape: floating (soft labels in [0, 1]) or integer (0 / 1 / ignore_index)
  ScalarType target_dtype;
  int64_t C, P;
  const void* pos_weight;  // (C,) in the compute type, or nullptr (all 1)
  double alpha;            // < 0: no alpha weighting
  double gamma;
  bool has_ignore;
  int64_t ignore_index;
  double grad_scale;  // folded into the gradient (1 / count for the mean)
  void* loss_none;    // per-element loss in logits_dtype, or nullptr when reduced
  void* grad;         // in logits_dtype, or nullptr
};

// The OHEM selection's first pass (ohem_kernel.h): each non-ignored pixel's log-probability of its
// label, lp = log p_t (in log space: a p_t that underflows to 0 would tie pixels the rule tells
// apart), and its label; a histogram of lp for the selection.
struct OhemArgs {
  const void* logits;  // (N, C, P) contiguous, or (N, P, C) when class_last
  ScalarType logits_dtype;
  bool class_last;
  const void* target;  // (N, P) contiguous
  ScalarType target_dtype;
  int64_t N, C, P;
  int64_t ignore_index;
  double log_thresh;  // log(thresh): -inf for thresh 0
  void* lp;           // (N, P) compute type (double for float64 logits, else float); any value where ignored
  int32_t* label;     // (N, P): the label, or -1 where ignored
};

// An unsigned integer that orders as the float does (negative ones reversed), NaN last: a float
// is counted and selected by its key.
inline uint32_t ordered_key(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return (b >> 31) ? ~b : (b | 0x80000000u);
}
inline uint64_t ordered_key(double v) {
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return (b >> 63) ? ~b : (b | 0x8000000000000000ull);
}
template <typename key_t>
inline auto from_ordered_key(key_t k) {
  using float_t = std::conditional_t<sizeof(key_t) == 4, float, double>;
  constexpr key_t top = key_t{1} << (8 * sizeof(key_t) - 1);
  const key_t b = (k & top) ? (k ^ top) : ~k;
  float_t v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// The histogram's bins: the top 12 bits of the key (sign, exponent, leading mantissa bits).
constexpr int64_t kOhemBins = 4096;
template <typename acc_t>
inline int64_t ohem_bin(acc_t v) {
  return static_cast<int64_t>(ordered_key(v) >> (8 * sizeof(acc_t) - 12));
}

struct OhemCounts : FirstBadLabel {
  int64_t valid = 0;  // non-ignored pixels
  int64_t below = 0;  // ... whose lp < log_thresh
  void merge(const OhemCounts& o) {
    valid += o.valid;
    below += o.below;
    merge_bad(o);
  }
};

// The Lovász-Softmax loss' elementwise passes (its sorts run in lovasz_cpu.cpp). Buffers are
// class-major over the flattened (N, P) pixels: probs[c * N * P + n * P + p].
struct LovaszArgs {
  const void* logits;  // (N, C, P) contiguous, or (N, P, C) when class_last
  ScalarType logits_dtype;
  bool class_last;
  const void* target;  // (N, P) contiguous
  ScalarType target_dtype;
  int64_t N, C, P;
  int64_t ignore_index;
  void* probs;          // (C, N * P) in the compute type: the softmax (pass 1 writes it)
  int32_t* labels;      // (N * P): each pixel's label, -1 when ignored (pass 1 writes it)
  const void* dprobs;   // (C, N * P) in the compute type: d(loss)/d(probs) (the gradient pass)
  void* grad;           // in the logits' saved-gradient dtype and layout
};

// The kernels of one CPU capability. Each processes the pixels [begin, end) of the flattened
// (N, P) index; the ops split the work and run the pieces in parallel.
struct SimdKernels {
  const char* name;
  // With hist (C * C int64, or nullptr) it also counts (true class, argmax) pairs of the
  // non-ignored pixels: the confusion matrix in the same pass, by confusion's argmax rules.
  FocalStats (*focal)(const FocalArgs&, int64_t begin, int64_t end, int64_t* hist);
  // Adds counts to hist (C * C, row = true class, column = predicted class).
  void (*confusion)(const ConfusionArgs&, int64_t begin, int64_t end, int64_t* hist, ConfusionFlags& flags);
  // Adds [intersection, prediction mass, target count] of every class to stats ((groups, C, 3)
  // doubles, row 0 = group first_group); returns the focal term's sums (and any bad label).
  FocalStats (*region_stats)(const RegionArgs&, int64_t begin, int64_t end, double* stats, int64_t first_group);
  void (*region_grad)(const RegionArgs&, int64_t begin, int64_t end);
  // Elements [begin, end) of the flattened (planes, P) index: loss sum and count of the counted
  // elements (and the first bad target: bad_label, or for float targets bad with label 0).
  FocalStats (*sigmoid_focal)(const SigmoidArgs&, int64_t begin, int64_t end);
  // Region sums against dense targets: adds [I, S, T] of every class to stats as region_stats.
  DenseRegionFlags (*dense_region_stats)(const DenseRegionArgs&, int64_t begin, int64_t end, double* stats,
                                         int64_t first_group);
  void (*dense_region_grad)(const DenseRegionArgs&, int64_t begin, int64_t end);
  // Pixels [begin, end): writes lp and the labels (OhemArgs), adds to hist (kOhemBins int64).
  OhemCounts (*ohem_probs)(const OhemArgs&, int64_t begin, int64_t end, int64_t* hist);
  // The views_argmax predictions of output row `row` ((n, d, h) flattened) into pred[0 .. W).
  void (*views_argmax_row)(const void* outputs, ScalarType dtype, const ViewsGeometry& g, bool softmax, int64_t row,
                           int64_t* pred);
  // Lovász-Softmax: the softmax and labels of pixels [begin, end) (returns any bad label), and
  // their gradient dL/dx_j = p_j (dL/dp_j - sum_c p_c dL/dp_c), 0 for ignored pixels.
  FocalStats (*lovasz_probs)(const LovaszArgs&, int64_t begin, int64_t end);
  void (*lovasz_grad)(const LovaszArgs&, int64_t begin, int64_t end);
  // Adds the per-class counts of labels[begin, end) (an integer dtype) to counts (C + 1; slot C:
  // ignored or bad); returns whether a label was neither ignore_index nor in [0, C).
  bool (*label_counts)(const void* labels, ScalarType dtype, int64_t begin, int64_t end, int64_t C,
                       int64_t ignore_index, int64_t* counts);
};

// One set per capability (csrc/cpu/simd_*.cpp; the AVX ones on x86 only).
extern const SimdKernels simd_default, simd_avx2, simd_avx512;

// The set for this CPU (honours ATEN_CPU_CAPABILITY as torch does), chosen once.
const SimdKernels& simd_kernels();

}  // namespace marsops::cpu
