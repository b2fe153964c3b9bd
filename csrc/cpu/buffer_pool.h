// A cache of large CPU output buffers.
//
// A fresh multi-MB allocation is fresh pages from the kernel (glibc maps anything over 32 MB
// anew every time), and faulting those in costs more than the kernels themselves: ~10 ms for a
// 42 MB gradient on a 2-core machine, against 0.9 ms to overwrite memory already mapped. So
// large outputs are tensors over memory this cache holds (allocated by torch, so its accounting
// sees it): when torch frees such a tensor, a deleter brings the memory back here, and the next
// output of that size reuses it, faulted in already. That needs torch_from_blob with a deleter
// (torch >= 2.11 at run time) and headers that can call it only where it exists (a build against
// torch >= 2.14); otherwise outputs are plain tensors.
#pragma once
#include "../stable.h"

namespace marsops::cpu {

// An uninitialised contiguous CPU tensor; cached memory when at least 1 MB.
Tensor pooled_empty(const std::vector<int64_t>& sizes, ScalarType dtype);

// Frees the cached memory (buffers still in use are unaffected).
void empty_pool();

}  // namespace marsops::cpu
