"""Triton flip4_argmax (flip test-time augmentation, evaluated): one program per block of output
pixels reads, for each of the four views of a flip4 batch, the [BLOCK_C, BLOCK_P] tile at the
flipped positions; a first pass gets each view's softmax max and sum over chunks of classes, a
second averages the views class by class and keeps the running argmax (csrc/tta_common.h does
the same per pixel). Predictions and confusion counts come out of the same pass."""
import torch
import triton
import triton.language as tl

from .counting import argmax_tile, combine_argmax, count_pairs, hist_bins

MAX_TILE_C = 64


@triton.jit
def _view_offsets(k: tl.constexpr, n, m, h, w, cc, N, C, M, H, W):
    """Element offsets of classes cc at the pixels (n, m, h, w) as view k holds them (int64:
    n and cc are)."""
    if k & 2:
        h = H - 1 - h
    if k & 1:
        w = W - 1 - w
    plane = (k * N + n)[None, :] * C + cc[:, None]
    return ((plane * M + m[None, :]) * H + h[None, :]) * W + w[None, :]


@triton.jit
def _flip4_argmax_kernel(y_ptr, t_ptr, pred_ptr, hist_ptr, ok_ptr, total, N, C, M, H, W, ignore_index,
                         SOFTMAX: tl.constexpr, WANT_PRED: tl.constexpr, COUNT: tl.constexpr,
                         HAS_IGNORE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BINS: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = i < total
    w = i % W
    rest = i // W
    h = rest % H
    rest = rest // H
    m = rest % M
    n = rest // M
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    if SOFTMAX:  # each view's max and sum of exponentials (online over chunks of classes)
        m0 = tl.full([BLOCK_P], -float("inf"), tl.float32)
        m1, m2, m3 = m0, m0, m0
        s0 = tl.zeros([BLOCK_P], tl.float32)
        s1, s2, s3 = s0, s0, s0
        for c0 in range(0, C, BLOCK_C):
            cc = c0 + offs_c
            mask = (cc[:, None] < C) & pmask[None, :]
            for k in tl.static_range(4):
                x = tl.load(y_ptr + _view_offsets(k, n, m, h, w, cc, N, C, M, H, W), mask=mask,
                            other=-float("inf")).to(tl.float32)
                if k == 0:
                    mk, sk = m0, s0
                elif k == 1:
                    mk, sk = m1, s1
                elif k == 2:
                    mk, sk = m2, s2
                else:
                    mk, sk = m3, s3
                m_new = tl.maximum(mk, tl.max(x, axis=0))
                m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
                sk = sk * tl.exp(mk - m_safe) + tl.sum(tl.exp(x - m_safe[None, :]), axis=0)
                if k == 0:
                    m0, s0 = m_new, sk
                elif k == 1:
                    m1, s1 = m_new, sk
                elif k == 2:
                    m2, s2 = m_new, sk
                else:
                    m3, s3 = m_new, sk
    pred = tl.zeros([BLOCK_P], tl.int64)
    best = tl.full([BLOCK_P], -float("inf"), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + offs_c
        mask = (cc[:, None] < C) & pmask[None, :]
        acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
        for k in tl.static_range(4):
            x = tl.load(y_ptr + _view_offsets(k, n, m, h, w, cc, N, C, M, H, W), mask=mask, other=0.0).to(tl.float32)
            if SOFTMAX:
                if k == 0:
                    x = tl.exp(x - m0[None, :]) / s0[None, :]
                elif k == 1:
                    x = tl.exp(x - m1[None, :]) / s1[None, :]
                elif k == 2:
                    x = tl.exp(x - m2[None, :]) / s2[None, :]
                else:
                    x = tl.exp(x - m3[None, :]) / s3[None, :]
            acc += x
        acc = tl.where(mask, acc, -float("inf"))
        idx, mc = argmax_tile(acc, offs_c, BLOCK_C)
        pred, best = combine_argmax(pred, best, c0 + idx, mc)
    if WANT_PRED:
        tl.store(pred_ptr + i, pred, mask=pmask)
    if COUNT:
        t = tl.load(t_ptr + i, mask=pmask, other=0).to(tl.int64)
        keep = pmask
        if HAS_IGNORE:
            keep = keep & (t != ignore_index)
        bad = keep & ((t < 0) | (t >= C))
        count_pairs(hist_ptr, t, pred, keep & (~bad), C, BLOCK_P, BINS)
        tl.atomic_min(ok_ptr, 0, mask=tl.max(bad.to(tl.int32), axis=0) > 0)


def flip4_argmax(outputs, target, ignore_index, softmax, want_pred):
    """Launcher. outputs (4N, C, M, H, W) and target (N, M, H, W) or None, contiguous. Returns
    (pred (N, M, H, W) int64 or empty, confusion (C, C) int64 or empty, ok int32 flag)."""
    four_n, C, M, H, W = outputs.shape
    N = four_n // 4
    dev = outputs.device
    pred = torch.empty((N, M, H, W) if want_pred else (0,), device=dev, dtype=torch.int64)
    count = target is not None
    confusion = torch.zeros((C, C) if count else (0,), device=dev, dtype=torch.int64)
    ok = torch.ones((), device=dev, dtype=torch.int32)
    total = N * M * H * W
    if total:
        block_c = min(triton.next_power_of_2(C), MAX_TILE_C)
        block_p = min(triton.next_power_of_2(total), max(16, 2048 // block_c))
        _flip4_argmax_kernel[(triton.cdiv(total, block_p),)](
            outputs, target if count else pred, pred, confusion, ok, total, N, C, M, H, W,
            ignore_index if ignore_index is not None else 0, SOFTMAX=softmax, WANT_PRED=want_pred, COUNT=count,
            HAS_IGNORE=ignore_index is not None, BLOCK_C=block_c, BLOCK_P=block_p, BINS=hist_bins(C))
    return pred, confusion, ok
