"""Triton views_argmax (flip / dihedral test-time augmentation, evaluated): one program per block
of output pixels reads, for each of the K views of a flip_views batch, the [BLOCK_C, BLOCK_P] tile
at the positions that view put them (the outputs' own strides: channels_last is read in place);
a first pass gets each view's softmax max and sum over chunks of classes, a second averages the
views class by class and keeps the running argmax (csrc/tta_common.h does the same per pixel).
Predictions and confusion counts come out of the same pass."""
import torch
import triton
import triton.language as tl

from . import num_warps
from .counting import argmax_tile, combine_argmax, count_pairs, hist_bins
from .flip import pack_views, view_target

MAX_TILE_C = 64


@triton.jit
def _views_argmax_kernel(y_ptr, t_ptr, pred_ptr, hist_ptr, ok_ptr, total, N, C, D, H, W, sn, sc, sd, sh, sw,
                         ignore_index, CODES: tl.constexpr, K: tl.constexpr, KPAD: tl.constexpr,
                         SOFTMAX: tl.constexpr, WANT_PRED: tl.constexpr, COUNT: tl.constexpr,
                         HAS_IGNORE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BINS: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = i < total
    w0 = i % W
    rest = i // W
    h0 = rest % H
    rest = rest // H
    d0 = rest % D
    n = rest // D
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    rows = tl.arange(0, KPAD)
    # Per view: max and sum of exponentials over the classes, as rows of [KPAD, BLOCK_P] tensors.
    vmax = tl.full([KPAD, BLOCK_P], -float("inf"), tl.float32)
    vsum = tl.zeros([KPAD, BLOCK_P], tl.float32)
    if SOFTMAX:
        for c0 in range(0, C, BLOCK_C):
            cc = c0 + offs_c
            mask = (cc[:, None] < C) & pmask[None, :]
            for k in tl.static_range(K):
                d, h, w = view_target((CODES >> (4 * k)) & 15, D, H, W, d0, h0, w0)
                pixel = (k * N + n) * sn + d * sd + h * sh + w * sw
                x = tl.load(y_ptr + pixel[None, :] + cc[:, None] * sc, mask=mask, other=-float("inf")).to(tl.float32)
                mk = tl.max(tl.where(rows[:, None] == k, vmax, -float("inf")), axis=0)
                sk = tl.sum(tl.where(rows[:, None] == k, vsum, 0.0), axis=0)
                m_new = tl.maximum(mk, tl.max(x, axis=0))
                m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # all -inf so far: nothing to rescale
                sk = sk * tl.exp(mk - m_safe) + tl.sum(tl.exp(x - m_safe[None, :]), axis=0)
                vmax = tl.where(rows[:, None] == k, m_new[None, :], vmax)
                vsum = tl.where(rows[:, None] == k, sk[None, :], vsum)
    pred = tl.zeros([BLOCK_P], tl.int64)
    best = tl.full([BLOCK_P], -float("inf"), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + offs_c
        mask = (cc[:, None] < C) & pmask[None, :]
        acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
        for k in tl.static_range(K):  # in view order, as the merge sums
            d, h, w = view_target((CODES >> (4 * k)) & 15, D, H, W, d0, h0, w0)
            pixel = (k * N + n) * sn + d * sd + h * sh + w * sw
            x = tl.load(y_ptr + pixel[None, :] + cc[:, None] * sc, mask=mask, other=0.0).to(tl.float32)
            if SOFTMAX:
                mk = tl.max(tl.where(rows[:, None] == k, vmax, -float("inf")), axis=0)
                sk = tl.sum(tl.where(rows[:, None] == k, vsum, 0.0), axis=0)
                x = tl.exp(x - mk[None, :]) / sk[None, :]
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


def views_argmax(outputs, target, ignore_index, softmax, want_pred, views, volume):
    """Launcher. outputs (K*N, C, [D,] H, W), any strides (read in place); target (N, [D,] H, W) or
    None. Returns (pred (N, [D,] H, W) int64 or empty, confusion (C, C) int64 or empty, ok flag)."""
    K = len(views)
    N, C = outputs.shape[0] // K, outputs.shape[1]
    depth = outputs.dim() == 5  # (K*N, C, D, H, W), flipped in depth too when `volume`
    D, H, W = (outputs.shape[2] if depth else 1), outputs.shape[-2], outputs.shape[-1]
    sn, sc = outputs.stride(0), outputs.stride(1)
    sd, sh, sw = (outputs.stride(2) if depth else 0), outputs.stride(-2), outputs.stride(-1)
    dev = outputs.device
    pred_shape = (N, D, H, W) if depth else (N, H, W)
    pred = torch.empty(pred_shape if want_pred else (0,), device=dev, dtype=torch.int64)
    count = target is not None
    confusion = torch.zeros((C, C) if count else (0,), device=dev, dtype=torch.int64)
    ok = torch.ones((), device=dev, dtype=torch.int32)
    total = N * D * H * W
    if total:
        block_c = min(triton.next_power_of_2(C), MAX_TILE_C)
        block_p = min(triton.next_power_of_2(total), max(16, 2048 // block_c))
        _views_argmax_kernel[(triton.cdiv(total, block_p),)](
            outputs, target.contiguous() if count else pred, pred, confusion, ok, total, N, C, D, H, W, sn, sc, sd,
            sh, sw, ignore_index if ignore_index is not None else 0, CODES=pack_views(views), K=K,
            KPAD=triton.next_power_of_2(K), SOFTMAX=softmax, WANT_PRED=want_pred, COUNT=count,
            HAS_IGNORE=ignore_index is not None, BLOCK_C=block_c, BLOCK_P=block_p,
            BINS=hist_bins(C) if count else 0, num_warps=num_warps(block_c * block_p))
    return pred, confusion, ok
