// The real CUDA op tta_cuda.cu, host code and kernels, built by the host compiler over the SIMT
// emulation; it registers for CPU tensors in the test-only marsops_emulated_cuda library.
#include "simt.h"  // first: the kernels see the emulated CUDA built-ins
#include "../../../csrc/cuda/tta_cuda.cu"
