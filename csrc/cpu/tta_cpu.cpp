// CPU implementation of marsops::views_argmax: rows of output pixels in parallel, each row's
// predictions from the SIMD kernel (tta_kernel.h: the K views read in place through the outputs'
// strides), then private confusion counts per task.
#include <mutex>

#include "../tta_checks.h"
#include "kernels.h"

namespace marsops::cpu {
namespace {

constexpr int64_t kRowsPerTask = 16;

std::tuple<Tensor, Tensor> views_argmax_cpu(const Tensor& outputs, const std::optional<Tensor>& target,
                                            std::optional<int64_t> ignore_index, bool softmax, bool want_pred,
                                            std::vector<int64_t> views, bool volume) {
  const auto s = views_argmax_shapes(outputs, target, views, volume);
  const ViewsGeometry g = s.g;
  Tensor pred = empty_on(outputs, want_pred ? views_pred_shape(outputs, g) : std::vector<int64_t>{0}, ScalarType::Long);
  const bool count = target.has_value();
  Tensor confusion = empty_on(outputs, count ? std::vector<int64_t>{g.C, g.C} : std::vector<int64_t>{0},
                              ScalarType::Long);
  if (count) st::zero_(confusion);
  const int64_t rows = g.N * g.D * g.H;
  int64_t* pred_out = want_pred ? pred.mutable_data_ptr<int64_t>() : nullptr;
  int64_t* counts = count ? confusion.mutable_data_ptr<int64_t>() : nullptr;
  bool bad = false;
  int64_t bad_label = 0;
  std::mutex mutex;
  dispatch_floating(outputs.scalar_type(), "marsops.flip4_argmax", [&](auto x_tag) {
    using T = decltype(x_tag);
    const T* y = static_cast<const T*>(s.outputs.const_data_ptr());
    auto with_target = [&](auto t_tag) {
      using tgt_t = decltype(t_tag);
      const tgt_t* labels = count ? static_cast<const tgt_t*>(s.target.const_data_ptr()) : nullptr;
      st::parallel_for(0, rows, kRowsPerTask, [&](int64_t r0, int64_t r1) {
        std::vector<int64_t> hist(count ? g.C * g.C : 0, 0);
        std::vector<int64_t> row_pred(pred_out ? 0 : g.W);
        bool local_bad = false;
        int64_t local_label = 0;
        for (int64_t r = r0; r < r1; ++r) {
          int64_t* preds = pred_out ? pred_out + r * g.W : row_pred.data();
          simd_kernels().views_argmax_row(y, outputs.scalar_type(), g, softmax, r, preds);
          if (!count) continue;
          for (int64_t w = 0; w < g.W; ++w) {
            const int64_t pix = r * g.W + w;
            const int64_t p = preds[w];
            const int64_t t = static_cast<int64_t>(labels[pix]);
            if (ignore_index.has_value() && t == *ignore_index) continue;
            if (t < 0 || t >= g.C) {
              if (!local_bad) local_label = t;
              local_bad = true;
              continue;
            }
            hist[t * g.C + p] += 1;
          }
        }
        if (count) {
          std::lock_guard<std::mutex> lock(mutex);
          for (int64_t j = 0; j < g.C * g.C; ++j) counts[j] += hist[j];
          if (local_bad && !bad) {
            bad = true;
            bad_label = local_label;
          }
        }
      });
    };
    if (count) {
      dispatch_integral(s.target.scalar_type(), "marsops.flip4_argmax", with_target);
    } else {
      with_target(int64_t{});
    }
  });
  MARSOPS_CHECK(!bad, "marsops.flip4_argmax: target contains label ", bad_label, ", outside [0, ", g.C,
                ") and not ignore_index");
  return {pred, confusion};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(marsops, CPU, m) { m.impl("views_argmax", TORCH_BOX(&views_argmax_cpu)); }

}  // namespace marsops::cpu
