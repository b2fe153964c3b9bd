// Launch configurations of the CUDA kernels, in one place: the real launchers (*_cuda.cu) and the
// emulated ones (tests/cuda_emulation) call these, so the emulation runs the grids, blocks and
// shared-memory sizes that real GPUs get. Host-only and torch-free.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace marsops::cuda {

constexpr int kThreads = 256;           // threads per block, every kernel
constexpr int kBlocksPerSM = 8;         // grid-stride grids: at most this many blocks per multiprocessor
constexpr int64_t kMaxSharedBins = 8192;  // confusion counts per block in shared memory: 32 KB

struct LaunchConfig {
  int grid, block;
  size_t shared_bytes;  // dynamic shared memory
};

// A grid-stride launch: enough blocks to fill a GPU of `multiprocessors` SMs, never more than the
// work needs. Fixed for a device and a problem size, so per-block partial sums are reduced in a
// fixed order (deterministic).
inline LaunchConfig grid_stride(int64_t work, int multiprocessors, size_t shared_bytes = 0) {
  const int64_t needed = (work + kThreads - 1) / kThreads;
  const int64_t most = static_cast<int64_t>(std::max(multiprocessors, 1)) * kBlocksPerSM;
  return {static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, most))), kThreads, shared_bytes};
}

// Confusion counts of C classes: a per-block shared histogram when C * C fits, else global atomics.
inline bool shared_bins(int64_t C) { return C * C <= kMaxSharedBins; }
inline size_t shared_bins_bytes(int64_t C, bool counting) {
  return counting && shared_bins(C) ? static_cast<size_t>(C * C) * sizeof(unsigned int) : 0;
}

// The focal loss' workspace (one allocation): main partials (blocks x 3 doubles), the pre-pass
// partials (blocks x 2 doubles, when it runs), the gradient scale (a float in 8 bytes) and two
// block counters, which must start at 0 (the only memset).
struct FocalWorkspace {
  int64_t main_partial, pre_partial, scale, counters, bytes;  // byte offsets and the total size
};
inline FocalWorkspace focal_workspace(int blocks, bool prepass) {
  const int64_t main_bytes = int64_t{blocks} * 3 * 8, pre_bytes = prepass ? int64_t{blocks} * 2 * 8 : 0;
  return {0, main_bytes, main_bytes + pre_bytes, main_bytes + pre_bytes + 8, main_bytes + pre_bytes + 16};
}

}  // namespace marsops::cuda
