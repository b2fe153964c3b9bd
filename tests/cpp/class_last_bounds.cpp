// The class-last transposes (simd.h's class_last: transpose16.h, transpose_rows.h) stay inside
// their block of L pixels x C classes, for every C with a compiled copy (1..32): each block here
// ends where a PROT_NONE page begins, so a read or write past it faults, and the memory before it
// is checked unchanged after a scatter. The values are checked against the scalar transpose.
// Built and run by tests/test_class_last_bounds.py, once per CPU capability.
#include <sys/mman.h>

#include <cstdio>
#include <utility>

#include "simd.h"

using namespace marsops::cpu::CPU_CAPABILITY;
constexpr int L = at::vec::Vectorized<float>::size();
constexpr long kPage = 4096;

// A block of n floats that ends at a guard page, after `before` floats of sentinels.
struct Guarded {
  char* mem;
  float* block;
  explicit Guarded(int n) {
    mem = static_cast<char*>(mmap(nullptr, 4 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (mem == MAP_FAILED || mprotect(mem + 3 * kPage, kPage, PROT_NONE) != 0) {
      perror("mmap");
      std::exit(2);
    }
    for (long i = 0; i < 3 * kPage / 4; ++i) reinterpret_cast<float*>(mem)[i] = -1234.5f;
    block = reinterpret_cast<float*>(mem + 3 * kPage) - n;
  }
  bool before_untouched() const {
    for (const float* p = reinterpret_cast<const float*>(mem); p < block; ++p)
      if (*p != -1234.5f) return false;
    return true;
  }
  ~Guarded() { munmap(mem, 4 * kPage); }
};

template <int C>
int check() {
  int bad = 0;
  Guarded src(L * C);
  for (int i = 0; i < L * C; ++i) src.block[i] = 0.25f * i - 7.f;
  float tile[L * C];
  class_last::gather<C, L>(src.block, tile);
  for (int c = 0; c < C; ++c)
    for (int i = 0; i < L; ++i) bad += tile[c * L + i] != src.block[i * C + c];
  Guarded dst(L * C);
  class_last::scatter<C, L>(tile, dst.block);
  for (int i = 0; i < L * C; ++i) bad += dst.block[i] != src.block[i];
  bad += !dst.before_untouched();
  if constexpr (class_last::rows_in_registers<C, L>()) {
    Vectorized<float> rows[C];
    class_last::rows<C>(src.block, rows);
    for (int c = 0; c < C; ++c) {
      float lanes[L];
      rows[c].store(lanes);
      for (int i = 0; i < L; ++i) bad += lanes[i] != src.block[i * C + c];
    }
    Guarded out(L * C);
    class_last::scatter_rows<C>(rows, out.block);
    for (int i = 0; i < L * C; ++i) bad += out.block[i] != src.block[i];
    bad += !out.before_untouched();
  }
  if (bad) std::printf("C = %d: %d wrong values\n", C, bad);
  return bad;
}

template <int... Cs>
int check_all(std::integer_sequence<int, Cs...>) {
  return (check<Cs + 1>() + ...);
}

int main() {
  const int bad = check_all(std::make_integer_sequence<int, class_last::kMaxFixedClasses>{});
  std::printf("%d lanes, classes 1..%d: %s\n", L, class_last::kMaxFixedClasses, bad ? "FAILED" : "ok");
  return bad != 0;
}
