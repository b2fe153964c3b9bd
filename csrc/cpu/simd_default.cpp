// Every SIMD CPU kernel, built for the DEFAULT CPU capability (chosen at run time in dispatch.cpp).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#include "confusion_kernel.h"
#include "focal_kernel.h"

namespace marsops::cpu {
const SimdKernels simd_default = {
    &CPU_CAPABILITY::focal_forward_impl,
    &CPU_CAPABILITY::confusion_impl,
};
}  // namespace marsops::cpu
