// CPU implementation of the Lovász-Softmax loss (semantics: marsops/lovasz.py), in three passes:
//   1. the softmax of every pixel and its label (SIMD, lovasz_kernel.h), into class-major buffers;
//   2. per (group, class), in parallel: the errors e = |[y = c] - p_c| of the group's valid pixels,
//      sorted in decreasing order by an LSD radix sort (no comparison sort, O(n)), then one walk that
//      accumulates Berman's lovasz_grad g_k, the loss dot(e_sorted, g) and, for the gradient,
//      dL/dp_c of each pixel = weight * g_k * (fg ? -1 : 1);
//   3. the gradient through the softmax (lovasz_kernel.h: loops the compiler vectorizes per capability).
// Compute in fp32 (fp64 for fp64 logits); the cumulative counts are exact integers and the loss
// and the Jaccard terms are accumulated in double. Deterministic for any thread count.
#include <algorithm>
#include <cstring>

#include "../focal_common.h"
#include "buffer_pool.h"
#include "kernels.h"

namespace marsops::cpu {
namespace {

constexpr int64_t kChunk = 4096;

// The radix sort key of an error in [0, 1] (or NaN): its bits, which order as unsigned integers
// for non-negative floats, inverted so that an ascending sort gives decreasing errors; ties keep
// pixel order (the LSD sort is stable).
template <typename acc_t> struct KeyOf;
template <> struct KeyOf<float> { using type = uint32_t; };
template <> struct KeyOf<double> { using type = uint64_t; };

template <typename acc_t, typename key_t = typename KeyOf<acc_t>::type>
key_t error_key(acc_t e) {
  key_t bits;
  std::memcpy(&bits, &e, sizeof bits);
  return ~bits;
}

template <typename acc_t, typename key_t = typename KeyOf<acc_t>::type>
acc_t key_error(key_t key) {
  const key_t bits = ~key;
  acc_t e;
  std::memcpy(&e, &bits, sizeof e);
  return e;
}

// A valid pixel of a (group, class) row: its error's key, and its index in the group times 2
// plus its foreground flag.
template <typename key_t>
struct Item {
  key_t key;
  uint32_t value;
};

// Sorts items by key, stable (LSD radix, 11-bit digits: 3 passes for fp32 keys, 6 for fp64);
// skips the digits every key shares. Returns the sorted array: items or tmp.
template <typename key_t>
Item<key_t>* radix_sort(Item<key_t>* items, Item<key_t>* tmp, int64_t n) {
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  constexpr int kDigits = (8 * static_cast<int>(sizeof(key_t)) + kBits - 1) / kBits;
  auto digit = [](key_t key, int d) { return static_cast<int>((key >> (d * kBits)) & (kBuckets - 1)); };
  std::vector<uint32_t> hist(kDigits * kBuckets, 0);  // n < 2^31
  for (int64_t i = 0; i < n; ++i)
    for (int d = 0; d < kDigits; ++d) ++hist[d * kBuckets + digit(items[i].key, d)];
  for (int d = 0; d < kDigits; ++d) {
    uint32_t* h = hist.data() + d * kBuckets;
    if (n == 0 || h[digit(items[0].key, d)] == n) continue;  // one value for this digit: nothing moves
    uint32_t offset = 0;
    for (int b = 0; b < kBuckets; ++b) {
      const uint32_t count = h[b];
      h[b] = offset;
      offset += count;
    }
    for (int64_t i = 0; i < n; ++i) tmp[h[digit(items[i].key, d)]++] = items[i];
    std::swap(items, tmp);
  }
  return items;
}

template <typename acc_t>
struct LovaszClass {
  using key_t = typename KeyOf<acc_t>::type;
  const acc_t* probs;    // class c's row of the group's pixels
  const int32_t* labels; // the group's labels (-1: ignored)
  int64_t pixels;        // in the group
  int32_t c;
  acc_t* dprobs;         // class c's row of d(loss)/d(p) for the group's pixels, or nullptr

  // The class's loss; with dprobs, writes weight * dloss_c/dp_c for every pixel of the group.
  double run(double weight, std::vector<Item<key_t>>& items) const {
    items.resize(2 * pixels);
    int64_t n = 0, gts = 0;
    for (int64_t i = 0; i < pixels; ++i) {
      const int32_t y = labels[i];
      if (y < 0) {
        if (dprobs) dprobs[i] = acc_t(0);
        continue;
      }
      const bool fg = y == c;
      items[n] = {error_key<acc_t>(fg ? acc_t(1) - probs[i] : probs[i]),
                  static_cast<uint32_t>(i) << 1 | static_cast<uint32_t>(fg)};
      gts += fg;
      ++n;
    }
    const Item<key_t>* sorted = radix_sort(items.data(), items.data() + pixels, n);
    double loss = 0, previous = 0;
    int64_t cum_fg = 0, cum_bg = 0;
    for (int64_t j = 0; j < n; ++j) {
      const bool fg = sorted[j].value & 1;
      cum_fg += fg;
      cum_bg += !fg;
      const double jaccard = 1.0 - static_cast<double>(gts - cum_fg) / static_cast<double>(gts + cum_bg);
      const double g = jaccard - previous;
      previous = jaccard;
      loss += static_cast<double>(key_error<acc_t>(sorted[j].key)) * g;
      if (dprobs) dprobs[sorted[j].value >> 1] = static_cast<acc_t>(fg ? -weight * g : weight * g);
    }
    return loss;
  }
};

std::tuple<Tensor, Tensor> lovasz_softmax_forward_cpu(const Tensor& logits, const Tensor& target,
                                                      std::vector<int64_t> classes, bool only_present, bool per_image,
                                                      int64_t ignore_index, bool compute_grad) {
  const auto s = focal_shapes(logits, target, std::nullopt, 0.0, kMean);
  const int64_t N = s.N, C = s.C, P = s.P, pixels = N * P;
  for (int64_t c : classes)
    MARSOPS_CHECK(c >= 0 && c < C, "marsops.lovasz_softmax_loss: class ", c, " is outside [0, ", C, ")");
  const int64_t groups = per_image ? N : 1, group_pixels = per_image ? P : pixels;
  MARSOPS_CHECK(group_pixels < (int64_t{1} << 31), "marsops.lovasz_softmax_loss: the CPU kernel sorts at most 2^31 "
                "pixels at once (per image with per_image=True, else the batch)");
  const bool fp64 = logits.scalar_type() == ScalarType::Double;
  const ScalarType compute = fp64 ? ScalarType::Double : ScalarType::Float;
  // Work buffers from the pool (buffer_pool.h): memory already faulted in after the first call.
  const Tensor probs_buf = pooled_empty({C * pixels}, compute);
  const Tensor dprobs_buf = compute_grad ? pooled_empty({C * pixels}, compute) : Tensor();
  const Tensor labels_buf = pooled_empty({pixels}, ScalarType::Int);
  void* const probs = probs_buf.mutable_data_ptr();
  void* const dprobs = compute_grad ? dprobs_buf.mutable_data_ptr() : nullptr;
  int32_t* const labels = labels_buf.mutable_data_ptr<int32_t>();
  LovaszArgs a{};
  a.logits = s.logits.const_data_ptr();
  a.logits_dtype = logits.scalar_type();
  a.class_last = s.class_last;
  a.target = s.target.const_data_ptr();
  a.target_dtype = s.target.scalar_type();
  a.N = N;
  a.C = C;
  a.P = P;
  a.ignore_index = ignore_index;
  a.probs = probs;
  a.labels = labels;
  a.dprobs = dprobs;
  const auto& kernels = simd_kernels();

  // Pass 1: softmax and labels.
  const int64_t num_chunks = (pixels + kChunk - 1) / kChunk;
  std::vector<FocalStats> label_stats(num_chunks);
  st::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t chunk = c0; chunk < c1; ++chunk)
      label_stats[chunk] = kernels.lovasz_probs(a, chunk * kChunk, std::min(pixels, (chunk + 1) * kChunk));
  });
  FocalStats labels_seen;
  for (const auto& ls : label_stats) labels_seen.merge(ls);
  MARSOPS_CHECK(!labels_seen.bad, "marsops.lovasz_softmax_loss: target contains label ", labels_seen.bad_label,
                ", outside [0, ", C, ") and not ignore_index (", ignore_index, ")");

  // The classes each group scores, and so each scored class' weight in the loss.
  std::vector<char> present(groups * C, 0);
  st::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t i = g * group_pixels; i < (g + 1) * group_pixels; ++i)
        if (labels[i] >= 0) present[g * C + labels[i]] = 1;
  });
  std::vector<char> scored(groups * C, 0);
  std::vector<double> weight(groups, 0.0);
  for (int64_t g = 0; g < groups; ++g) {
    int64_t count = 0;
    for (int64_t c : classes) {
      const bool take = !only_present || present[g * C + c];
      scored[g * C + c] = take;
      count += take;
    }
    weight[g] = count ? 1.0 / (static_cast<double>(count) * static_cast<double>(groups)) : 0.0;
  }

  // Pass 2: the sorts, one (group, class) pair per task; an unscored pair only zeroes its gradient.
  std::vector<double> losses(groups * C, 0.0);
  auto run_pairs = [&](auto acc_tag) {
    using acc_t = decltype(acc_tag);
    st::parallel_for(0, groups * C, 1, [&](int64_t t0, int64_t t1) {
      std::vector<Item<typename KeyOf<acc_t>::type>> items;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t g = t / C, c = t % C, first = g * group_pixels;
        acc_t* dp = compute_grad ? static_cast<acc_t*>(dprobs) + c * pixels + first : nullptr;
        if (!scored[t]) {
          if (dp) std::fill(dp, dp + group_pixels, acc_t(0));
          continue;
        }
        const LovaszClass<acc_t> job{static_cast<const acc_t*>(probs) + c * pixels + first,
                                     labels + first, group_pixels, static_cast<int32_t>(c), dp};
        losses[t] = job.run(weight[g], items);
      }
    });
  };
  if (fp64) {
    run_pairs(double{});
  } else {
    run_pairs(float{});
  }
  double loss_value = 0;
  for (int64_t t = 0; t < groups * C; ++t)
    if (scored[t]) loss_value += losses[t] * weight[t / C];

  Tensor loss = empty_on(logits, {}, logits.scalar_type());
  st::fill_(loss, within_range(loss_value, logits.scalar_type()));
  if (!compute_grad) return {loss, empty_on(logits, {0}, logits.scalar_type())};

  // Pass 3: through the softmax, in the logits' layout.
  Tensor grad = empty_gradient(logits, s.class_last, pooled_empty);
  a.grad = grad.mutable_data_ptr();
  st::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t chunk = c0; chunk < c1; ++chunk)
      kernels.lovasz_grad(a, chunk * kChunk, std::min(pixels, (chunk + 1) * kChunk));
  });
  return {loss, grad};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(marsops, CPU, m) { m.impl("lovasz_softmax_forward", TORCH_BOX(&lovasz_softmax_forward_cpu)); }

}  // namespace marsops::cpu
