// Picks the SIMD kernels built for this CPU's capability.
#include <ATen/Version.h>

#include "kernels.h"

namespace marsops::cpu {

const SimdKernels& simd_kernels() {
  static const SimdKernels& chosen = [&]() -> const SimdKernels& {
    const std::string cap = at::get_cpu_capability();  // honours ATEN_CPU_CAPABILITY
    if (cap == "AVX512") return simd_avx512;
    if (cap == "AVX2") return simd_avx2;
    return simd_default;
  }();
  return chosen;
}

}  // namespace marsops::cpu
