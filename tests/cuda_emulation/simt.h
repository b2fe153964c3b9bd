// A small SIMT emulation: runs CUDA device code (csrc/cuda/*_kernels.cuh) on the CPU, for the tests
// and the sanitizers. Test-only: nothing in the installed package includes it.
//
// Model. Every CUDA thread is a fiber with its own stack; every block runs on its own OS thread
// (so `__shared__` variables can be `static thread_local`), several blocks at once. Fibers are
// scheduled cooperatively: a fiber runs until it reaches __syncthreads, a warp operation
// (__shfl_down_sync), or its end. A warp's shuffle completes when every live lane of the warp
// has reached it; the barrier releases when every live thread of the block waits there, from one
// call site. Anything else is reported and fails the launch: a deadlock, a divergent barrier, a
// shuffle naming a lane that exited. Warps are 32 lanes wide.
//
// What varies per launch (environment variables, read at each launch):
//   MARSOPS_EMULATED_SMS       multiprocessors reported to the launchers (132 = H100/H200, 108 = A100)
//   MARSOPS_EMULATED_SEED      0: blocks start in index order and threads run in index order;
//                              other values shuffle the block order, the thread order after
//                              every barrier and the lanes' order within a warp after a shuffle
//   MARSOPS_EMULATED_CONCURRENT_BLOCKS  blocks in flight at once (default 2; the TSan checks run
//                              every block at once, so races between blocks are visible)
//
// Dynamic shared memory is an exact-size allocation filled with a garbage pattern (0xA5 bytes);
// global and shared atomics are real atomics; __threadfence is a full fence; a device-side
// assert fails the launch with cudaErrorAssert (710), as CUDA does. Under ThreadSanitizer each
// CUDA thread is a TSan fiber whose only happens-before edges are CUDA's (barriers, fences);
// under AddressSanitizer, fiber switches are announced, so out-of-bounds accesses are found.
#pragma once
#define MARSOPS_SIMT 1

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <atomic>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local

namespace simt {

struct Index3 {
  unsigned x, y, z;
};

// The running fiber's and block's indices (valid inside a kernel only).
const Index3& thread_index();
const Index3& block_index();
const Index3& block_dim();
const Index3& grid_dim();
void* dynamic_shared();

void syncthreads(const char* file, int line);
uint64_t shuffle_down(unsigned mask, uint64_t bits, unsigned delta, int width, const char* file, int line);
void threadfence();
[[noreturn]] void device_assert_fail(const char* message, const char* file, int line, const char* function);

// Runs body(context) as every thread of a grid of `grid` blocks of `block` threads; returns a
// cudaError_t value (0: success); last_launch_message() says why it failed, per host thread.
int run_grid(int grid, int block, size_t shared_bytes, void (*body)(void*), void* context);

// The error message of the last failed launch ("" if none).
const char* last_launch_message();

// The multiprocessor count the emulated device reports (MARSOPS_EMULATED_SMS, default 132).
int multiprocessors();

template <typename... Params, typename... Args>
int launch(int grid, int block, size_t shared_bytes, void (*kernel)(Params...), Args&&... args) {
  // Kernel arguments are copied once, as CUDA copies them into constant memory; each thread then
  // gets its own copy of every parameter (by-value parameters).
  struct Context {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  } context{kernel, std::tuple<std::decay_t<Params>...>(static_cast<Params>(std::forward<Args>(args))...)};
  auto body = [](void* c) {
    auto* ctx = static_cast<Context*>(c);
    std::apply(ctx->kernel, ctx->params);
  };
  return run_grid(grid, block, shared_bytes, body, &context);
}

}  // namespace simt

#define threadIdx (::simt::thread_index())
#define blockIdx (::simt::block_index())
#define blockDim (::simt::block_dim())
#define gridDim (::simt::grid_dim())
#define __syncthreads() ::simt::syncthreads(__FILE__, __LINE__)
#define __shfl_down_sync(mask, value, ...) ::simt::shfl_down_typed(mask, value, __FILE__, __LINE__, __VA_ARGS__)

namespace simt {

template <typename T>
T shfl_down_typed(unsigned mask, T value, const char* file, int line, unsigned delta, int width = 32) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = shuffle_down(mask, bits, delta, width, file, line);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

}  // namespace simt

inline void __threadfence() { ::simt::threadfence(); }

// Atomics are relaxed, as CUDA's are: they order nothing else.
template <typename T>
inline T simt_atomic_add(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}
inline unsigned int atomicAdd(unsigned int* a, unsigned int v) { return simt_atomic_add(a, v); }
inline int atomicAdd(int* a, int v) { return simt_atomic_add(a, v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) { return simt_atomic_add(a, v); }
inline float atomicAdd(float* a, float v) { return simt_atomic_add(a, v); }
inline double atomicAdd(double* a, double v) { return simt_atomic_add(a, v); }

// Cache operators only change where a load is cached: a plain load here.
template <typename T>
inline T __ldcg(const T* p) { return *p; }
