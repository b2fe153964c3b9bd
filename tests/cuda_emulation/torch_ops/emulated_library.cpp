// The test-only library `marsops_emulated_cuda`: the schemas of every marsops op, under another
// namespace, whose CPU kernels are the CUDA ops run on the SIMT emulation (emulated_*.cpp).
// tests/emulated_cuda.py builds it and routes marsops' own ops to it.
#include "../../../csrc/op_schemas.h"
#include "../../../csrc/stable.h"

STABLE_TORCH_LIBRARY(marsops_emulated_cuda, m) { marsops::define_ops(m); }
