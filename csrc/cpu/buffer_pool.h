// A small pool of large CPU output buffers.
//
// A fresh multi-MB allocation is fresh pages from the kernel (glibc maps anything over 32 MB
// anew every time), and faulting those in costs more than the kernels themselves: ~10 ms for a
// 42 MB gradient on a 2-core machine, against 0.9 ms to overwrite memory already mapped. So
// large outputs come from here: a buffer is handed out again only once nothing but the pool
// holds its storage (the next training step, after the previous batch was freed). Callers get
// their own TensorImpl sharing the storage, so autograd can still take a gradient over as .grad.
#pragma once
#include <ATen/ATen.h>

namespace marsops::cpu {

// An uninitialised contiguous tensor; pooled when at least kPoolMinBytes.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// Drops the pool's references (buffers still in use stay alive with their users).
void empty_pool();

}  // namespace marsops::cpu
