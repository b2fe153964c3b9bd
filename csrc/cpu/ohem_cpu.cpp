// CPU implementation of marsops::ohem_select: which pixels online hard example mining keeps.
// One pass over the logits (ohem_kernel.h) writes every pixel's lp = log p_t and a histogram of
// it; the threshold log tau = max(log thresh, s[k]) (s: the valid lp ascending) comes from
// counting, never a sort: the histogram gives the bin of s[k], and a selection among that bin's
// keys its exact value (ties included). A last pass keeps the pixels with lp < log tau (NaN: kept,
// so that it reaches the loss).
#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>

#include "../focal_common.h"
#include "buffer_pool.h"
#include "kernels.h"

namespace marsops::cpu {
namespace {

constexpr int64_t kChunk = 4096;

// s[k] of the valid lp, from the histogram and a selection among the keys of s[k]'s bin.
template <typename acc_t>
double kth_smallest(const acc_t* lp, const int32_t* label, int64_t total, const std::vector<int64_t>& hist,
                    int64_t k) {
  int64_t b = 0, before = 0;
  while (before + hist[b] <= k) before += hist[b++];
  std::vector<decltype(ordered_key(acc_t{}))> in_bin;
  in_bin.reserve(hist[b]);
  for (int64_t i = 0; i < total; ++i)
    if (label[i] >= 0 && ohem_bin(lp[i]) == b) in_bin.push_back(ordered_key(lp[i]));
  auto nth = in_bin.begin() + (k - before);
  std::nth_element(in_bin.begin(), nth, in_bin.end());
  return static_cast<double>(from_ordered_key(*nth));
}

std::tuple<Tensor, Tensor> ohem_select_cpu(const Tensor& logits, const Tensor& target, int64_t ignore_index,
                                           double thresh, int64_t min_kept) {
  const auto s = focal_shapes(logits, target, std::nullopt, 0.0, kMean);
  MARSOPS_CHECK(thresh == thresh, "marsops.ohem_focal_loss: thresh must not be NaN");
  MARSOPS_CHECK(min_kept >= 0, "marsops.ohem_focal_loss: min_kept must be >= 0, got ", min_kept);
  // Labels are compared in the compute type (softmax_block.h): exact up to 2^24.
  MARSOPS_CHECK(s.C <= (int64_t{1} << 24), "marsops.ohem_focal_loss: the CPU kernel supports up to 2^24 classes");
  const bool fp64 = logits.scalar_type() == ScalarType::Double;
  const int64_t total = s.N * s.P;
  Tensor label = empty_on(logits, sizes_of(target), ScalarType::Int);
  Tensor lp = pooled_empty({total}, fp64 ? ScalarType::Double : ScalarType::Float);
  OhemArgs a{};
  a.logits = s.logits.const_data_ptr();
  a.logits_dtype = logits.scalar_type();
  a.class_last = s.class_last;
  a.target = s.target.const_data_ptr();
  a.target_dtype = s.target.scalar_type();
  a.N = s.N;
  a.C = s.C;
  a.P = s.P;
  a.ignore_index = ignore_index;
  a.log_thresh = std::log(thresh);
  a.lp = lp.mutable_data_ptr();
  a.label = label.mutable_data_ptr<int32_t>();

  const int64_t num_chunks = (total + kChunk - 1) / kChunk;
  std::vector<OhemCounts> counts(num_chunks);
  std::vector<int64_t> hist(kOhemBins, 0);
  std::mutex merge;
  const auto& kernels = simd_kernels();
  st::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<int64_t> local(kOhemBins, 0);  // integer counts: the sum is the same in any order
    for (int64_t c = c0; c < c1; ++c)
      counts[c] = kernels.ohem_probs(a, c * kChunk, std::min(total, (c + 1) * kChunk), local.data());
    std::lock_guard<std::mutex> lock(merge);
    for (int64_t b = 0; b < kOhemBins; ++b) hist[b] += local[b];
  });
  OhemCounts n;
  for (const auto& c : counts) n.merge(c);  // in chunk order: the first bad label
  MARSOPS_CHECK(!n.bad, "marsops.ohem_focal_loss: target contains label ", n.bad_label, ", outside [0, ", s.C,
                ") and not ignore_index (", ignore_index, ")");

  // s[k] only matters when it exceeds log thresh, that is when at most k values lie below it.
  double log_tau = a.log_thresh;
  if (n.valid > 0 && n.below <= std::min(min_kept, n.valid - 1)) {
    const int64_t k = std::min(min_kept, n.valid - 1);
    const double s_k = fp64 ? kth_smallest(lp.const_data_ptr<double>(), a.label, total, hist, k)
                            : kth_smallest(lp.const_data_ptr<float>(), a.label, total, hist, k);
    if (s_k > log_tau) log_tau = s_k;  // a NaN s[k] leaves log thresh
  }

  std::vector<int64_t> kept(num_chunks, 0);
  st::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t i0 = c * kChunk, i1 = std::min(total, (c + 1) * kChunk);
      int64_t k = 0;
      auto keep = [&](const auto* p) {
        for (int64_t i = i0; i < i1; ++i) {
          const bool drop = a.label[i] >= 0 && static_cast<double>(p[i]) >= log_tau;
          a.label[i] = drop ? -1 : a.label[i];
          k += a.label[i] >= 0;
        }
      };
      if (fp64) {
        keep(lp.const_data_ptr<double>());
      } else {
        keep(lp.const_data_ptr<float>());
      }
      kept[c] = k;
    }
  });
  int64_t num_kept = 0;
  for (int64_t k : kept) num_kept += k;
  Tensor stats = empty_on(logits, {3}, ScalarType::Double);
  double* out = stats.mutable_data_ptr<double>();
  out[0] = log_tau;
  out[1] = static_cast<double>(num_kept);
  out[2] = static_cast<double>(n.valid);
  return {label, stats};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(marsops, CPU, m) { m.impl("ohem_select", TORCH_BOX(&ohem_select_cpu)); }

}  // namespace marsops::cpu
