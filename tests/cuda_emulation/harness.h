// What the emulation's C++ checks share: the emulated GPU's configuration, a check counter and a
// deterministic random source. Torch-free.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "simt.h"

namespace harness {

// The configuration the next launches get (read by the emulation at each launch).
struct Gpu {
  int sms;        // 132: H100/H200, 108: A100; small values give grids of a few blocks
  uint64_t seed;  // 0: in order; else block and thread order shuffled
  int concurrent_blocks;
};

inline void use(const Gpu& g) {
  setenv("MARSOPS_EMULATED_SMS", std::to_string(g.sms).c_str(), 1);
  setenv("MARSOPS_EMULATED_SEED", std::to_string(g.seed).c_str(), 1);
  setenv("MARSOPS_EMULATED_CONCURRENT_BLOCKS", std::to_string(g.concurrent_blocks).c_str(), 1);
}

inline std::string describe(const Gpu& g) {
  return "sms " + std::to_string(g.sms) + ", seed " + std::to_string(g.seed) + ", " +
         std::to_string(g.concurrent_blocks) + " blocks at once";
}

struct Counter {
  int passed = 0, failed = 0;
  void check(bool ok, const std::string& what) {
    if (ok) {
      ++passed;
    } else {
      ++failed;
      std::printf("FAIL %s\n", what.c_str());
      std::fflush(stdout);
    }
  }
};

inline bool close(double got, double want, double rtol, double atol) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == want;
  return std::fabs(got - want) <= atol + rtol * std::fabs(want);
}

// 0 on success, else the launch's error code (cudaError_t); simt::last_launch_message() says why.
template <typename... Params, typename... Args>
int launch(int grid, int block, size_t shared, void (*kernel)(Params...), Args&&... args) {
  return simt::launch(grid, block, shared, kernel, std::forward<Args>(args)...);
}

}  // namespace harness

inline int multiprocessors_from_env() { return simt::multiprocessors(); }
