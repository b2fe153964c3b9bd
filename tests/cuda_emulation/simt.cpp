// The SIMT emulation's scheduler (the model: simt.h). In the ThreadSanitizer build this file is
// compiled without TSan instrumentation (SIMT_TSAN defined instead): its own bookkeeping must
// neither report races nor create happens-before edges; it tells TSan about CUDA's
// synchronisation (barriers, fences) and fibers explicitly.
#include "simt.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(SIMT_TSAN)
#include <sanitizer/tsan_interface.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define SIMT_ASAN 1
#endif

namespace simt {
namespace {

constexpr int kWarp = 32;
constexpr int kErrorInvalidValue = 1, kErrorInvalidConfiguration = 9, kErrorAssert = 710, kErrorLaunchFailure = 719;
#if defined(SIMT_ASAN)
constexpr size_t kStackBytes = 256 * 1024;  // ASan's frames are larger
#else
constexpr size_t kStackBytes = 64 * 1024;
#endif

long env_int(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtol(v, nullptr, 10) : fallback;
}

enum class State { Ready, Barrier, Warp, Done };

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;
  Index3 index{};
  State state = State::Ready;
  const char* file = "";  // where it waits
  int line = 0;
  unsigned mask = 0, delta = 0;
  int width = kWarp;
  uint64_t value = 0, result = 0;
  void* tsan = nullptr;
  void* asan_fake_stack = nullptr;
};

struct Launch {  // what the blocks of one launch share
  Index3 grid_dim, block_dim;
  size_t shared_bytes;
  void (*body)(void*);
  void* context;
  uint64_t seed;
  std::atomic<bool> failed{false};
  std::mutex error_mutex;  // taken only on failure
  int error = 0;
  std::string message;
  std::vector<std::vector<void*>> tsan_fibers;  // per block, destroyed when the launch ends
  std::vector<char*> deferred_stacks;           // per block (TSan: freed when the launch ends)
  std::vector<void*> deferred_shared;
};

struct Block {
  Launch* launch;
  Index3 index;
  std::vector<Fiber> fibers;
  char* stacks = nullptr;
  size_t stacks_bytes = 0;
  void* shared = nullptr;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  std::mt19937_64 rng;
  int phase = 0;           // barriers passed
  char tsan_phase[2] = {};  // TSan sync objects of alternate barriers (one object would hide races)
  char tsan_end = 0;        // the kernel's end: the host's later reads and frees come after it
  void* scheduler_tsan = nullptr;
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_bytes = 0;
  bool aborted = false;
};

thread_local Block* tl_block = nullptr;
[[maybe_unused]] char g_fence;  // TSan sync object of __threadfence
thread_local std::string g_last_message;  // per host thread: launches from two threads do not mix

void fail(Block& b, int code, const std::string& message) {
  Launch& L = *b.launch;
  b.aborted = true;
  std::lock_guard<std::mutex> lock(L.error_mutex);
  if (!L.failed.load()) {
    L.error = code;
    L.message = message;
    L.failed.store(true);
  }
}

std::string where(const Block& b, const Fiber& f) {
  return "block " + std::to_string(b.index.x) + ", thread " + std::to_string(f.index.x);
}

// ---- fiber switches, announced to the sanitizers ------------------------------------------------

void enter(Block& b, Fiber& f) {  // scheduler -> fiber
  b.current = &f;
#if defined(SIMT_TSAN)
  __tsan_switch_to_fiber(f.tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(SIMT_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
  swapcontext(&b.scheduler, &f.context);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  swapcontext(&b.scheduler, &f.context);
#endif
  b.current = nullptr;
}

void leave(Block& b, Fiber& f, bool dying) {  // fiber -> scheduler
#if defined(SIMT_TSAN)
  // Everything this thread did so far comes before the kernel's end (it may never run again: an
  // assertion elsewhere abandons the block). No thread acquires this object; the block does, once.
  __tsan_release(&b.tsan_end);
  __tsan_switch_to_fiber(b.scheduler_tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(SIMT_ASAN)
  __sanitizer_start_switch_fiber(dying ? nullptr : &f.asan_fake_stack, b.scheduler_stack, b.scheduler_stack_bytes);
  swapcontext(&f.context, &b.scheduler);
  __sanitizer_finish_switch_fiber(f.asan_fake_stack, &b.scheduler_stack, &b.scheduler_stack_bytes);
#else
  (void)dying;
  swapcontext(&f.context, &b.scheduler);
#endif
}

void fiber_main() {
  Block& b = *tl_block;
#if defined(SIMT_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &b.scheduler_stack, &b.scheduler_stack_bytes);
#endif
  b.launch->body(b.launch->context);
  Fiber& f = *b.current;
  f.state = State::Done;
  leave(b, f, true);
  std::abort();  // a finished fiber is never resumed
}

// ---- the block scheduler --------------------------------------------------------------------------

void shuffle_if_seeded(Block& b, std::vector<int>& order) {
  if (b.launch->seed) std::shuffle(order.begin(), order.end(), b.rng);
}

// Completes the shuffles of warps whose live lanes all wait at one; their lanes become ready.
void complete_warps(Block& b, std::vector<int>& ready) {
  const int n = static_cast<int>(b.fibers.size());
  for (int w0 = 0; w0 < n && !b.aborted; w0 += kWarp) {
    const int w1 = std::min(n, w0 + kWarp);
    bool waiting = false, all = true;
    for (int i = w0; i < w1; ++i) {
      waiting |= b.fibers[i].state == State::Warp;
      all &= b.fibers[i].state == State::Warp || b.fibers[i].state == State::Done;
    }
    if (!waiting || !all) continue;
    const Fiber* first = nullptr;
    for (int i = w0; i < w1 && !b.aborted; ++i) {
      const Fiber& f = b.fibers[i];
      if (f.state != State::Warp) continue;
      if (!first) first = &f;
      if (f.file != first->file || f.line != first->line)
        fail(b, kErrorLaunchFailure, "divergent warp shuffle: " + where(b, *first) + " at " + first->file + ":" +
                                         std::to_string(first->line) + ", " + where(b, f) + " at " + f.file + ":" +
                                         std::to_string(f.line));
      const int lane = i - w0;
      if (!(f.mask >> lane & 1u))
        fail(b, kErrorLaunchFailure, "__shfl_down_sync: " + where(b, f) + " is not in its own mask");
      for (int l = 0; l < kWarp && !b.aborted; ++l) {
        if (!(f.mask >> l & 1u)) continue;
        if (w0 + l >= n)
          fail(b, kErrorLaunchFailure, "__shfl_down_sync at " + std::string(f.file) + ":" + std::to_string(f.line) +
                                           ": the mask names lane " + std::to_string(l) +
                                           ", past the end of the block");
        else if (b.fibers[w0 + l].state != State::Warp)
          fail(b, kErrorLaunchFailure, "__shfl_down_sync at " + std::string(f.file) + ":" + std::to_string(f.line) +
                                           ": the mask names lane " + std::to_string(l) + ", which has exited");
      }
    }
    if (b.aborted) return;
    for (int i = w0; i < w1; ++i) {
      Fiber& f = b.fibers[i];
      if (f.state != State::Warp) continue;
      const int lane = i - w0, width = f.width;
      const int source = lane + static_cast<int>(f.delta);
      if ((lane % width) + static_cast<int>(f.delta) >= width) {
        f.result = f.value;  // past the segment: the lane keeps its own value
      } else if (source >= kWarp || !(f.mask >> source & 1u) || w0 + source >= n ||
                 b.fibers[w0 + source].state != State::Warp) {
        fail(b, kErrorLaunchFailure, "__shfl_down_sync at " + std::string(f.file) + ":" + std::to_string(f.line) +
                                         ": " + where(b, f) + " reads lane " + std::to_string(source) +
                                         ", which is not in the mask or not taking part (undefined on CUDA)");
        return;
      } else {
        f.result = b.fibers[w0 + source].value;
      }
    }
    std::vector<int> lanes;
    for (int i = w0; i < w1; ++i)
      if (b.fibers[i].state == State::Warp) {
        b.fibers[i].state = State::Ready;
        lanes.push_back(i);
      }
    shuffle_if_seeded(b, lanes);
    ready.insert(ready.end(), lanes.begin(), lanes.end());
  }
}

// Releases the barrier when every live thread waits there; else reports the deadlock.
void release_barrier_or_fail(Block& b, std::vector<int>& ready) {
  const Fiber* first = nullptr;
  const Fiber* other = nullptr;  // a live thread not at the barrier
  for (const Fiber& f : b.fibers) {
    if (f.state == State::Done) continue;
    if (f.state != State::Barrier) {
      other = &f;
      continue;
    }
    if (!first) first = &f;
    if (f.file != first->file || f.line != first->line) {
      fail(b, kErrorLaunchFailure, "divergent __syncthreads: " + where(b, *first) + " waits at " + first->file +
                                       ":" + std::to_string(first->line) + ", " + where(b, f) + " at " + f.file +
                                       ":" + std::to_string(f.line));
      return;
    }
  }
  if (other) {
    std::string what = first ? std::string(" while ") + where(b, *first) + " waits at __syncthreads (" + first->file +
                                   ":" + std::to_string(first->line) + ")"
                             : std::string();
    fail(b, kErrorLaunchFailure, "deadlock: " + where(b, *other) + " waits at a warp shuffle (" + other->file + ":" +
                                     std::to_string(other->line) + ") that not all its live lanes reach" + what);
    return;
  }
  ++b.phase;
  for (int i = 0; i < static_cast<int>(b.fibers.size()); ++i)
    if (b.fibers[i].state == State::Barrier) {
      b.fibers[i].state = State::Ready;
      ready.push_back(i);
    }
  shuffle_if_seeded(b, ready);
}

void run_block(Launch* launch, unsigned block_index) {
  Launch& L = *launch;
  Block b;
  b.launch = &L;
  b.index = {block_index, 0, 0};
  b.rng.seed(L.seed * 0x9E3779B97F4A7C15ull + block_index);
  tl_block = &b;
  // Dynamic shared memory: exactly the bytes asked for, holding garbage (a pattern).
  b.shared = std::malloc(L.shared_bytes);
  if (L.shared_bytes) std::memset(b.shared, 0xA5, L.shared_bytes);
  const int n = static_cast<int>(L.block_dim.x);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE)), slot = kStackBytes + page;
  b.stacks_bytes = slot * n;
  b.stacks = static_cast<char*>(
      mmap(nullptr, b.stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
  if (b.stacks == MAP_FAILED) {
    std::fprintf(stderr, "simt: cannot map %zu bytes of fiber stacks\n", b.stacks_bytes);
    std::abort();
  }
  b.fibers.resize(n);
#if defined(SIMT_TSAN)
  b.scheduler_tsan = __tsan_get_current_fiber();
#endif
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    mprotect(b.stacks + slot * i, page, PROT_NONE);  // a guard page below each stack
    f.stack = b.stacks + slot * i + page;
    f.index = {static_cast<unsigned>(i), 0, 0};
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_main, 0);
#if defined(SIMT_TSAN)
    f.tsan = __tsan_create_fiber(0);
    L.tsan_fibers[block_index].push_back(f.tsan);
#endif
  }
  std::vector<int> ready(n);
  std::iota(ready.begin(), ready.end(), 0);
  shuffle_if_seeded(b, ready);
  for (;;) {
    for (size_t k = 0; k < ready.size() && !b.aborted && !L.failed.load(std::memory_order_relaxed); ++k)
      enter(b, b.fibers[ready[k]]);
    ready.clear();
    if (b.aborted || L.failed.load(std::memory_order_relaxed)) break;
    complete_warps(b, ready);
    if (b.aborted) break;
    if (!ready.empty()) continue;
    if (std::all_of(b.fibers.begin(), b.fibers.end(), [](const Fiber& f) { return f.state == State::Done; })) break;
    release_barrier_or_fail(b, ready);
    if (b.aborted) break;
  }
  tl_block = nullptr;
#if defined(SIMT_TSAN)
  __tsan_acquire(&b.tsan_end);  // as cudaDeviceSynchronize: the host sees what the threads did
#endif
#if defined(SIMT_ASAN)
  __asan_unpoison_memory_region(b.stacks, b.stacks_bytes);  // abandoned frames leave poisoned shadow
#endif
#if defined(SIMT_TSAN)
  // Freed only after the host joined every block: reused memory or thread ids would hide races.
  L.deferred_stacks[block_index] = b.stacks;
  L.deferred_shared[block_index] = b.shared;
#else
  munmap(b.stacks, b.stacks_bytes);
  std::free(b.shared);
#endif
}

}  // namespace

// ---- what the kernels call ------------------------------------------------------------------------

const Index3& thread_index() { return tl_block->current->index; }
const Index3& block_index() { return tl_block->index; }
const Index3& block_dim() { return tl_block->launch->block_dim; }
const Index3& grid_dim() { return tl_block->launch->grid_dim; }
void* dynamic_shared() { return tl_block->shared; }

void syncthreads(const char* file, int line) {
  Block& b = *tl_block;
  Fiber& f = *b.current;
  char* sync = &b.tsan_phase[b.phase & 1];
#if defined(SIMT_TSAN)
  __tsan_release(sync);
#endif
  f.state = State::Barrier;
  f.file = file;
  f.line = line;
  leave(b, f, false);
#if defined(SIMT_TSAN)
  __tsan_acquire(sync);
#endif
  (void)sync;
}

uint64_t shuffle_down(unsigned mask, uint64_t bits, unsigned delta, int width, const char* file, int line) {
  Block& b = *tl_block;
  Fiber& f = *b.current;
  if (width <= 0 || width > kWarp || (width & (width - 1)))
    device_assert_fail("__shfl_down_sync: width must be a power of 2 up to 32", file, line, "__shfl_down_sync");
  f.state = State::Warp;
  f.file = file;
  f.line = line;
  f.mask = mask;
  f.delta = delta;
  f.width = width;
  f.value = bits;
  leave(b, f, false);
  return f.result;
}

void threadfence() {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
#if defined(SIMT_TSAN)
  __tsan_release(&g_fence);
  __tsan_acquire(&g_fence);
#endif
}

void device_assert_fail(const char* message, const char* file, int line, const char* function) {
  Block& b = *tl_block;
  Fiber& f = *b.current;
  // CUDA's wording: file:line: function: block: [x,0,0], thread: [x,0,0] Assertion `...` failed.
  fail(b, kErrorAssert, std::string(file) + ":" + std::to_string(line) + ": " + function + ": block: [" +
                            std::to_string(b.index.x) + ",0,0], thread: [" + std::to_string(f.index.x) +
                            ",0,0] Assertion `" + message + "` failed.");
  f.state = State::Done;
  leave(b, f, true);
  std::abort();
}

int multiprocessors() { return static_cast<int>(std::max(1L, env_int("MARSOPS_EMULATED_SMS", 132))); }

const char* last_launch_message() { return g_last_message.c_str(); }

int run_grid(int grid, int block, size_t shared_bytes, void (*body)(void*), void* context) {
  g_last_message.clear();
  if (grid < 1 || block < 1 || block > 1024) {
    g_last_message = "grid " + std::to_string(grid) + " x block " + std::to_string(block);
    return kErrorInvalidConfiguration;
  }
  if (shared_bytes > 48 * 1024) {  // more needs cudaFuncSetAttribute, which no launcher calls
    g_last_message = std::to_string(shared_bytes) + " bytes of dynamic shared memory (48 KB without opt-in)";
    return kErrorInvalidValue;
  }
  Launch L;
  L.grid_dim = {static_cast<unsigned>(grid), 1, 1};
  L.block_dim = {static_cast<unsigned>(block), 1, 1};
  L.shared_bytes = shared_bytes;
  L.body = body;
  L.context = context;
  L.seed = static_cast<uint64_t>(env_int("MARSOPS_EMULATED_SEED", 0));
  L.tsan_fibers.resize(grid);
  L.deferred_stacks.assign(grid, nullptr);
  L.deferred_shared.assign(grid, nullptr);
  long concurrent = env_int("MARSOPS_EMULATED_CONCURRENT_BLOCKS", 2);
  if (concurrent <= 0 || concurrent > grid) concurrent = grid;
  std::vector<unsigned> order(grid);
  std::iota(order.begin(), order.end(), 0u);
  if (L.seed) std::shuffle(order.begin(), order.end(), std::mt19937_64(L.seed));
  std::deque<std::thread> running;
  for (unsigned b : order) {
    if (static_cast<long>(running.size()) == concurrent) {
      running.front().join();
      running.pop_front();
    }
    if (L.failed.load()) break;  // a failed launch starts no more blocks
    running.emplace_back(run_block, &L, b);
  }
  for (std::thread& t : running) t.join();
#if defined(SIMT_TSAN)
  for (auto& fibers : L.tsan_fibers)
    for (void* f : fibers) __tsan_destroy_fiber(f);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  for (char* s : L.deferred_stacks)
    if (s) munmap(s, (kStackBytes + page) * block);
  for (void* s : L.deferred_shared) std::free(s);
#endif
  g_last_message = L.message;
  return L.error;
}

}  // namespace simt
