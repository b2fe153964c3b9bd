// How long the class-last transposes take per pixel on this CPU (simd.h's class_last picks among
// them by these numbers): a block of L pixels x C classes ([L][C] fp32) to a [C][L] tile (gather)
// and back (scatter), C a compile-time constant as in the kernels, 256 blocks (in L1/L2) 2000 times.
// Not part of the package build; compile and run it once per capability:
//
//   T=$(python -c "import torch.utils.cpp_extension as e; print(e.include_paths()[0])")
//   g++ -O3 -mavx2 -mfma -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2 -Icsrc/cpu -I$T \
//       benchmarks/class_last_transposes.cpp -o /tmp/t_avx2 && /tmp/t_avx2
//   g++ -O3 -mavx512f -mavx512dq -mavx512bw -mavx512vl -mfma -DCPU_CAPABILITY=AVX512 \
//       -DCPU_CAPABILITY_AVX512 -Icsrc/cpu -I$T benchmarks/class_last_transposes.cpp -o /tmp/t_avx512 && /tmp/t_avx512
#include <chrono>
#include <cstdio>
#include <vector>

#include "transpose_rows.h"
#ifdef CPU_CAPABILITY_AVX512
#include "transpose16.h"
#endif

using namespace marsops::cpu::CPU_CAPABILITY;
constexpr int L = transpose_rows::L;

template <int C> __attribute__((noinline)) void scalar_gather(const float* src, float* tile) {
  for (int c = 0; c < C; ++c)
    for (int i = 0; i < L; ++i) tile[c * L + i] = src[i * C + c];
}
template <int C> __attribute__((noinline)) void scalar_scatter(const float* tile, float* dst) {
  for (int i = 0; i < L; ++i)
    for (int c = 0; c < C; ++c) dst[i * C + c] = tile[c * L + i];
}
template <int C> __attribute__((noinline)) void rows_gather(const float* src, float* tile) {
  transpose_rows::gather<C>(src, tile);
}
template <int C> __attribute__((noinline)) void rows_scatter(const float* tile, float* dst) {
  transpose_rows::scatter<C>(tile, dst);
}
// Odd class counts below L (transpose_rows::odd, where it applies): blends and one permute a row.
template <int C> __attribute__((noinline)) void odd_gather(const float* src, float* tile) {
  if constexpr (transpose_rows::odd::applies<C>) {
    transpose_rows::R r[C];
    transpose_rows::odd::class_rows<C>(src, r);
    for (int c = 0; c < C; ++c) transpose_rows::store(tile + c * L, r[c]);
  }
}
template <int C> __attribute__((noinline)) void odd_scatter(const float* tile, float* dst) {
  if constexpr (transpose_rows::odd::applies<C>) {
    transpose_rows::R r[C];
    for (int c = 0; c < C; ++c) r[c] = transpose_rows::load(tile + c * L);
    transpose_rows::odd::scatter_rows<C>(r, dst);
  }
}
#ifdef CPU_CAPABILITY_AVX512
template <int C> __attribute__((noinline)) void pairs_gather(const float* src, float* tile) {
  if constexpr (C <= transpose16::kMaxClasses) transpose16::gather<C>(src, tile);
}
template <int C> __attribute__((noinline)) void pairs_scatter(const float* tile, float* dst) {
  if constexpr (C <= transpose16::kMaxClasses) transpose16::scatter<C>(tile, dst);
}
#endif

template <typename F>
double ns_per_pixel(F&& f) {
  constexpr int blocks = 256, reps = 2000;
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r)
    for (int b = 0; b < blocks; ++b) f(b);
  return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() /
         (double(reps) * blocks * L);
}

template <int C>
void row() {
  if constexpr (C <= transpose_rows::kMaxClasses) {
    std::vector<float> src(256 * L * C, 1.0f), dst(256 * L * C), tile(C * L);
    auto time = [&](auto g, auto s) {
      const double gather = ns_per_pixel([&](int b) { g(src.data() + b * L * C, tile.data()); });
      const double scatter = ns_per_pixel([&](int b) { s(tile.data(), dst.data() + b * L * C); });
      std::printf(" %6.2f %6.2f |", gather, scatter);
    };
    std::printf("| %2d |", C);
    time(scalar_gather<C>, scalar_scatter<C>);
    time(rows_gather<C>, rows_scatter<C>);
#ifdef CPU_CAPABILITY_AVX512
    if constexpr (C <= transpose16::kMaxClasses) {
      time(pairs_gather<C>, pairs_scatter<C>);
    } else {
      std::printf("      -      - |");
    }
#endif
    if constexpr (transpose_rows::odd::applies<C>) time(odd_gather<C>, odd_scatter<C>);
    std::printf("\n");
  }
}

int main() {
  std::printf("ns per pixel, L = %d lanes: | C | scalar gather, scatter | %dx%d squares gather, scatter |%s\n", L, L, L,
#ifdef CPU_CAPABILITY_AVX512
              " pairwise permutes gather, scatter |"
#else
              ""
#endif
  );
  std::printf("(then, for odd class counts where transpose_rows::odd applies: blends + permutes gather, scatter |)\n");
  row<2>(); row<3>(); row<5>(); row<7>(); row<9>(); row<10>(); row<12>(); row<16>(); row<19>(); row<24>(); row<32>();
}
