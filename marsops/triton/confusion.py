"""Triton confusion matrix: one program per block of pixels of one sample (a flat 1-D grid); the
argmax over classes of a [BLOCK_C, BLOCK_P] logits tile (streamed in chunks beyond MAX_TILE_C
classes), then the (true, predicted) pairs are counted into the int64 (C, C) output with integer
atomics (counting.py: a per-program histogram for few classes, direct atomics beyond). Exact and
deterministic."""
import torch
import triton
import triton.language as tl

from . import num_warps
from .counting import argmax_tile, combine_argmax, count_pairs, hist_bins

MAX_TILE_C = 64


@triton.jit
def _confusion_kernel(x_ptr, y_ptr, hist_ptr, ok_ptr, C, P, pixel_stride, class_stride, blocks_per_sample,
                      ignore_index,
                      FROM_LOGITS: tl.constexpr, HAS_IGNORE: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, CHUNKED: tl.constexpr, BINS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = pid // blocks_per_sample
    offs_p = (pid - n * blocks_per_sample) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < P
    t = tl.load(y_ptr + n * P + offs_p, mask=pmask, other=0).to(tl.int64)
    keep = pmask
    if HAS_IGNORE:
        keep = keep & (t != ignore_index)
    if FROM_LOGITS:
        offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
        base = n * C * P
        if not CHUNKED:
            x = tl.load(x_ptr + base + offs_c[:, None] * class_stride + offs_p[None, :] * pixel_stride,
                        mask=(offs_c[:, None] < C) & pmask[None, :], other=-float("inf")).to(ACC)
            pred, _ = argmax_tile(x, offs_c, BLOCK_C)
        else:
            pred = tl.zeros([BLOCK_P], tl.int64)
            best = tl.full([BLOCK_P], -float("inf"), ACC)
            for c0 in range(0, C, BLOCK_C):
                cc = c0 + offs_c
                x = tl.load(x_ptr + base + cc[:, None] * class_stride + offs_p[None, :] * pixel_stride,
                            mask=(cc[:, None] < C) & pmask[None, :],
                            other=-float("inf")).to(ACC)
                idx, m = argmax_tile(x, offs_c, BLOCK_C)
                pred, best = combine_argmax(pred, best, c0 + idx, m)
        pred = pred.to(tl.int64)
    else:
        pred = tl.load(x_ptr + n * P + offs_p, mask=pmask, other=0).to(tl.int64)
    bad_t = keep & ((t < 0) | (t >= C))
    bad_p = keep & (~bad_t) & ((pred < 0) | (pred >= C))
    ok = keep & (~bad_t) & (~bad_p)
    count_pairs(hist_ptr, t, pred, ok, C, BLOCK_P, BINS)
    tl.atomic_min(ok_ptr, 0, mask=tl.max(bad_t.to(tl.int32), axis=0) > 0)
    tl.atomic_min(ok_ptr + 1, 0, mask=tl.max(bad_p.to(tl.int32), axis=0) > 0)


def confusion_matrix(x, y, num_classes, ignore_index, from_logits, class_last=False):
    """Launcher. x: logits (N, C, P) contiguous or laid out as (N, P, C) when class_last (read in
    place), or labels (N, P); y (N, P) contiguous. Returns the int64 (C, C) matrix and int32 flags
    [targets valid, predictions valid] (1: valid)."""
    N, P = y.shape
    C = num_classes
    block_c = min(triton.next_power_of_2(C), MAX_TILE_C) if from_logits else 1
    block_p = min(triton.next_power_of_2(max(P, 1)), max(64, 8192 // block_c))
    hist = torch.zeros(C * C, device=y.device, dtype=torch.int64)
    ok = torch.ones(2, device=y.device, dtype=torch.int32)
    if N * P:
        blocks_per_sample = triton.cdiv(P, block_p)
        _confusion_kernel[(N * blocks_per_sample,)](
            x, y, hist, ok, C, P, C if class_last else 1, 1 if class_last else P, blocks_per_sample,
            ignore_index if ignore_index is not None else 0,
            FROM_LOGITS=from_logits, HAS_IGNORE=ignore_index is not None,
            ACC=tl.float64 if x.dtype == torch.float64 else tl.float32, BLOCK_C=block_c, BLOCK_P=block_p,
            CHUNKED=from_logits and C > MAX_TILE_C, BINS=hist_bins(C), num_warps=num_warps(block_c * block_p))
    return hist.view(C, C), ok
