// Every SIMD CPU kernel, built for the DEFAULT CPU capability (chosen at run time in dispatch.cpp).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#define MARSOPS_SIMD_TABLE simd_default
#include "simd_table.inc"
