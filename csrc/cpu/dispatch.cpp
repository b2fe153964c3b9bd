// Picks the SIMD kernels built for this CPU, with torch's rule: AVX-512 needs avx512vl/bw/dq
// and FMA, AVX2 needs avx2 and FMA, and ATEN_CPU_CAPABILITY ("default", "avx2", "avx512") can
// only lower the choice here (torch's own ops read it too).
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels.h"

namespace marsops::cpu {
namespace {

int hardware_level() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return 2;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) return 1;
#endif
  return 0;
}

int requested_level() {
  const char* env = std::getenv("ATEN_CPU_CAPABILITY");
  if (env == nullptr) return 2;
  if (std::strcmp(env, "default") == 0) return 0;
  if (std::strcmp(env, "avx2") == 0) return 1;
  return 2;
}

}  // namespace

const SimdKernels& simd_kernels() {
#if defined(__x86_64__) || defined(__i386__)
  static const SimdKernels& chosen = [&]() -> const SimdKernels& {
    const int level = std::min(hardware_level(), requested_level());
    return level == 2 ? simd_avx512 : level == 1 ? simd_avx2 : simd_default;
  }();
  return chosen;
#else
  return simd_default;  // setup.py builds the AVX variants on x86 only
#endif
}

}  // namespace marsops::cpu
