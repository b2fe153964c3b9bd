"""Triton OHEM selection (marsops/ohem.py): one pass over the logits writes each pixel's p_t, its
label (-1 where ignored) and a histogram of p_t; the threshold is then found on the device by
counting (the histogram's bin of s[k], then a radix selection on the bits of the p_t in that
bin), so a call never waits for the host."""
import torch
import triton
import triton.language as tl

from . import num_warps

BINS = 4096  # bin b: p_t in [b, b + 1) / BINS; BINS: 1 (and the rounding above it); BINS + 1: NaN
HIST = 8192  # power of two for tl.histogram; the last bin collects the ignored pixels
MAX_C = 1024
TILE = 4096
RADIX = ((20, 12), (8, 12), (0, 8))  # (shift, bits) of the refinement levels over a p_t's 32 bits


@triton.jit
def _probs_kernel(x_ptr, y_ptr, pt_ptr, label_ptr, hist_ptr, counts_ptr, C, P, stride_n, stride_c, stride_p,
                  ignore_index, thresh, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    blocks = tl.cdiv(P, BLOCK_P)
    n = pid // blocks
    offs_p = (pid % blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    in_p = offs_p < P
    t = tl.load(y_ptr + n * P + offs_p, mask=in_p, other=0).to(tl.int64)
    ignored = t == ignore_index
    bad = (~ignored) & ((t < 0) | (t >= C)) & in_p
    valid = (~ignored) & (~bad) & in_p
    mask = (offs_c[:, None] < C) & in_p[None, :]
    x = tl.load(x_ptr + n * stride_n + offs_c[:, None] * stride_c + offs_p[None, :] * stride_p, mask=mask,
                other=-float("inf")).to(tl.float32)
    m = tl.max(x, axis=0)
    e = tl.exp(x - m[None, :])
    e = tl.where(offs_c[:, None] < C, e, 0.0)
    s = tl.sum(e, axis=0)
    et = tl.sum(tl.where(offs_c[:, None] == t[None, :], e, 0.0), axis=0)
    # A largest logit that is not finite (+inf, NaN, all -inf) gives an all-NaN softmax, as torch's.
    s = tl.where(m - m == 0.0, s, float("nan"))
    p_t = et / s
    tl.store(pt_ptr + n * P + offs_p, p_t, mask=in_p)
    tl.store(label_ptr + n * P + offs_p, tl.where(valid, t, -1).to(tl.int32), mask=in_p)
    b = tl.minimum((p_t * 4096.0).to(tl.int32), 4096)  # the bins of BINS = 4096 (_bin below)
    b = tl.where(p_t != p_t, 4097, b)
    b = tl.where(valid, b, 8191)  # HIST - 1: not counted
    h = tl.histogram(b, 8192)
    offs_h = tl.arange(0, 8192)
    tl.atomic_add(hist_ptr + offs_h, h.to(tl.int64), mask=(offs_h < 4098) & (h > 0))
    tl.atomic_add(counts_ptr + 0, tl.sum(valid.to(tl.int64), axis=0))
    # thresh arrives rounded to fp32. Rounded up, p_t < it exactly when p_t < thresh (no fp32 lies
    # between); rounded down, a p_t equal to it is not counted: an undercount, which only makes the
    # host compute s[k], then find it below thresh (tau = thresh all the same).
    tl.atomic_add(counts_ptr + 1, tl.sum((valid & (p_t < thresh)).to(tl.int64), axis=0))
    tl.atomic_max(counts_ptr + 2, tl.max(bad.to(tl.int64), axis=0))


def _bin(p_t):
    """The kernel's bins, in torch (exact: a power-of-two scaling)."""
    b = (p_t * BINS).to(torch.int64).clamp_max(BINS)
    return torch.where(torch.isnan(p_t), BINS + 1, b)


def _select(values, in_set, rank, width):
    """The digit (of `width` bins) holding the rank-th smallest value among values[in_set], and
    the rank within it, on the device: a histogram and a search, no host synchronisation."""
    hist = torch.zeros(width, dtype=torch.int64, device=values.device)
    hist.scatter_add_(0, torch.where(in_set, values, 0), in_set.to(torch.int64))
    cum = hist.cumsum(0)
    digit = torch.searchsorted(cum, rank.reshape(1), right=True).clamp_max(width - 1).reshape(())
    return digit, rank - (cum[digit] - hist[digit])


def ohem_select(x, y, ignore_index, thresh, batch_kept, class_last):
    """(labels int32 (N, P) with -1 where not kept, stats float64 [tau, kept, valid], ok flag)."""
    N, C = x.shape[0], x.shape[1]
    P = y.shape[1]
    if C > MAX_C:
        raise ValueError(f"marsops.ohem_focal_loss: the triton backend supports up to {MAX_C} classes, got {C}")
    dev = x.device
    p_t = torch.empty((N, P), dtype=torch.float32, device=dev)
    labels = torch.empty((N, P), dtype=torch.int32, device=dev)
    hist = torch.zeros(HIST, dtype=torch.int64, device=dev)
    counts = torch.zeros(3, dtype=torch.int64, device=dev)
    if N * P:
        block_c = triton.next_power_of_2(C)
        block_p = max(16, min(1024, TILE // block_c))
        strides = (x.stride(0), 1, C) if class_last else (x.stride(0), x.stride(1), 1)
        grid = (N * triton.cdiv(P, block_p),)
        _probs_kernel[grid](x, y, p_t, labels, hist, counts, C, P, *strides, ignore_index, thresh, BLOCK_C=block_c,
                            BLOCK_P=block_p, num_warps=num_warps(block_c * block_p))
    valid, below, bad = counts.unbind()
    k = torch.minimum(torch.tensor(batch_kept, device=dev), valid - 1).clamp_min(0)
    # The bin of s[k] from the kernel's histogram, then its bits, 12, 12 and 8 at a time.
    cum = hist.cumsum(0)
    b = torch.searchsorted(cum, k.reshape(1), right=True).clamp_max(HIST - 1).reshape(())
    rank = k - (cum[b] - hist[b])
    flat_p, flat_label = p_t.reshape(-1), labels.reshape(-1)
    keys = flat_p.view(torch.int32).to(torch.int64)
    in_set = (flat_label >= 0) & (_bin(flat_p) == b)
    prefix = torch.zeros((), dtype=torch.int64, device=dev)
    for shift, bits in RADIX:
        digits = (keys >> shift) & ((1 << bits) - 1)
        digit, rank = _select(digits, in_set, rank, 1 << bits)
        in_set = in_set & (digits == digit)
        prefix = prefix | (digit << shift)
    s_k = prefix.to(torch.int32).view(torch.float32).double()
    s_k = torch.where(b == BINS + 1, float("nan"), s_k)
    # s[k] matters only when at most k values lie below thresh (and then it is >= thresh).
    need = (valid > 0) & (below <= k) & (s_k > thresh)
    tau = torch.where(need, s_k, torch.tensor(thresh, dtype=torch.float64, device=dev))
    drop = (labels >= 0) & (p_t.double() >= tau)
    labels = torch.where(drop, -1, labels)
    stats = torch.stack([tau, (labels >= 0).sum().double(), valid.double()])
    return labels, stats, bad == 0
