// Every SIMD CPU kernel, built for the DEFAULT CPU capability (chosen at run time in dispatch.cpp;
// only raw pointers cross kernels.h, see simd.h).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#define MARSOPS_SIMD_TABLE simd_default
#define MARSOPS_SIMD_NAME "DEFAULT"
// GCC flags its own intrinsic headers (avx512fintrin.h) as maybe-uninitialized under -O3 -Wall.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "simd_table.inc"
