// The focal-loss SIMD kernel built for the default CPU capability (chosen at run time).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#include "focal_kernel.h"

namespace marsops::cpu {
FocalStats focal_forward_default(const FocalArgs& a) { return CPU_CAPABILITY::focal_forward_impl(a); }
}  // namespace marsops::cpu
