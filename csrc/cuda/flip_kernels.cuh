// Device code of the flip ops (host side: flip_cuda.cu; views: csrc/views.h): one thread per
// output element (grid-stride), writes coalesced; a flipped row is read from the same memory
// segments, so its reads stay coalesced too (a transposing view reads a column).
#pragma once
#include "../numeric.h"
#include "../views.h"
#include "device.cuh"

namespace marsops::cuda {

// Flat index of (volume start, d, h, w) in a (planes, D, H, W) layout.
struct FlipLayout {
  int64_t D, H, W;
  __device__ __forceinline__ void split(int64_t i, int64_t& first, int64_t& d, int64_t& h, int64_t& w) const {
    w = i % W;
    h = (i / W) % H;
    d = (i / (W * H)) % D;
    first = i - (d * H + h) * W - w;
  }
  __device__ __forceinline__ int64_t at(int64_t first, int64_t d, int64_t h, int64_t w) const {
    return first + (d * H + h) * W + w;
  }
};

template <typename T>
__global__ void flip_views_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t total, FlipLayout g,
                                  ViewList views) {
  const int64_t all = total * views.count;
  for (int64_t j = grid_start(); j < all; j += grid_step()) {
    const int64_t k = j / total, i = j - k * total;
    int64_t first, d, h, w;
    g.split(i, first, d, h, w);
    view_source(views.code[k], g.D, g.H, g.W, d, h, w);
    out[j] = x[g.at(first, d, h, w)];
  }
}

template <typename T>
__global__ void flip_views_sum_kernel(const T* __restrict__ y, T* __restrict__ out, int64_t total, FlipLayout g,
                                      ViewList views, acc_t<T> scale) {
  using acc = acc_t<T>;
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    int64_t first, d0, h0, w0;
    g.split(i, first, d0, h0, w0);
    acc s = 0;
    for (int k = 0; k < views.count; ++k) {  // in view order: the merge's rounding is fixed
      int64_t d = d0, h = h0, w = w0;
      view_target(views.code[k], g.D, g.H, g.W, d, h, w);
      s += static_cast<acc>(y[k * total + g.at(first, d, h, w)]);
    }
    out[i] = static_cast<T>(s * scale);
  }
}

template <typename T>
__global__ void flip_by_flags_kernel(const T* __restrict__ x, const uint8_t* __restrict__ flags, T* __restrict__ out,
                                     int64_t total, int64_t per_sample, FlipLayout g, int allowed) {
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    int64_t first, d, h, w;
    g.split(i, first, d, h, w);
    view_source(flags[i / per_sample] & allowed, g.D, g.H, g.W, d, h, w);
    out[i] = x[g.at(first, d, h, w)];
  }
}

}  // namespace marsops::cuda
