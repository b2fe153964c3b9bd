// Runs every path of the real CUDA kernels (csrc/cuda/*_kernels.cuh) on the SIMT emulation, at the
// launch configurations launch_config.h gives real GPUs, and checks them against plain loops
// written here. Built three times by tests/cuda_emulation/run.py: plain, under ThreadSanitizer and
// under AddressSanitizer + UndefinedBehaviorSanitizer.
//   kernel_checks [--quick]   --quick: the sanitizer runs' small grids (2-8 blocks, all at once)
// Prints one line per failure and ends with "kernel_checks: N passed, M failed".
#include "harness.h"
// The real kernels, as nvcc compiles them.
#include "../../csrc/cuda/confusion_kernels.cuh"
#include "../../csrc/cuda/flip_kernels.cuh"
#include "../../csrc/cuda/focal_kernels.cuh"
#include "../../csrc/cuda/launch_config.h"
#include "../../csrc/cuda/tta_kernels.cuh"

#include <algorithm>
#include <cstring>
#include <functional>

using namespace marsops;
using namespace marsops::cuda;
using Half = torch::headeronly::Half;

namespace {

harness::Counter counter;
std::mt19937_64 rng(20261203);

template <typename T>
std::vector<T> random_logits(int64_t n, double scale) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<T> v(n);
  for (auto& e : v) e = static_cast<T>(normal(rng));
  return v;
}

template <typename Y>
std::vector<Y> random_labels(int64_t n, int64_t C, int64_t ignore_value, double ignored_share) {
  std::uniform_int_distribution<int64_t> label(0, C - 1);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<Y> v(n);
  for (auto& e : v) e = static_cast<Y>(u(rng) < ignored_share ? ignore_value : label(rng));
  return v;
}

// Offset of (n, c, p) in (N, C, P) logits, or in (N, P, C) when class_last.
int64_t at(bool class_last, int64_t N, int64_t C, int64_t P, int64_t n, int64_t c, int64_t p) {
  (void)N;
  return class_last ? (n * P + p) * C + c : (n * C + c) * P + p;
}

// ---- confusion matrix -----------------------------------------------------------------------------

template <typename X, typename Y, bool FROM_LOGITS>
void check_confusion(const std::string& gpu, int64_t N, int64_t C, int64_t P, bool class_last, bool has_ignore) {
  const int64_t total = N * P, ignore = C > 3 ? 2 : -1;  // a class index as ignore_index too
  const std::vector<X> x = FROM_LOGITS ? random_logits<X>(N * C * P, 2.0) : random_labels<X>(total, C, 0, 0.0);
  const std::vector<Y> y = random_labels<Y>(total, C, has_ignore ? ignore : 0, has_ignore ? 0.2 : 0.0);
  std::vector<unsigned long long> want(C * C, 0), got(C * C, 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < P; ++p) {
      const int64_t t = static_cast<int64_t>(y[n * P + p]);
      if (has_ignore && t == ignore) continue;
      int64_t pred = 0;
      if (FROM_LOGITS) {
        float best = -INFINITY;
        for (int64_t c = 0; c < C; ++c) {
          const float v = static_cast<float>(x[at(class_last, N, C, P, n, c, p)]);
          if (c == 0 || v > best) best = v, pred = c;
        }
      } else {
        pred = static_cast<int64_t>(x[n * P + p]);
      }
      ++want[t * C + pred];
    }
  const LaunchConfig config = grid_stride(total, multiprocessors_from_env(), shared_bins_bytes(C, true));
  const int err = harness::launch(config.grid, config.block, config.shared_bytes, confusion_kernel<X, Y, FROM_LOGITS>,
                                  x.data(), y.data(), total, C, P, class_last ? C : 1, class_last ? 1 : P, has_ignore,
                                  ignore, shared_bins(C), got.data());
  counter.check(err == 0 && got == want, "confusion " + std::string(FROM_LOGITS ? "logits" : "labels") + " N=" +
                                             std::to_string(N) + " C=" + std::to_string(C) + " P=" +
                                             std::to_string(P) + (class_last ? " class-last" : "") +
                                             (has_ignore ? " ignore" : "") + " [" + gpu + "] " +
                                             simt::last_launch_message());
}

// ---- focal loss -----------------------------------------------------------------------------------

struct FocalCase {
  int64_t N, C, P;
  bool class_last;
  int64_t reduction;
  bool grad, count, weighted;
  float gamma, eps;
};

template <typename X, typename Y>
void check_focal(const std::string& gpu, const FocalCase& k) {
  const int64_t N = k.N, C = k.C, P = k.P, total = N * P, ignore = -100;
  const std::vector<X> x = random_logits<X>(N * C * P, 3.0);
  std::vector<Y> y = random_labels<Y>(total, C, std::is_signed_v<Y> ? ignore : 0, 0.0);
  std::vector<int64_t> labels(total);
  std::uniform_real_distribution<double> u(0, 1);
  for (int64_t i = 0; i < total; ++i) {  // uint8 targets cannot hold -100: then nothing is ignored
    if (std::is_signed_v<Y> && u(rng) < 0.15) y[i] = static_cast<Y>(ignore);
    labels[i] = static_cast<int64_t>(y[i]);
  }
  std::vector<float> w(C, 1.0f);
  if (k.weighted)
    for (auto& e : w) e = static_cast<float>(u(rng) * 2);
  // The reference, in double: the loss of every pixel and d(loss)/d(logits) before the mean's scale.
  std::vector<double> loss(total, 0.0), grad(N * C * P, 0.0);
  std::vector<unsigned long long> want_hist(C * C, 0);
  double sum = 0, count = 0, wsum = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < P; ++p) {
      const int64_t i = n * P + p, t = labels[i];
      if (t == ignore) continue;
      std::vector<double> v(C), logp(C), prob(C), term(C), coef(C);
      double m = -INFINITY;
      int64_t pred = 0;
      for (int64_t c = 0; c < C; ++c) {
        v[c] = static_cast<float>(x[at(k.class_last, N, C, P, n, c, p)]);
        if (v[c] > m) m = v[c], pred = c;
      }
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += std::exp(v[c] - m);
      for (int64_t c = 0; c < C; ++c) {
        logp[c] = v[c] - m - std::log(s);
        prob[c] = std::exp(logp[c]);
        const double q = (s - std::exp(v[c] - m)) / s, qg = std::pow(q, k.gamma);
        const double ratio = q < 1e-9 ? -1.0 : logp[c] / q;  // log(1 - q) / q
        term[c] = -w[c] * qg * logp[c];
        coef[c] = k.gamma == 0 ? -w[c] : w[c] * (k.gamma * qg * prob[c] * ratio - qg);
      }
      double smooth_coef = 0, smooth_term = 0;
      for (int64_t c = 0; c < C; ++c) smooth_coef += coef[c], smooth_term += term[c];
      loss[i] = (1 - k.eps) * term[t] + k.eps / C * smooth_term;
      for (int64_t c = 0; c < C; ++c)
        grad[at(k.class_last, N, C, P, n, c, p)] =
            (1 - k.eps) * coef[t] * ((c == t) - prob[c]) + k.eps / C * (coef[c] - prob[c] * smooth_coef);
      ++want_hist[t * C + pred];
      sum += loss[i];
      count += 1;
      wsum += w[t];
    }
  const double denominator = k.reduction == kMean ? count : wsum;
  const double grad_scale = (k.reduction == kMean || k.reduction == kWeightedMean) ? (denominator ? 1 / denominator : 0) : 1;
  const double want_loss = k.reduction == kSum ? sum : (denominator ? sum / denominator : 0);

  // The launches, as focal_cuda.cu makes them.
  const int sms = multiprocessors_from_env();
  const bool prepass = k.grad && (k.reduction == kMean || k.reduction == kWeightedMean);
  const LaunchConfig config = grid_stride(total, sms, shared_bins_bytes(C, k.count));
  const LaunchConfig pre_config = grid_stride(total, sms);
  const FocalWorkspace layout = focal_workspace(config.grid, prepass);
  std::vector<double> workspace(layout.bytes / 8);
  char* base = reinterpret_cast<char*>(workspace.data());
  unsigned* counters = reinterpret_cast<unsigned*>(base + layout.counters);
  counters[0] = counters[1] = 0;
  float* scale = reinterpret_cast<float*>(base + layout.scale);
  std::vector<X> loss_out(k.reduction == kNone ? total : 1);
  std::vector<saved_grad_t<X>> grad_out(k.grad ? N * C * P : 0);
  std::vector<unsigned long long> hist(k.count ? C * C : 0, 0);
  int err = 0;
  if (prepass)
    err = harness::launch(pre_config.grid, pre_config.block, pre_config.shared_bytes, target_stats_kernel<Y>, y.data(),
                          k.weighted ? w.data() : nullptr, total, C, ignore, k.reduction == kWeightedMean,
                          reinterpret_cast<double*>(base + layout.pre_partial), scale, counters + 1);
  if (!err)
    err = harness::launch(config.grid, config.block, config.shared_bytes, focal_forward_kernel<X, Y>, x.data(),
                          y.data(), k.weighted ? w.data() : nullptr, total, C, P, k.class_last ? C : 1,
                          k.class_last ? 1 : P, k.gamma, k.eps, ignore, prepass ? scale : nullptr, k.reduction,
                          loss_out.data(), k.grad ? grad_out.data() : nullptr,
                          reinterpret_cast<double*>(base + layout.main_partial), counters,
                          k.count ? hist.data() : nullptr, shared_bins(C));
  const bool half = std::is_same_v<X, Half>;
  const double rtol = half ? 4e-3 : 2e-4, atol = half ? 1e-3 : 1e-6;
  bool ok = err == 0;
  if (ok && k.reduction == kNone) {
    for (int64_t i = 0; i < total && ok; ++i) ok = harness::close(static_cast<float>(loss_out[i]), loss[i], rtol, atol);
  } else if (ok) {
    ok = harness::close(static_cast<float>(loss_out[0]), want_loss, rtol, atol);
  }
  for (int64_t j = 0; ok && k.grad && j < N * C * P; ++j)
    ok = harness::close(static_cast<float>(grad_out[j]), grad[j] * grad_scale, 2e-4, 1e-6 * grad_scale + 1e-9);
  if (ok && k.count) ok = hist == want_hist;
  counter.check(ok, "focal N=" + std::to_string(N) + " C=" + std::to_string(C) + " P=" + std::to_string(P) +
                        " reduction=" + std::to_string(k.reduction) + (k.class_last ? " class-last" : "") +
                        (k.grad ? " grad" : "") + (k.count ? " confusion" : "") + (k.weighted ? " weighted" : "") +
                        " gamma=" + std::to_string(k.gamma) + " eps=" + std::to_string(k.eps) +
                        (half ? " fp16" : "") + " [" + gpu + "] " + simt::last_launch_message());
}

// ---- flips ----------------------------------------------------------------------------------------

// Where view `code` takes the value it shows at (d, h, w). A view transposes H and W (bit 3), then
// reverses W (bit 0), H (bit 1) and D (bit 2), as marsops.reference applies it to a tensor; so
// its output at (d, h, w) reads the transposed image at the reversed position.
void source_of(int code, int64_t D, int64_t H, int64_t W, int64_t& d, int64_t& h, int64_t& w) {
  if (code & 4) d = D - 1 - d;
  if (code & 2) h = H - 1 - h;
  if (code & 1) w = W - 1 - w;
  if (code & 8) std::swap(h, w);
}

void check_flips(const std::string& gpu, int64_t N, int64_t M, int64_t D, int64_t H, int64_t W,
                 std::vector<int> views) {
  const int64_t plane = D * H * W, total = N * M * plane, K = static_cast<int64_t>(views.size());
  std::vector<float> x = random_logits<float>(total, 1.0);
  ViewList list{static_cast<int>(K), {}};
  for (int64_t k = 0; k < K; ++k) list.code[k] = static_cast<int8_t>(views[k]);
  const FlipLayout g{D, H, W};
  // Calls f(k, at, from) for every view k and position of every sample's planes: `at` the offset
  // in view k's block of the output, `from` the offset in the input that it shows.
  auto each_view_position = [&](auto f) {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t s = 0; s < N * M; ++s)
        for (int64_t d = 0; d < D; ++d)
          for (int64_t h = 0; h < H; ++h)
            for (int64_t w = 0; w < W; ++w) {
              int64_t d1 = d, h1 = h, w1 = w;
              source_of(views[k], D, H, W, d1, h1, w1);
              f(k, s * plane + (d * H + h) * W + w, s * plane + (d1 * H + h1) * W + w1);
            }
  };
  // flip_views: block k of the output is every sample under view k.
  std::vector<float> got(total * K), want(total * K);
  each_view_position([&](int64_t k, int64_t at, int64_t from) { want[k * total + at] = x[from]; });
  const int sms = multiprocessors_from_env();
  LaunchConfig c = grid_stride(total * K, sms);
  int err = harness::launch(c.grid, c.block, c.shared_bytes, flip_views_kernel<uint32_t>,
                            reinterpret_cast<const uint32_t*>(x.data()), reinterpret_cast<uint32_t*>(got.data()),
                            total, g, list);
  const std::string shape = " N=" + std::to_string(N) + " M=" + std::to_string(M) + " D=" + std::to_string(D) +
                            " H=" + std::to_string(H) + " W=" + std::to_string(W) + " K=" + std::to_string(K) +
                            " [" + gpu + "] ";
  counter.check(err == 0 && got == want, "flip_views" + shape + simt::last_launch_message());
  // flip_views_sum: the adjoint, <flip_views(x), y> = <x, flip_views_sum(y)>, scaled.
  const std::vector<double> ydraw = random_logits<double>(total * K, 1.0);
  std::vector<double> merged(total, -1), want_merged(total, 0);
  each_view_position([&](int64_t k, int64_t at, int64_t from) { want_merged[from] += 0.5 * ydraw[k * total + at]; });
  c = grid_stride(total, sms);
  err = harness::launch(c.grid, c.block, c.shared_bytes, flip_views_sum_kernel<double>, ydraw.data(), merged.data(),
                        total, g, list, 0.5);
  bool ok = err == 0;
  for (int64_t i = 0; ok && i < total; ++i) ok = harness::close(merged[i], want_merged[i], 1e-12, 1e-12);
  counter.check(ok, "flip_views_sum" + shape + simt::last_launch_message());
  // flip_by_flags: each sample under its own view (bits it cannot use are ignored).
  std::vector<uint8_t> flags(N);
  std::uniform_int_distribution<int> code(0, 15);
  for (auto& f : flags) f = static_cast<uint8_t>(code(rng));
  const int allowed = 1 | 2 | (D > 1 ? 4 : 0) | (H == W ? 8 : 0);
  std::vector<float> want_flipped(total);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) {
            int64_t d1 = d, h1 = h, w1 = w;
            source_of(flags[n] & allowed, D, H, W, d1, h1, w1);
            want_flipped[(n * M + m) * plane + (d * H + h) * W + w] = x[(n * M + m) * plane + (d1 * H + h1) * W + w1];
          }
  std::vector<float> flipped32(total);
  c = grid_stride(total, sms);
  int err32 = harness::launch(c.grid, c.block, c.shared_bytes, flip_by_flags_kernel<uint32_t>,
                              reinterpret_cast<const uint32_t*>(x.data()), flags.data(),
                              reinterpret_cast<uint32_t*>(flipped32.data()), total, M * plane, g, allowed);
  counter.check(err32 == 0 && flipped32 == want_flipped, "flip_by_flags" + shape + simt::last_launch_message());
}

// ---- test-time augmentation: views_argmax -----------------------------------------------------------

template <typename Y>
void check_views_argmax(const std::string& gpu, int64_t N, int64_t C, int64_t H, int64_t W, bool softmax,
                        bool class_last, bool count, std::vector<int> views) {
  const int64_t K = static_cast<int64_t>(views.size()), D = 1, plane = H * W, total = N * plane;
  const std::vector<float> y = random_logits<float>(K * N * C * plane, 2.0);
  // Strides of (K*N, C, H, W): contiguous, or channels_last.
  const int64_t sn = C * plane, sc = class_last ? 1 : plane, sh = class_last ? W * C : W, sw = class_last ? C : 1;
  ViewsGeometry g{N, C, D, H, W, sn, sc, 0, sh, sw, ViewList{static_cast<int>(K), {}}};
  for (int64_t k = 0; k < K; ++k) g.views.code[k] = static_cast<int8_t>(views[k]);
  const std::vector<Y> target = random_labels<Y>(total, C, 0, 0.0);
  std::vector<int64_t> want(total, -1), got(total, -7);
  std::vector<bool> decided(total, true);  // near-ties between float and double averages are not judged
  std::vector<unsigned long long> want_hist(C * C, 0), hist(count ? C * C : 0, 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) {
        std::vector<double> avg(C, 0.0);
        for (int64_t k = 0; k < K; ++k) {
          // The position in view k's image that shows the original pixel (h, w).
          int64_t hk = -1, wk = -1;
          for (int64_t a = 0; a < H; ++a)
            for (int64_t b = 0; b < W; ++b) {
              int64_t d0 = 0, h0 = a, w0 = b;
              source_of(views[k], D, H, W, d0, h0, w0);
              if (h0 == h && w0 == w) hk = a, wk = b;
            }
          std::vector<double> v(C);
          double m = -INFINITY, s = 0;
          for (int64_t c = 0; c < C; ++c) {
            v[c] = y[(k * N + n) * sn + c * sc + hk * sh + wk * sw];
            m = std::max(m, v[c]);
          }
          for (int64_t c = 0; c < C; ++c) s += std::exp(v[c] - m);
          for (int64_t c = 0; c < C; ++c) avg[c] += softmax ? std::exp(v[c] - m) / s : v[c];
        }
        const int64_t i = (n * H + h) * W + w;
        want[i] = std::max_element(avg.begin(), avg.end()) - avg.begin();
        for (int64_t c = 0; c < C; ++c)
          if (c != want[i] && avg[want[i]] - avg[c] < 1e-5 * (1 + std::fabs(avg[c]))) decided[i] = false;
        ++want_hist[static_cast<int64_t>(target[i]) * C + want[i]];
      }
  const LaunchConfig c = grid_stride(total, multiprocessors_from_env(), shared_bins_bytes(C, count));
  const int err = harness::launch(c.grid, c.block, c.shared_bytes, views_argmax_kernel<float, Y>, y.data(), g, softmax,
                                  count ? target.data() : nullptr, false, int64_t{0}, got.data(),
                                  count ? hist.data() : nullptr, count && shared_bins(C));
  bool ok = err == 0, all_decided = true;
  for (int64_t i = 0; ok && i < total; ++i) {
    if (decided[i]) ok = got[i] == want[i];
    all_decided &= decided[i];
  }
  if (ok && count && all_decided) ok = hist == want_hist;
  counter.check(ok, "views_argmax N=" + std::to_string(N) + " C=" + std::to_string(C) + " H=" + std::to_string(H) +
                        " W=" + std::to_string(W) + " K=" + std::to_string(K) + (softmax ? " softmax" : " logits") +
                        (class_last ? " class-last" : "") + (count ? " confusion" : "") + " [" + gpu + "] " +
                        simt::last_launch_message());
}

// ---- device-side assertions -------------------------------------------------------------------------

void check_bad_labels(const std::string& gpu) {
  const int64_t N = 2, C = 4, P = 300, total = N * P;
  const std::vector<float> x = random_logits<float>(N * C * P, 1.0);
  std::vector<int64_t> y = random_labels<int64_t>(total, C, 0, 0.0);
  y[total - 1] = C;  // one label out of range, in the last block
  std::vector<unsigned long long> hist(C * C, 0);
  LaunchConfig c = grid_stride(total, multiprocessors_from_env(), shared_bins_bytes(C, true));
  int err = harness::launch(c.grid, c.block, c.shared_bytes, confusion_kernel<float, int64_t, true>, x.data(), y.data(),
                            total, C, P, int64_t{1}, P, false, int64_t{0}, true, hist.data());
  counter.check(err == 710 && std::strstr(simt::last_launch_message(), "outside [0, num_classes)"),
                "confusion with a bad label fails the launch with cudaErrorAssert [" + gpu + "]");
  std::vector<float> loss(1), grad(N * C * P);
  std::vector<double> partial(c.grid * 3 + 4);
  unsigned counters[2] = {0, 0};
  c = grid_stride(total, multiprocessors_from_env());
  err = harness::launch(c.grid, c.block, c.shared_bytes, focal_forward_kernel<float, int64_t>, x.data(), y.data(),
                        nullptr, total, C, P, int64_t{1}, P, 0.5f, 0.0f, int64_t{-100}, nullptr, int64_t{kSum},
                        loss.data(), grad.data(), partial.data(), counters, nullptr, false);
  counter.check(err == 710 && std::strstr(simt::last_launch_message(), "outside [0, C)"),
                "focal with a bad label fails the launch with cudaErrorAssert [" + gpu + "]");
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  // Real GPUs (H100/H200: 132 SMs, A100: 108), with grids capped at 8 blocks per SM; and small
  // ones, whose grids are a few blocks that each stride over much of the input.
  std::vector<harness::Gpu> gpus;
  if (quick) {
    gpus = {{1, 0, 0}, {1, 7, 0}};  // every block of the grid at once: races between blocks show
  } else {
    gpus = {{132, 0, 2}, {108, 3, 2}, {1, 1, 2}, {1, 2, 4}, {2, 5, 3}};
  }
  for (const auto& gpu : gpus) {
    harness::use(gpu);
    const std::string name = harness::describe(gpu);
    // Sizes: a single block's worth, a grid of a few blocks (2-8 under --quick), and more pixels
    // than the grid has threads (the grid-stride loops go round).
    const std::vector<int64_t> pixels = quick ? std::vector<int64_t>{1, 37, 700} : std::vector<int64_t>{1, 37, 700, 5000};
    for (int64_t P : pixels) {
      for (bool class_last : {false, true}) {
        check_confusion<float, int64_t, true>(name, 2, 5, P, class_last, true);
        check_confusion<Half, uint8_t, true>(name, 1, 3, P, class_last, false);
      }
      check_confusion<int32_t, int16_t, false>(name, 2, 4, P, false, true);
      if (P >= 37) check_confusion<float, int32_t, true>(name, 1, 100, P, false, true);  // C*C > 8192: global atomics
      for (int64_t reduction : {kNone, kSum, kMean, kWeightedMean})
        check_focal<float, int64_t>(name, {2, 5, P, false, reduction, true, reduction == kMean, reduction == kWeightedMean,
                                           0.5f, 0.0f});
      check_focal<float, int32_t>(name, {2, 4, P, true, kMean, true, true, true, 2.0f, 0.1f});
      check_focal<Half, uint8_t>(name, {1, 3, P, false, kSum, true, false, false, 0.0f, 0.0f});
      check_focal<float, int8_t>(name, {1, 100, std::min<int64_t>(P, 300), false, kWeightedMean, false, true, true, 1.0f,
                                        0.0f});
      if (!quick && P >= 700) check_focal<float, int64_t>(name, {3, 19, P, true, kWeightedMean, true, true, true, 0.5f, 0.2f});
    }
    check_flips(name, 2, 3, 1, 5, 7, {0, 1, 2, 3});
    check_flips(name, 1, 2, 1, 6, 6, {0, 1, 2, 3, 8, 9, 10, 11});
    check_flips(name, 2, 1, 3, 4, 4, {0, 1, 2, 3, 4, 5, 6, 7, 12, 15});
    if (!quick) check_flips(name, 4, 3, 1, 33, 40, {0, 3, 1});
    check_views_argmax<int64_t>(name, 2, 5, 6, 6, true, false, true, {0, 1, 2, 3, 8, 9, 10, 11});
    check_views_argmax<uint8_t>(name, 1, 3, 5, 7, false, true, true, {0, 1, 2, 3});
    check_views_argmax<int32_t>(name, 3, 100, 4, 9, true, false, true, {0, 2});  // global atomics
    if (!quick) check_views_argmax<int64_t>(name, 2, 19, 24, 40, true, true, false, {0, 1, 2, 3});
    // Counting over several blocks: a wrong grid stride shows only in the histogram.
    check_views_argmax<int64_t>(name, 2, 5, 24, 40, true, false, true, {0, 1, 2, 3});
    check_bad_labels(name);
    // More pixels than a full grid of the real GPU has threads: the grid is capped at 8 blocks per SM.
    if (!quick && gpu.sms >= 100) check_confusion<float, int64_t, true>(name, 1, 5, 300000, false, true);
  }
  std::printf("kernel_checks: %d passed, %d failed\n", counter.passed, counter.failed);
  return counter.failed ? 1 : 0;
}
