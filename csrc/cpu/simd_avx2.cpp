// Every SIMD CPU kernel, built for the AVX2 CPU capability (chosen at run time in dispatch.cpp;
// only raw pointers cross kernels.h, see simd.h).
#pragma GCC target("avx2,fma,f16c")
// The pragma enables the instructions; these macros tell sleef.h and ATen's vec headers.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define MARSOPS_SIMD_TABLE simd_avx2
#define MARSOPS_SIMD_NAME "AVX2"
// GCC flags its own intrinsic headers (avx512fintrin.h) as maybe-uninitialized under -O3 -Wall.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "simd_table.inc"
