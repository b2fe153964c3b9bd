// Fixed-size chunks of work handed out on demand to torch's threads.
//
// st::parallel_for (at::parallel_for) splits a range statically: with 2 threads, each gets half the
// chunks, and the call lasts as long as the slower half. On a machine shared with other processes
// one core is often busy for part of the call, and its thread then finishes late while the other
// spins in OpenMP's barrier (libgomp was ~11% of a focal-loss profile on this 2-core machine).
// Here each thread takes the next chunk from a shared counter until none is left, so an idle
// thread takes over the busy one's share. Which thread runs a chunk varies between calls; results
// stay independent of it as long as each chunk writes its own slot (summed in chunk order) or adds
// integers.
#pragma once
#include <algorithm>
#include <atomic>

#include "../stable.h"

namespace marsops::cpu {

// Calls worker(next) once per thread (at most num_chunks times), where next() returns the next chunk
// index to process, or a value >= num_chunks when none is left. A worker keeps its own private state
// (a histogram, flags) and merges it before returning.
template <typename Worker>
void parallel_chunks(int64_t num_chunks, const Worker& worker) {
  if (num_chunks <= 0) return;
  const int64_t workers = std::min<int64_t>(num_chunks, std::max<int64_t>(1, st::get_num_threads()));
  std::atomic<int64_t> counter{0};
  auto next = [&counter]() { return counter.fetch_add(1, std::memory_order_relaxed); };
  st::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) worker(next);
  });
}

}  // namespace marsops::cpu
