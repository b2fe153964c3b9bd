// `from marsops import _C_cuda` loads this library, which registers the CUDA kernels of the ops
// declared in marsops._C (csrc/ops.cpp); no Python API of its own.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C_cuda(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}
