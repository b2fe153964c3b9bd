// The per-(group, class) sums of a region pass, in parallel and deterministic: the pixels of the
// flattened (N, P) index run in chunks; each chunk's sums land in its own rows (the groups its
// pixels span), added up in chunk order whatever the thread count.
#pragma once
#include <algorithm>
#include <vector>

#include "../stable.h"

namespace marsops::cpu {

// pass(begin, end, rows, first_group) adds a chunk's sums to rows (row 0 = group first_group) and
// returns its flags (a type with merge()). Returns float64 (groups, C, width), groups = N when
// per_image, else 1; the merged flags go to flags.
template <typename Flags, typename Pass>
Tensor chunked_group_sums(const Tensor& like, int64_t N, int64_t C, int64_t P, int64_t width, bool per_image,
                          int64_t chunk_size, Flags& flags, Pass&& pass) {
  const int64_t groups = per_image ? N : 1, total = N * P;
  const int64_t num_chunks = (total + chunk_size - 1) / chunk_size;
  const int64_t row = C * width;
  auto first_group = [&](int64_t chunk) { return per_image ? chunk * chunk_size / std::max<int64_t>(P, 1) : 0; };
  auto last_group = [&](int64_t chunk) {
    return per_image ? (std::min(total, (chunk + 1) * chunk_size) - 1) / std::max<int64_t>(P, 1) : 0;
  };
  std::vector<std::vector<double>> parts(num_chunks);
  std::vector<Flags> part_flags(num_chunks);
  st::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      parts[chunk].assign((last_group(chunk) - first_group(chunk) + 1) * row, 0.0);
      part_flags[chunk] = pass(chunk * chunk_size, std::min(total, (chunk + 1) * chunk_size), parts[chunk].data(),
                               first_group(chunk));
    }
  });
  Tensor stats = empty_on(like, {groups, C, width}, ScalarType::Double);
  st::zero_(stats);
  double* out = stats.mutable_data_ptr<double>();
  for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
    double* rows = out + first_group(chunk) * row;
    for (size_t j = 0; j < parts[chunk].size(); ++j) rows[j] += parts[chunk][j];
    flags.merge(part_flags[chunk]);
  }
  return stats;
}

}  // namespace marsops::cpu
