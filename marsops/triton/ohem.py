"""Triton OHEM selection (marsops/ohem.py), in log space: one pass over the logits writes each
pixel's lp = log p_t, its label (-1 where ignored) and a histogram of lp; the threshold is then
found on the device by counting (the histogram's bin of s[k], then a radix selection on the
remaining bits of the lp in that bin), so a call never waits for the host.

lp is counted and selected by an unsigned key that orders as the float does (NaN last): the bits,
inverted for negative values, with the sign bit set for the others."""
import math

import torch
import triton
import triton.language as tl

from . import num_warps

BINS = 4096  # the histogram: the top 12 bits of the key
HIST = 8192  # a power of two for tl.histogram; bin BINS collects the ignored pixels
MAX_C = 1024
TILE = 4096
RADIX = ((8, 12), (0, 8))  # (shift, bits) of the refinement levels below the histogram's 12 bits


@triton.jit
def _ohem_probs_kernel(x_ptr, y_ptr, lp_ptr, label_ptr, hist_ptr, counts_ptr, C, P, stride_n, stride_c, stride_p,
                  ignore_index, log_thresh, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    blocks = tl.cdiv(P, BLOCK_P)
    n = pid // blocks
    offs_p = (pid % blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)  # c * P may pass 2**31
    in_p = offs_p < P
    t = tl.load(y_ptr + n * P + offs_p, mask=in_p, other=0).to(tl.int64)
    ignored = t == ignore_index
    bad = (~ignored) & ((t < 0) | (t >= C)) & in_p
    valid = (~ignored) & (~bad) & in_p
    mask = (offs_c[:, None] < C) & in_p[None, :]
    x = tl.load(x_ptr + n * stride_n + offs_c[:, None] * stride_c + offs_p[None, :] * stride_p, mask=mask,
                other=-float("inf")).to(tl.float32)
    m = tl.max(x, axis=0)
    e = tl.where(offs_c[:, None] < C, tl.exp(x - m[None, :]), 0.0)
    s = tl.sum(e, axis=0)
    xt = tl.sum(tl.where(offs_c[:, None] == t[None, :], x, 0.0), axis=0)
    # A largest logit that is not finite (+inf, NaN, all -inf) gives an all-NaN softmax, as torch's.
    s = tl.where(m - m == 0.0, s, float("nan"))
    lp = xt - m - tl.log(s)
    lp = tl.where(lp != lp, float("nan"), lp)  # one NaN, whose key sorts last
    tl.store(lp_ptr + n * P + offs_p, lp, mask=in_p)
    tl.store(label_ptr + n * P + offs_p, tl.where(valid, t, -1).to(tl.int32), mask=in_p)
    bits = lp.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF  # as ordered_keys below, in int64
    key = tl.where(bits >= 0x80000000, bits ^ 0xFFFFFFFF, bits | 0x80000000)
    b = tl.where(valid, (key >> 20).to(tl.int32), 4096)  # bin BINS: not counted
    h = tl.histogram(b, 8192)
    offs_h = tl.arange(0, 8192)
    tl.atomic_add(hist_ptr + offs_h, h.to(tl.int64), mask=(offs_h < 4096) & (h > 0))
    tl.atomic_add(counts_ptr + 0, tl.sum(valid.to(tl.int64), axis=0))
    # log_thresh arrives rounded to fp32. Rounded up, lp < it exactly when lp < log_thresh (no fp32
    # lies between); rounded down, an lp equal to it is not counted: an undercount, which only makes
    # the host compute s[k], then find it below log_thresh (the same threshold all the same).
    tl.atomic_add(counts_ptr + 1, tl.sum((valid & (lp < log_thresh)).to(tl.int64), axis=0))
    tl.atomic_max(counts_ptr + 2, tl.max(bad.to(tl.int64), axis=0))


def ordered_keys(lp):
    """The kernel's keys of fp32 values, as int64 in [0, 2**32)."""
    bits = lp.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return torch.where(bits >= 2**31, ~bits & 0xFFFFFFFF, bits | 2**31)


def from_ordered_key(key):
    bits = torch.where(key >= 2**31, key ^ 2**31, ~key & 0xFFFFFFFF)
    return torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32).view(torch.float32)


def _search(hist, rank):
    """The bin holding the rank-th smallest counted value, and the rank within it (device tensors)."""
    cum = hist.cumsum(0)
    b = torch.searchsorted(cum, rank.reshape(1), right=True).clamp_max(hist.numel() - 1).reshape(())
    return b, rank - (cum[b] - hist[b])


def ohem_select(x, y, ignore_index, thresh, batch_kept, class_last):
    """(labels int32 (N, P) with -1 where not kept, stats float64 [log tau, kept, valid], ok flag)."""
    N, C = x.shape[0], x.shape[1]
    P = y.shape[1]
    if C > MAX_C:
        raise ValueError(f"marsops.ohem_focal_loss: the triton backend supports up to {MAX_C} classes, got {C}")
    dev = x.device
    log_thresh = math.log(thresh) if thresh > 0 else -math.inf
    lp = torch.empty((N, P), dtype=torch.float32, device=dev)
    labels = torch.empty((N, P), dtype=torch.int32, device=dev)
    hist = torch.zeros(HIST, dtype=torch.int64, device=dev)
    counts = torch.zeros(3, dtype=torch.int64, device=dev)
    if N * P:
        block_c = triton.next_power_of_2(C)
        block_p = max(16, min(1024, TILE // block_c))
        strides = (x.stride(0), 1, C) if class_last else (x.stride(0), x.stride(1), 1)
        grid = (N * triton.cdiv(P, block_p),)
        _ohem_probs_kernel[grid](x, y, lp, labels, hist, counts, C, P, *strides, ignore_index, log_thresh,
                            BLOCK_C=block_c, BLOCK_P=block_p, num_warps=num_warps(block_c * block_p))
    valid, below, bad = counts.unbind()
    k = torch.minimum(torch.tensor(batch_kept, device=dev), valid - 1).clamp_min(0)
    # The key of s[k]: its top 12 bits from the kernel's histogram, then 12 and 8 more.
    prefix, rank = _search(hist[:BINS], k)
    keys = ordered_keys(lp.reshape(-1))
    in_set = (labels.reshape(-1) >= 0) & ((keys >> 20) == prefix)
    for shift, bits in RADIX:
        digits = (keys >> shift) & ((1 << bits) - 1)
        level = torch.zeros(1 << bits, dtype=torch.int64, device=dev)
        level.scatter_add_(0, torch.where(in_set, digits, 0), in_set.to(torch.int64))
        digit, rank = _search(level, rank)
        in_set = in_set & (digits == digit)
        prefix = (prefix << bits) | digit
    s_k = from_ordered_key(prefix).double()
    # s[k] matters only when at most k values lie below log thresh (a NaN s[k] never exceeds it).
    need = (valid > 0) & (below <= k) & (s_k > log_thresh)
    log_tau = torch.where(need, s_k, torch.tensor(log_thresh, dtype=torch.float64, device=dev))
    labels = torch.where((labels >= 0) & (lp.double() >= log_tau), -1, labels)
    stats = torch.stack([log_tau, (labels >= 0).sum().double(), valid.double()])
    return labels, stats, bad == 0
