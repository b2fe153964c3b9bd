// CPU implementation of marsops::confusion_matrix: the SIMD kernel of this CPU's capability over
// fixed-size chunks in parallel, each piece into a private histogram, merged at the end.
#include <algorithm>
#include <mutex>

#include "../confusion_common.h"
#include "kernels.h"
#include "parallel_chunks.h"

namespace marsops::cpu {
namespace {

constexpr int64_t kChunk = 8192;

Tensor confusion_matrix_cpu(const Tensor& input, const Tensor& target, int64_t num_classes,
                            std::optional<int64_t> ignore_index) {
  const auto s = confusion_shapes(input, target, num_classes);
  // The SIMD argmax keeps class indices in float lanes: exact up to 2^24.
  MARSOPS_CHECK(!s.from_logits || num_classes <= (int64_t{1} << 24), "marsops.confusion_matrix: the CPU kernel takes "
                "the argmax of up to 2^24 classes, got ", num_classes, "; use backend='reference'");
  Tensor out = empty_on(target, {num_classes, num_classes}, ScalarType::Long);
  st::zero_(out);
  const int64_t total = s.N * s.P;
  if (total == 0) return out;
  const ConfusionArgs a{s.input.const_data_ptr(), s.input.scalar_type(), s.from_logits, s.class_last,
                        s.target.const_data_ptr(), s.target.scalar_type(), s.N, num_classes, s.P,
                        ignore_index.has_value(), ignore_index.value_or(0)};
  int64_t* counts = out.mutable_data_ptr<int64_t>();
  ConfusionFlags flags;
  std::mutex mutex;
  const auto& kernels = simd_kernels();
  const int64_t num_chunks = (total + kChunk - 1) / kChunk;
  parallel_chunks(num_chunks, [&](auto next) {
    std::vector<int64_t> local(num_classes * num_classes, 0);
    ConfusionFlags local_flags;
    for (int64_t chunk = next(); chunk < num_chunks; chunk = next()) {
      ConfusionFlags chunk_flags;
      kernels.confusion(a, chunk * kChunk, std::min(total, (chunk + 1) * kChunk), local.data(), chunk_flags);
      local_flags.merge(chunk_flags);
    }
    std::lock_guard<std::mutex> lock(mutex);
    for (int64_t j = 0; j < num_classes * num_classes; ++j) counts[j] += local[j];
    flags.merge(local_flags);
  });
  MARSOPS_CHECK(!flags.bad_target, "marsops.confusion_matrix: target contains label ", flags.bad_value,
                ", outside [0, ", num_classes, ") and not ignore_index");
  MARSOPS_CHECK(!flags.bad_pred, "marsops.confusion_matrix: predictions contain label ", flags.bad_value,
                ", outside [0, ", num_classes, ")");
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(marsops, CPU, m) { m.impl("confusion_matrix", TORCH_BOX(&confusion_matrix_cpu)); }

}  // namespace marsops::cpu
