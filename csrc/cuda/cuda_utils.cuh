// Host-side helpers of the CUDA ops (stable ABI: no c10/cuda headers). The device code lives in
// the torch-free *_kernels.cuh headers; the launch configurations in launch_config.h.
//
// Built with MARSOPS_SIMT (tests/cuda_emulation), these same host files compile with the host
// compiler: kernels launch on the SIMT emulation, the CUDA runtime calls they make come from its
// shim, and the ops register for CPU tensors in the test-only `marsops_emulated_cuda` library.
#pragma once
#include "../stable.h"

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/c/shim.h>
#include <torch/csrc/stable/macros.h>

#include <array>
#include <atomic>
#include <utility>

#include "launch_config.h"

#if defined(MARSOPS_SIMT)
#include "simt_runtime.h"  // tests/cuda_emulation: cudaStream_t, cudaMemsetAsync, ..., STD_CUDA_CHECK
#define MARSOPS_CUDA_OPS_IMPL(m) STABLE_TORCH_LIBRARY_IMPL(marsops_emulated_cuda, CPU, m)
#else
#include <cuda_runtime.h>
#define MARSOPS_CUDA_OPS_IMPL(m) STABLE_TORCH_LIBRARY_IMPL(marsops, CUDA, m)
#endif

namespace marsops::cuda {

#if defined(MARSOPS_SIMT)
struct DeviceGuard {  // the emulation has one device
  explicit DeviceGuard(int32_t) {}
};
inline cudaStream_t current_stream(const Tensor&) { return nullptr; }
#else
using DeviceGuard = st::accelerator::DeviceGuard;

// The stream torch is using on the tensor's device: every kernel launches there.
inline cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}
#endif

inline int multiprocessors(int device) {
#if defined(MARSOPS_SIMT)
  const bool cache = false;  // the emulation's SM count changes between tests
#else
  const bool cache = true;
#endif
  static std::array<std::atomic<int>, 64> cached{};  // 0: not asked yet
  if (device < 0 || device >= static_cast<int>(cached.size())) device = 0;
  int sms = cached[device].load(std::memory_order_relaxed);
  if (sms == 0 || !cache) {
    STD_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cached[device].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

// launch_config.h's grid-stride configuration for the GPU holding `on`.
inline LaunchConfig grid_stride_on(const Tensor& on, int64_t work, size_t shared_bytes = 0) {
  return grid_stride(work, multiprocessors(on.get_device_index()), shared_bytes);
}

// kernel<<<config, stream>>>(args...), checked.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), const LaunchConfig& config, cudaStream_t stream, Args&&... args) {
#if defined(MARSOPS_SIMT)
  (void)stream;
  STD_CUDA_CHECK(::simt::launch(config.grid, config.block, config.shared_bytes, kernel, std::forward<Args>(args)...));
#else
  kernel<<<config.grid, config.block, config.shared_bytes, stream>>>(std::forward<Args>(args)...);
  STD_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

}  // namespace marsops::cuda
