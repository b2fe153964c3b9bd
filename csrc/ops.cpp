// Registers every marsops op schema (csrc/op_schemas.h). Device implementations live in csrc/cpu
// (this module, marsops._C) and csrc/cuda (marsops._C_cuda); fake kernels and autograd are
// registered from Python (marsops/focal.py, metrics.py, augment.py).
#include "op_schemas.h"
#include "stable.h"

#include <Python.h>

extern "C" {
// `from marsops import _C` loads this library, which registers the ops; no Python API of its own.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}

STABLE_TORCH_LIBRARY(marsops, m) { marsops::define_ops(m); }
