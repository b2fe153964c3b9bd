// The few CUDA runtime calls the host side of the CUDA ops makes (csrc/cuda/*_cuda.cu), for the
// build that runs them on the SIMT emulation (csrc/cuda/cuda_utils.cuh includes this under
// MARSOPS_SIMT). One emulated device; streams are ignored (launches are synchronous).
#pragma once
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "simt.h"

using cudaStream_t = void*;
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorAssert = 710,
  cudaErrorLaunchFailure = 719,
};
enum cudaDeviceAttr : int { cudaDevAttrMultiProcessorCount = 16 };

inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t = nullptr) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = simt::multiprocessors();
  return cudaSuccess;
}

inline const char* cudaGetErrorString(int e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorAssert: return "device-side assert triggered";
    default: return "unspecified launch failure";
  }
}

// torch's STD_CUDA_CHECK asks libtorch's CUDA code to format the message; the emulation formats
// its own, with what the launch reported (the failed assertion, the race, the deadlock).
#undef STD_CUDA_CHECK
#define STD_CUDA_CHECK(EXPR)                                                                          \
  do {                                                                                              \
    const int simt_error_ = static_cast<int>(EXPR);                                                 \
    if (simt_error_ != cudaSuccess)                                                                 \
      throw std::runtime_error(std::string("CUDA error (emulated): ") + cudaGetErrorString(simt_error_) + \
                               ": " + ::simt::last_launch_message());                               \
  } while (0)
