// The class-last transposes (simd.h's class_last: transpose16.h, transpose_rows.h) stay inside
// their block of L pixels x C classes, for every C with a compiled copy (1..32): each block here
// ends where a PROT_NONE page begins, then begins where one ends, so a read or write past either
// end faults, and the memory around it is checked unchanged after a scatter. The values are
// checked against the scalar transpose; transpose_rows' parts are also called directly. The
// class-last argmax (argmax_tree.h, both its copies and its table) is checked the same way
// against the rule.
// Built and run by tests/test_class_last_bounds.py, once per CPU capability.
#include <sys/mman.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <utility>

#include "argmax_tree.h"
#include "simd.h"

using namespace marsops::cpu::CPU_CAPABILITY;
constexpr int L = at::vec::Vectorized<float>::size();
constexpr long kPage = 4096;

// A block of n floats next to a guard page: ending where it begins (AFTER) or beginning where it
// ends; the rest of the mapping is filled with sentinels.
enum Side { AFTER, BEFORE };
struct Guarded {
  char* mem;
  float* block;
  int n;
  Guarded(int n_, Side side) : n(n_) {
    mem = static_cast<char*>(mmap(nullptr, 4 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    char* guard = mem + (side == AFTER ? 3 : 0) * kPage;
    if (mem == MAP_FAILED || mprotect(guard, kPage, PROT_NONE) != 0) {
      perror("mmap");
      std::exit(2);
    }
    float* open = reinterpret_cast<float*>(side == AFTER ? mem : mem + kPage);
    for (long i = 0; i < 3 * kPage / 4; ++i) open[i] = -1234.5f;
    block = side == AFTER ? reinterpret_cast<float*>(guard) - n : open;
  }
  // The sentinels around the block are untouched (after a scatter into it).
  bool outside_untouched(Side side) const {
    const float* open = reinterpret_cast<const float*>(side == AFTER ? mem : mem + kPage);
    for (long i = 0; i < 3 * kPage / 4; ++i)
      if ((open + i < block || open + i >= block + n) && open[i] != -1234.5f) return false;
    return true;
  }
  ~Guarded() { munmap(mem, 4 * kPage); }
};

template <int C>
int check(Side side) {
  int bad = 0;
  Guarded src(L * C, side);
  for (int i = 0; i < L * C; ++i) src.block[i] = 0.25f * i - 7.f;
  float tile[L * C];
  class_last::gather<C, L>(src.block, tile);
  for (int c = 0; c < C; ++c)
    for (int i = 0; i < L; ++i) bad += tile[c * L + i] != src.block[i * C + c];
  Guarded dst(L * C, side);
  class_last::scatter<C, L>(tile, dst.block);
  for (int i = 0; i < L * C; ++i) bad += dst.block[i] != src.block[i];
  bad += !dst.outside_untouched(side);
#ifdef MARSOPS_TRANSPOSE_ROWS
  // The squares' and narrow rows' parts directly, including class counts no caller gives them.
  for (int j = 0; j < C; j += L) {
    transpose_rows::R r[L];
    transpose_rows::class_rows<C>(src.block, j, r);
    for (int k = 0; k < L && j + k < C; ++k) {
      float lanes[L];
      std::memcpy(lanes, &r[k], sizeof(lanes));
      for (int i = 0; i < L; ++i) bad += lanes[i] != src.block[i * C + j + k];
    }
  }
#endif
  if constexpr (class_last::rows_in_registers<C, L>()) {
    Vectorized<float> rows[C];
    class_last::rows<C>(src.block, rows);
    for (int c = 0; c < C; ++c) {
      float lanes[L];
      rows[c].store(lanes);
      for (int i = 0; i < L; ++i) bad += lanes[i] != src.block[i * C + c];
    }
    Guarded out(L * C, side);
    class_last::scatter_rows<C>(rows, out.block);
    for (int i = 0; i < L * C; ++i) bad += out.block[i] != src.block[i];
    bad += !out.outside_untouched(side);
  }
  if (bad) std::printf("C = %d, guard %s the block: %d wrong values\n", C, side == AFTER ? "after" : "before", bad);
  return bad;
}

#if defined(MARSOPS_ARGMAX_TREE)
// torch.argmax's rule for one pixel's C values.
int argmax_rule(const float* v, int C) {
  int best = 0;
  for (int c = 1; c < C; ++c)
    if (!std::isnan(v[best]) && (std::isnan(v[c]) || v[c] > v[best])) best = c;
  return best;
}
// argmax_tree::block on blocks against guard pages: few distinct values (ties everywhere), signed
// zeros and infinities, and some blocks with a NaN (the rule's pass).
template <int C>
int check_argmax_tree(Side side, std::mt19937& rng) {
  int bad = 0;
  const float values[] = {0.f, -0.f, 1.f, 2.f, -1.f, INFINITY, -INFINITY, 3.5f};
  for (int trial = 0; trial < 200; ++trial) {
    Guarded src(L * C, side);
    for (int i = 0; i < L * C; ++i) src.block[i] = values[rng() % (trial % 2 ? 3 : 8)];
    if (trial % 4 == 3) src.block[rng() % (L * C)] = NAN;
    float got[L], table[L];  // the compile-time copy, and through the run-time C's table
    const argmax_tree::R a = argmax_tree::block<C>(src.block), b = argmax_tree::block(src.block, C);
    std::memcpy(got, &a, sizeof(got));
    std::memcpy(table, &b, sizeof(table));
    for (int i = 0; i < L; ++i) {
      const float want = static_cast<float>(argmax_rule(src.block + i * C, C));
      bad += (got[i] != want) + (table[i] != want);
    }
  }
  if (bad) std::printf("argmax_tree C = %d, guard %s the block: %d wrong pixels\n", C, side == AFTER ? "after" : "before", bad);
  return bad;
}
template <int... Cs>
int check_argmax_trees(std::integer_sequence<int, Cs...>) {
  std::mt19937 rng(7);
  constexpr int k0 = argmax_tree::kMinClasses;
  return (check_argmax_tree<Cs + k0>(AFTER, rng) + ...) + (check_argmax_tree<Cs + k0>(BEFORE, rng) + ...);
}
#endif

template <int... Cs>
int check_all(std::integer_sequence<int, Cs...>) {
  return (check<Cs + 1>(AFTER) + ...) + (check<Cs + 1>(BEFORE) + ...);
}

int main() {
  int bad = check_all(std::make_integer_sequence<int, class_last::kMaxFixedClasses>{});
#if defined(MARSOPS_ARGMAX_TREE)
  bad += check_argmax_trees(std::make_integer_sequence<int, argmax_tree::kMaxClasses - argmax_tree::kMinClasses + 1>{});
#endif
  std::printf("%d lanes, classes 1..%d: %s\n", L, class_last::kMaxFixedClasses, bad ? "FAILED" : "ok");
  return bad != 0;
}
