// What the CUDA kernel headers (*_kernels.cuh) share on the device side. Torch-free, so the same
// kernels compile two ways: with nvcc into marsops._C_cuda, and with the host compiler over the
// SIMT emulation (tests/cuda_emulation/simt.h, included first there), which runs them on the CPU
// under the tests and the sanitizers.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_runtime.h>
// `extern __shared__` cannot be spelled by the host compiler: the emulation hands out the block's
// dynamic shared memory through a function.
#define MARSOPS_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
// A device-side assertion with our message (what torch's CUDA_KERNEL_ASSERT_MSG does): the
// kernel stops, the CUDA context reports "device-side assert triggered", and stderr shows msg.
#define MARSOPS_DEVICE_ASSERT(cond, msg)                                                      \
  do {                                                                                        \
    if (!(cond)) __assert_fail(msg, __FILE__, static_cast<unsigned int>(__LINE__), __func__); \
  } while (0)
#elif defined(MARSOPS_SIMT)
#define MARSOPS_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::simt::dynamic_shared())
#define MARSOPS_DEVICE_ASSERT(cond, msg)                                  \
  do {                                                                    \
    if (!(cond)) ::simt::device_assert_fail(msg, __FILE__, __LINE__, __func__); \
  } while (0)
#else
#error "csrc/cuda kernels compile with nvcc, or with the SIMT emulation (include simt.h first)"
#endif

#include "../numeric.h"

namespace marsops::cuda {

// Sums v over the block into thread 0 (fixed order: deterministic). blockDim.x must be a multiple
// of 32 (every lane of a warp takes part in the shuffles).
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T total = 0;
  if (threadIdx.x == 0)
    for (int i = 0; i < (int)(blockDim.x + 31) / 32; ++i) total += shared[i];
  __syncthreads();
  return total;
}

// After each block wrote its partial results: true in the one block that finishes last, which
// may then read every block's partials. `counter` starts at 0 (the op zeroes it).
__device__ __forceinline__ bool last_block_done(unsigned int* counter) {
  __shared__ bool last;
  __threadfence();  // this block's partials are visible before it is counted
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// The first index of a grid-stride loop and its step.
__device__ __forceinline__ int64_t grid_start() { return blockIdx.x * (int64_t)blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_step() { return (int64_t)gridDim.x * blockDim.x; }

}  // namespace marsops::cuda
