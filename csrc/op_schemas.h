// Every marsops op schema, declared once: marsops._C registers them (csrc/ops.cpp), and so does the
// test-only emulated-CUDA library (tests/cuda_emulation), under its own namespace.
#pragma once

namespace marsops {

template <typename Library>
void define_ops(Library& m) {
  // reduction: 0 none, 1 sum, 2 mean, 3 weighted_mean. Returns (loss, grad, confusion): grad is
  // dloss/dlogits (already divided by the mean's denominator) when compute_grad, else an empty
  // (0,) tensor; confusion is the int64 (C, C) count of (label, argmax) pairs of the non-ignored
  // pixels, by confusion_matrix's rules, when count_confusion, else an empty (0,) tensor.
  // label_smoothing eps: the per-pixel loss is (1 - eps) of the label's term + eps / C of every
  // class's (F.cross_entropy's weighting), the reductions' denominators unchanged.
  m.def("focal_loss_forward(Tensor logits, Tensor target, Tensor? weight, float gamma, int ignore_index, "
        "int reduction, bool compute_grad, bool count_confusion, float label_smoothing) -> (Tensor, Tensor, Tensor)");
  // input: logits (N, C, *) (argmax fused) or predicted labels (N, *); returns int64 (C, C) counts,
  // rows = true class, columns = predicted class; pixels whose target is ignore_index are skipped.
  m.def("confusion_matrix(Tensor input, Tensor target, int num_classes, int? ignore_index) -> Tensor");
  // The flip ops take views (csrc/views.h): codes with bit 0 reversing W, bit 1 H, bit 2 D (volume:
  // x is (N, *, D, H, W)), bit 3 transposing H and W (square). flip4 is views [0, 1, 2, 3].
  // x (N, *) -> (K*N, *): block k holds every sample under view k.
  m.def("flip_views(Tensor x, int[] views, bool volume) -> Tensor");
  // The adjoint: y (K*N, *) -> scale * (sum of the K blocks, each mapped back by its view).
  m.def("flip_views_sum(Tensor y, int[] views, bool volume, float scale) -> Tensor");
  // Per-sample views: flags (N,) uint8 view codes (bits a sample cannot use are ignored).
  m.def("flip_by_flags(Tensor x, Tensor flags, bool volume) -> Tensor");
  // Test-time augmentation, evaluated: from model outputs (K*N, C, [D,] H, W) of a flip_views
  // batch, read in place, undo each view, average the K views (their softmax when `softmax`, else
  // the logits) and take the argmax, never building the merged (N, C, ...) tensor. Returns (pred,
  // confusion): pred (N, [D,] H, W) int64 when want_pred, else empty; confusion the int64 (C, C)
  // counts against target (N, [D,] H, W) when given, else empty.
  m.def("views_argmax(Tensor outputs, Tensor? target, int? ignore_index, bool softmax, bool want_pred, "
        "int[] views, bool volume) -> (Tensor, Tensor)");
  // The region losses in two passes (csrc/cpu/region_kernel.h; the loss itself: marsops/losses.py).
  // Pass 1: float64 stats (groups, C, 3) = [intersection, prediction mass, target count] of each
  // class over the non-ignored pixels (groups: the images when per_image, else 1), and float64
  // (3,) = [loss sum, count, weight sum] of the focal term when `focal`.
  m.def("region_stats(Tensor logits, Tensor target, int ignore_index, bool per_image, bool focal, "
        "Tensor? focal_weight, float gamma, float label_smoothing) -> (Tensor, Tensor)");
  // Pass 2: the gradient, from dL/dI (coef_i) and dL/dS (coef_s) of each (group, class), in the
  // logits' compute type, plus focal_scale times the focal term's gradient.
  m.def("region_grad(Tensor logits, Tensor target, int ignore_index, bool per_image, Tensor coef_i, Tensor coef_s, "
        "bool focal, Tensor? focal_weight, float gamma, float label_smoothing, float focal_scale) -> Tensor");
  // The region sums against dense targets (csrc/cpu/dense_region_kernel.h; marsops/dense_region.py):
  // x (N, C, P) contiguous, or (N, P, C) when class_last; activation 0 identity (probabilities in
  // [0, 1]), 1 sigmoid, 2 softmax over C; target of x's shape (float soft labels in [0, 1], integer
  // 0 / 1 / ignore_index) or, with target_is_map, an (N, P) class map. Pass 1: float64 (groups, C, 3)
  // = [sum q t, sum q, sum t] over the valid elements. Pass 2: from coef = dL/d(I, S, T) (groups,
  // C, 3) in the compute type, (dL/dx in x's dtype, dL/dtarget in the compute type or empty).
  m.def("dense_region_stats(Tensor x, Tensor target, int activation, bool class_last, bool target_is_map, "
        "bool has_ignore, int ignore_index, bool per_image) -> Tensor");
  m.def("dense_region_grad(Tensor x, Tensor target, int activation, bool class_last, bool target_is_map, "
        "bool has_ignore, int ignore_index, bool per_image, Tensor coef, bool want_target_grad) -> (Tensor, Tensor)");
  // The sigmoid focal loss (binary / multi-label masks; csrc/cpu/sigmoid_kernel.h): target of the
  // logits' shape, floating (soft labels in [0, 1]) or integer / bool (0, 1, ignore_index);
  // pos_weight one value or (C,) along dim 1; alpha < 0: none; reduction 0 none, 1 sum, 2 mean
  // (over the counted elements). Returns (loss, d(loss)/d(logits) or an empty tensor).
  m.def("sigmoid_focal_loss_forward(Tensor logits, Tensor target, Tensor? pos_weight, float alpha, float gamma, "
        "int? ignore_index, int reduction, bool compute_grad) -> (Tensor, Tensor)");
  // Online hard example mining (marsops/ohem.py), in log space: with lp each non-ignored pixel's
  // log softmax probability of its label and s those values ascending, log tau = max(log thresh,
  // s[min(min_kept, n - 1)]) and the pixels kept are those with lp < log tau (or NaN). Returns
  // (labels, stats): int32 labels of the target's shape, -1 where not kept; float64 (3,) =
  // [log tau, kept pixels, non-ignored pixels].
  m.def("ohem_select(Tensor logits, Tensor target, int ignore_index, float thresh, int min_kept) -> (Tensor, Tensor)");
  // The Lovász-Softmax loss (csrc/cpu/lovasz_cpu.cpp; semantics: marsops/lovasz.py): the classes scored
  // (each group's present ones among them when only_present), groups = the images when per_image,
  // else the batch. Returns (loss in the logits' dtype, d(loss)/d(logits) or an empty tensor).
  m.def("lovasz_softmax_forward(Tensor logits, Tensor target, int[] classes, bool only_present, bool per_image, "
        "int ignore_index, bool compute_grad) -> (Tensor, Tensor)");
  // Releases the CPU kernels' cache of large output buffers (see csrc/cpu/buffer_pool.h).
  m.def("empty_cache() -> ()");
}

}  // namespace marsops
