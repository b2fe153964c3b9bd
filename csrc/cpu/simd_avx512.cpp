// Every SIMD CPU kernel, built for the AVX512 CPU capability (chosen at run time in dispatch.cpp;
// only raw pointers cross kernels.h, see simd.h).
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
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
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define MARSOPS_SIMD_TABLE simd_avx512
#define MARSOPS_SIMD_NAME "AVX512"
// GCC flags its own intrinsic headers (avx512fintrin.h) as maybe-uninitialized under -O3 -Wall.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "simd_table.inc"
