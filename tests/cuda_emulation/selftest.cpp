// The emulation proves it can fail: small kernels of its own, each with one seeded bug of a class
// the real kernels could have, must be caught (by wrong values, by ThreadSanitizer or by
// AddressSanitizer; tests/cuda_emulation/run.py checks which). The same kernels without the bug
// must pass everywhere.
//   selftest BUG     BUG: none, missing-barrier, missing-fence, last-block-by-index,
//                    read-past-end, wrong-stride
// Runs the kernel at schedule seeds 0-3 with every block of the grid in flight at once; exits 0
// when every result is right, 3 when one is wrong (printing which seed).
#include <cstring>
#include <string>
#include <vector>

#include "harness.h"

namespace {

enum Bug { kNone, kMissingBarrier, kMissingFence, kLastBlockByIndex, kReadPastEnd, kWrongStride };

// Per-block sums through shared memory, then the grand total by the block that finishes last
// (the last-block-done pattern of csrc/cuda/device.cuh, written out).
__global__ void total_kernel(const int* in, int n, int* partial, unsigned* counter, int* total, int bug) {
  __shared__ int values[64];
  __shared__ bool last;
  int v = 0;
  const int step = bug == kWrongStride ? blockDim.x : gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) v += in[i];
  values[threadIdx.x] = v;
  if (bug != kMissingBarrier) __syncthreads();
  if (threadIdx.x == 0) {
    int s = 0;
    for (unsigned t = 0; t < blockDim.x; ++t) s += values[t];
    partial[blockIdx.x] = s;
  }
  if (bug == kLastBlockByIndex) {
    if (blockIdx.x != gridDim.x - 1) return;  // "the highest block finishes last": no
    __syncthreads();
  } else {
    if (bug != kMissingFence) __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
  }
  if (threadIdx.x == 0) {
    int s = 0;
    for (unsigned b = 0; b < gridDim.x; ++b) s += partial[b];
    *total = s;
  }
}

// A histogram in dynamic shared memory, merged into global counts.
__global__ void histogram_kernel(const int* in, int n, int bins, unsigned* out, int bug) {
  unsigned* h = static_cast<unsigned*>(simt::dynamic_shared());
  for (int i = threadIdx.x; i < bins; i += blockDim.x) h[i] = 0;
  __syncthreads();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) atomicAdd(&h[in[i]], 1u);
  __syncthreads();
  const int end = bug == kReadPastEnd ? bins + 1 : bins;  // `<=` for `<`
  for (int i = threadIdx.x; i < end; i += blockDim.x)
    if (h[i]) atomicAdd(&out[i < bins ? i : 0], h[i]);
}

Bug parse(const std::string& name) {
  const char* names[] = {"none", "missing-barrier", "missing-fence", "last-block-by-index", "read-past-end",
                         "wrong-stride"};
  for (int b = 0; b < 6; ++b)
    if (name == names[b]) return static_cast<Bug>(b);
  std::fprintf(stderr, "selftest: unknown bug %s\n", name.c_str());
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  const Bug bug = parse(argc > 1 ? argv[1] : "none");
  const int grid = 4, block = 64, n = 3000, bins = 7;
  std::vector<int> in(n);
  long long want_total = 0;
  std::vector<unsigned> want_hist(bins, 0);
  for (int i = 0; i < n; ++i) {
    in[i] = (i * 7919) % bins;
    want_total += in[i];
    ++want_hist[in[i]];
  }
  bool all_right = true;
  for (uint64_t seed = 0; seed < 4; ++seed) {
    harness::use({1, seed, 0});
    std::vector<int> partial(grid, 0);
    unsigned counter = 0;
    int total = -1;
    int err = harness::launch(grid, block, 0, total_kernel, in.data(), n, partial.data(), &counter, &total,
                              static_cast<int>(bug));
    std::vector<unsigned> hist(bins, 0);
    if (!err)
      err = harness::launch(grid, block, bins * sizeof(unsigned), histogram_kernel, in.data(), n, bins, hist.data(),
                            static_cast<int>(bug));
    const bool right = err == 0 && total == want_total && (bug == kReadPastEnd || hist == want_hist);
    if (!right)
      std::printf("selftest %s: wrong values at seed %llu (total %d, expected %lld; error %d %s)\n", argv[1],
                  static_cast<unsigned long long>(seed), total, want_total, err, simt::last_launch_message());
    all_right &= right;
  }
  return all_right ? 0 : 3;
}
