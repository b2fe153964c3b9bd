// Small helpers shared by the CUDA kernels (stable ABI: no c10/cuda headers).
#pragma once
#include "../stable.h"

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/c/shim.h>
#include <torch/csrc/stable/macros.h>

#include <cuda_runtime.h>

#include <array>
#include <atomic>

namespace marsops::cuda {

constexpr int kThreads = 256;
constexpr int64_t kMaxSharedBins = 8192;  // confusion counts per block in shared memory: 32 KB

// The stream torch is using on the tensor's device: every kernel launches there.
inline cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}

inline int multiprocessors(int device) {
  static std::array<std::atomic<int>, 64> cached{};  // 0: not asked yet
  if (device < 0 || device >= static_cast<int>(cached.size())) device = 0;
  int sms = cached[device].load(std::memory_order_relaxed);
  if (sms == 0) {
    STD_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cached[device].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

// A grid-stride launch size: enough blocks to fill the GPU, never more than the work needs.
// Fixed for a device and a problem size, so per-block partial sums are reduced deterministically.
inline int grid_size(const Tensor& on, int64_t work, int threads = kThreads) {
  const int64_t needed = (work + threads - 1) / threads;
  const int64_t most = static_cast<int64_t>(multiprocessors(on.get_device_index())) * 8;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, most)));
}

// Sums v over the block into thread 0 (fixed order: deterministic).
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T total = 0;
  if (threadIdx.x == 0)
    for (int i = 0; i < (blockDim.x + 31) / 32; ++i) total += shared[i];
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

}  // namespace marsops::cuda

// A device-side assertion with our message (what torch's CUDA_KERNEL_ASSERT_MSG does): the
// kernel stops, the CUDA context reports "device-side assert triggered", and stderr shows msg.
#define MARSOPS_DEVICE_ASSERT(cond, msg)                                              \
  do {                                                                                \
    if (!(cond)) __assert_fail(msg, __FILE__, static_cast<unsigned int>(__LINE__), __func__); \
  } while (0)
