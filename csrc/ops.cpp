// Every marsops op schema, declared once. Device implementations live in csrc/cpu (this module,
// marsops._C) and csrc/cuda (marsops._C_cuda); fake kernels and autograd are registered from
// Python (marsops/focal.py, metrics.py, augment.py).
#include "stable.h"

#include <Python.h>

extern "C" {
// `from marsops import _C` loads this library, which registers the ops; no Python API of its own.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}

STABLE_TORCH_LIBRARY(marsops, m) {
  // reduction: 0 none, 1 sum, 2 mean, 3 weighted_mean. Returns (loss, grad, confusion): grad is
  // dloss/dlogits (already divided by the mean's denominator) when compute_grad, else an empty
  // (0,) tensor; confusion is the int64 (C, C) count of (label, argmax) pairs of the non-ignored
  // pixels, by confusion_matrix's rules, when count_confusion, else an empty (0,) tensor.
  m.def("focal_loss_forward(Tensor logits, Tensor target, Tensor? weight, float gamma, int ignore_index, "
        "int reduction, bool compute_grad, bool count_confusion) -> (Tensor, Tensor, Tensor)");
  // input: logits (N, C, *) (argmax fused) or predicted labels (N, *); returns int64 (C, C) counts,
  // rows = true class, columns = predicted class; pixels whose target is ignore_index are skipped.
  m.def("confusion_matrix(Tensor input, Tensor target, int num_classes, int? ignore_index) -> Tensor");
  // x (N, *, H, W) -> (4N, *, H, W): [as is; left-right; up-down; both], each a block of N samples.
  m.def("flip4(Tensor x) -> Tensor");
  // The adjoint of flip4: y (4N, *, H, W) -> scale * (sum of the four blocks, each flipped back).
  m.def("flip4_sum(Tensor y, float scale) -> Tensor");
  // Per-sample flips: flags (N,) uint8, bit 0 = left-right, bit 1 = up-down.
  m.def("flip_by_flags(Tensor x, Tensor flags) -> Tensor");
  // Flip test-time augmentation, evaluated: from model outputs (4N, C, H, W) of a flip4 batch,
  // undo each flip, average the four views (their softmax when `softmax`, else the logits) and
  // take the argmax, never building the merged (N, C, H, W) tensor. Returns (pred, confusion):
  // pred (N, H, W) int64 when want_pred, else empty; confusion the int64 (C, C) counts against
  // target (N, H, W) when given, else empty.
  m.def("flip4_argmax(Tensor outputs, Tensor? target, int? ignore_index, bool softmax, bool want_pred) -> "
        "(Tensor, Tensor)");
  // Releases the CPU kernels' cache of large output buffers (see csrc/cpu/buffer_pool.h).
  m.def("empty_cache() -> ()");
}
