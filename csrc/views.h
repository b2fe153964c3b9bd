// The symmetries the flip ops apply, shared by the CPU and CUDA kernels (marsops/triton/flip.py
// mirrors them). A view is a code: bit 0 reverses W, bit 1 reverses H, bit 2 reverses D (volumes),
// bit 3 transposes H and W (square images). flip4 is the views (0, 1, 2, 3); the dihedral group
// D4 of a square is (0, 1, 2, 3, 8, 9, 10, 11).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MARSOPS_VIEW_HD __host__ __device__ __forceinline__
#else
#define MARSOPS_VIEW_HD inline
#endif

namespace marsops {

constexpr int kMaxViews = 16;
constexpr int kReverseW = 1, kReverseH = 2, kReverseD = 4, kTranspose = 8;

// The views of one call, by value (a CUDA kernel argument).
struct ViewList {
  int count;
  int8_t code[kMaxViews];
};

// The source position (d, h, w) that view `code` shows at output position (d, h, w).
MARSOPS_VIEW_HD void view_source(int code, int64_t D, int64_t H, int64_t W, int64_t& d, int64_t& h, int64_t& w) {
  const int64_t d1 = (code & kReverseD) ? D - 1 - d : d;
  const int64_t h1 = (code & kReverseH) ? H - 1 - h : h;
  const int64_t w1 = (code & kReverseW) ? W - 1 - w : w;
  d = d1;
  h = (code & kTranspose) ? w1 : h1;
  w = (code & kTranspose) ? h1 : w1;
}

// The output position where view `code` puts source position (d, h, w): the inverse map.
MARSOPS_VIEW_HD void view_target(int code, int64_t D, int64_t H, int64_t W, int64_t& d, int64_t& h, int64_t& w) {
  const int64_t h0 = (code & kTranspose) ? w : h, w0 = (code & kTranspose) ? h : w;
  d = (code & kReverseD) ? D - 1 - d : d;
  h = (code & kReverseH) ? H - 1 - h0 : h0;
  w = (code & kReverseW) ? W - 1 - w0 : w0;
}

// The view that undoes `code`: flips undo themselves; under a transpose the H and W flips swap.
MARSOPS_VIEW_HD int inverse_view(int code) {
  if (!(code & kTranspose)) return code;
  return (code & (kReverseD | kTranspose)) | ((code & kReverseW) << 1) | ((code & kReverseH) >> 1);
}

}  // namespace marsops
