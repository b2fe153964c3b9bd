"""Triton building blocks shared by the kernels that produce a confusion matrix: torch.argmax's
rules on a tile of classes, and counting (true, predicted) pairs into an int64 (C, C) matrix."""
import triton
import triton.language as tl

MAX_HIST_C = 31  # up to here a per-program histogram (C*C + 1 <= 1024 bins); beyond, direct atomics


def hist_bins(num_classes: int) -> int:
    """The BINS constexpr of count_pairs: a histogram size, or 0 for direct atomics."""
    return triton.next_power_of_2(num_classes * num_classes + 1) if num_classes <= MAX_HIST_C else 0


@triton.jit
def argmax_tile(x, offs_c, BLOCK_C: tl.constexpr):
    """torch.argmax over axis 0 of a [BLOCK_C, BLOCK_P] tile: (index of the first maximum, or of
    the first NaN; the maximum, NaN where a NaN was seen). Masked-out classes must hold -inf."""
    is_nan = x != x
    first_nan = tl.min(tl.where(is_nan, offs_c[:, None], BLOCK_C), axis=0)
    m = tl.max(tl.where(is_nan, -float("inf"), x), axis=0)
    first_max = tl.min(tl.where(x == m[None, :], offs_c[:, None], BLOCK_C), axis=0)
    has_nan = first_nan < BLOCK_C
    return tl.where(has_nan, first_nan, first_max), tl.where(has_nan, float("nan"), m)


@triton.jit
def combine_argmax(pred, best, idx, m):
    """Running argmax over chunks of classes: an earlier chunk wins ties; a NaN seen before stays;
    a chunk's first NaN takes over."""
    take = (best == best) & ((m != m) | (m > best))
    return tl.where(take, idx, pred), tl.where(take, m, best)


@triton.jit
def count_pairs(hist_ptr, t, pred, ok, C, BLOCK_P: tl.constexpr, BINS: tl.constexpr):
    """Adds the (t, pred) pairs where ok to the int64 (C, C) matrix at hist_ptr."""
    if BINS > 0:
        bins = tl.where(ok, t * C + pred, BINS - 1)  # the last bin collects what is not counted
        h = tl.histogram(bins.to(tl.int32), BINS)
        offs_b = tl.arange(0, BINS)
        tl.atomic_add(hist_ptr + offs_b, h.to(tl.int64), mask=(offs_b < C * C) & (h > 0))
    else:
        tl.atomic_add(hist_ptr + tl.where(ok, t * C + pred, 0), tl.full([BLOCK_P], 1, tl.int64), mask=ok)
