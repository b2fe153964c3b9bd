"""Triton focal loss: one program per block of pixels of one sample (a flat 1-D grid), loss,
gradient and (optionally) the confusion counts from one read of the logits. Up to MAX_TILE_C classes are held as one
[BLOCK_C, BLOCK_P] tile; more are streamed in chunks with an online softmax (two reads).

Every program writes its partial sums; the program that finishes last (an atomic counter) adds
them up in a fixed order and writes the reduced loss and an "all labels valid" flag, so a call
is a few launches and never waits for the host."""
import struct

import torch
import triton
import triton.language as tl

from . import num_warps
from .counting import argmax_tile, combine_argmax, count_pairs, hist_bins

# Which q**gamma formula the kernel compiles in (a constexpr, so the others cost nothing).
GAMMA_ZERO, GAMMA_HALF, GAMMA_ONE, GAMMA_TWO, GAMMA_OTHER = range(5)
MAX_TILE_C = 64  # classes held in registers at once; more are processed in chunks of this size
STATS = 4  # per program: loss sum, count, weight sum, any bad label
REDUCE_BLOCK = 1024


def gamma_kind(gamma: float) -> int:
    """Chosen from gamma as the kernel sees it (fp32): a tiny gamma that rounds to 0 must take
    the 0**0 = 1 path, not exp(0 * log 0) = NaN."""
    gamma32 = struct.unpack("f", struct.pack("f", gamma))[0]
    return {0.0: GAMMA_ZERO, 0.5: GAMMA_HALF, 1.0: GAMMA_ONE, 2.0: GAMMA_TWO}.get(gamma32, GAMMA_OTHER)


@triton.jit
def _read_labels(y_ptr, w_ptr, offs, mask, C, ignore_index, HAS_WEIGHT: tl.constexpr):
    """Labels of a block: (class or -1, weight or 0, valid, bad) per element. Compared as int64."""
    t = tl.load(y_ptr + offs, mask=mask, other=0).to(tl.int64)
    ignored = t == ignore_index
    bad = (~ignored) & ((t < 0) | (t >= C)) & mask
    valid = (~ignored) & (~bad) & mask
    cls = tl.where(valid, t, -1)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + tl.where(valid, t, 0), mask=valid, other=0.0).to(tl.float32)
    else:
        w = tl.where(valid, 1.0, 0.0)
    return cls, w, valid, bad


@triton.jit
def _is_last_program(counter_ptr):
    """True in the program that finishes last; its loads then see every program's stores."""
    tl.debug_barrier()  # this program's partials are stored before it is counted
    done = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    return done == tl.num_programs(0) - 1


@triton.jit
def _column_sum(partial_ptr, num_rows, col, K: tl.constexpr, REDUCE: tl.constexpr):
    """Sum of column `col` of a (num_rows, K) float64 array, in a fixed order."""
    acc = tl.zeros([REDUCE], tl.float64)
    for start in range(0, num_rows, REDUCE):
        rows = start + tl.arange(0, REDUCE)
        acc += tl.load(partial_ptr + rows.to(tl.int64) * K + col, mask=rows < num_rows, other=0.0,
                       cache_modifier=".cg")
    return tl.sum(acc, axis=0)


@triton.jit
def _target_stats_kernel(y_ptr, w_ptr, partial_ptr, scale_ptr, counter_ptr, n, C, ignore_index,
                         HAS_WEIGHT: tl.constexpr, WEIGHTED: tl.constexpr, BLOCK: tl.constexpr,
                         REDUCE: tl.constexpr):
    """1 / the mean's denominator (0 when nothing is counted), into scale_ptr: the main pass
    writes the gradient already divided by it."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    _, w, valid, _ = _read_labels(y_ptr, w_ptr, offs, offs < n, C, ignore_index, HAS_WEIGHT)
    tl.store(partial_ptr + pid * 2 + 0, tl.sum(valid.to(tl.float64), axis=0))
    tl.store(partial_ptr + pid * 2 + 1, tl.sum(w.to(tl.float64), axis=0))
    if _is_last_program(counter_ptr):
        if WEIGHTED:
            d = _column_sum(partial_ptr, tl.num_programs(0), 1, 2, REDUCE)
        else:
            d = _column_sum(partial_ptr, tl.num_programs(0), 0, 2, REDUCE)
        tl.store(scale_ptr, tl.where(d != 0, 1.0 / tl.where(d != 0, d, 1.0), 0.0).to(tl.float32))


@triton.jit
def _q_pow_gamma(q, gamma, GAMMA_KIND: tl.constexpr):
    if GAMMA_KIND == 0:
        qg = tl.full(q.shape, 1.0, tl.float32)
    elif GAMMA_KIND == 1:
        qg = tl.sqrt(q)
    elif GAMMA_KIND == 2:
        qg = q
    elif GAMMA_KIND == 3:
        qg = q * q
    else:
        qg = tl.exp(gamma * tl.log(q))
    return qg


@triton.jit
def _focal_terms(xt, m, s, et, other, w, valid, gamma, GAMMA_KIND: tl.constexpr):
    """(loss, coef) per pixel with dl/dx_j = coef * (delta_tj - p_j); see csrc/focal_math.h."""
    inv_s = 1.0 / s
    log_s = tl.log(s)
    logp = tl.where(valid, xt - m - log_s, 0.0)
    p = et * inv_s
    q = other * inv_s  # 1 - p without cancellation
    qg = _q_pow_gamma(q, gamma, GAMMA_KIND)
    # log(p) / q, by its series near q = 0.
    series = -1.0 - q * (0.5 + q * (1.0 / 3.0 + q * 0.25))
    ratio = tl.where(q < 1e-3, series, logp / q)
    a = w * qg
    # Finite logits more than fp32's largest value apart: xt - m overflows to -inf (m > 0 > xt), and
    # the loss a (m - xt + log s) is computed as a m - a xt + a log s (csrc/focal_math.h).
    gap = tl.where(xt > -float("inf"), xt - m, 0.0)
    pixel_loss = tl.where(gap == -float("inf"), a * m - a * xt + a * log_s, -a * logp)
    # Ignored pixels are selected out: their logits may hold NaN or inf.
    loss = tl.where(valid, pixel_loss, 0.0)
    if GAMMA_KIND == 0:  # the cross-entropy: no focal term (0 * inf for a -inf target logit)
        coef = tl.where(valid, -w * qg, 0.0)
    else:
        # p log(p) / q tends to 0 with p; where p underflowed to 0, log p may be -inf (0 * inf).
        p_ratio = tl.where(p > 0.0, p * ratio, 0.0)
        coef = tl.where(valid, w * (gamma * qg * p_ratio - qg), 0.0)
    return loss, coef


@triton.jit
def _class_terms(x, m, s, classes, C, w_ptr, valid, gamma, HAS_WEIGHT: tl.constexpr, GAMMA_KIND: tl.constexpr):
    """Every class's focal (loss, coef) on a [BLOCK_C, BLOCK_P] tile of logits (label smoothing);
    zero for classes past C and for ignored pixels."""
    e = tl.exp(x - m[None, :])
    if HAS_WEIGHT:
        wc = tl.load(w_ptr + classes, mask=classes < C, other=0.0).to(tl.float32)
    else:
        wc = tl.where(classes < C, 1.0, 0.0)
    keep = (classes[:, None] < C) & valid[None, :]
    return _focal_terms(x, m[None, :], s[None, :], e, tl.maximum(s[None, :] - e, 0.0), wc[:, None], keep, gamma,
                        GAMMA_KIND)


@triton.jit
def _online_softmax(x_ptr, base, offs_c, offs_p, pmask, cls, C, pixel_stride, class_stride, BLOCK_C: tl.constexpr,
                    BLOCK_P: tl.constexpr, COUNT: tl.constexpr):
    """Streamed over chunks of classes: max m, sum s of exp(x - m), the label's logit xt, the sum
    of the other classes' exponentials (1 - p_y without cancellation) and, with COUNT, the argmax
    (torch.argmax's rules); m = 0, s = 1 past P."""
    m = tl.full([BLOCK_P], -float("inf"), tl.float32)
    s = tl.zeros([BLOCK_P], tl.float32)
    other = tl.zeros([BLOCK_P], tl.float32)
    xt = tl.zeros([BLOCK_P], tl.float32)
    pred = tl.zeros([BLOCK_P], tl.int64)
    best = tl.full([BLOCK_P], -float("inf"), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + offs_c
        x = tl.load(x_ptr + base + cc[:, None] * class_stride + offs_p[None, :] * pixel_stride,
                    mask=(cc[:, None] < C) & pmask[None, :], other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # all -inf so far: nothing to rescale
        alpha = tl.exp(m - m_safe)
        e = tl.exp(x - m_safe[None, :])
        is_t = cc[:, None] == cls[None, :]
        s = s * alpha + tl.sum(e, axis=0)
        other = other * alpha + tl.sum(tl.where(is_t, 0.0, e), axis=0)
        xt += tl.sum(tl.where(is_t, x, 0.0), axis=0)
        m = m_new
        if COUNT:
            idx, mc = argmax_tile(x, offs_c, BLOCK_C)
            pred, best = combine_argmax(pred, best, c0 + idx, mc)
    return tl.where(pmask, m, 0.0), tl.where(pmask, s, 1.0), xt, other, pred


@triton.jit
def _focal_forward_kernel(x_ptr, y_ptr, w_ptr, scale_ptr, loss_ptr, grad_ptr, partial_ptr, ok_ptr, counter_ptr,
                          hist_ptr, C, P, pixel_stride, class_stride, blocks_per_sample, gamma, eps, ignore_index,
                          REDUCTION: tl.constexpr, SMOOTH: tl.constexpr,
                          HAS_WEIGHT: tl.constexpr, HAS_SCALE: tl.constexpr, STORE_GRAD: tl.constexpr,
                          GAMMA_KIND: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                          CHUNKED: tl.constexpr, REDUCE: tl.constexpr, COUNT: tl.constexpr, BINS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = pid // blocks_per_sample
    offs_p = (pid - n * blocks_per_sample) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < P
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    # Offsets in int64 (n and offs_c are): c * P or n * C * P may pass 2**31.
    cls, w, valid, bad = _read_labels(y_ptr, w_ptr, n * P + offs_p, pmask, C, ignore_index, HAS_WEIGHT)
    base = n * C * P

    if not CHUNKED:
        tile_mask = (offs_c[:, None] < C) & pmask[None, :]
        tile = base + offs_c[:, None] * class_stride + offs_p[None, :] * pixel_stride
        x = tl.load(x_ptr + tile, mask=tile_mask, other=-float("inf")).to(tl.float32)
        m = tl.where(pmask, tl.max(x, axis=0), 0.0)
        e = tl.exp(x - m[None, :])
        s = tl.where(pmask, tl.sum(e, axis=0), 1.0)
        is_t = offs_c[:, None] == cls[None, :]
        xt = tl.sum(tl.where(is_t, x, 0.0), axis=0)
        et = tl.sum(tl.where(is_t, e, 0.0), axis=0)
        other = tl.sum(tl.where(is_t, 0.0, e), axis=0)
        if COUNT:
            pred, _ = argmax_tile(x, offs_c, BLOCK_C)
    else:
        m, s, xt, other, pred = _online_softmax(x_ptr, base, offs_c, offs_p, pmask, cls, C, pixel_stride,
                                                class_stride, BLOCK_C, BLOCK_P, COUNT)
        et = tl.exp(xt - m)
    loss, coef = _focal_terms(xt, m, s, et, other, w, valid, gamma, GAMMA_KIND)
    if COUNT:
        count_pairs(hist_ptr, cls, pred.to(tl.int64), valid, C, BLOCK_P, BINS)
    if SMOOTH:  # + eps / C of every class's focal term (label smoothing, F.cross_entropy's weighting)
        smooth_loss = tl.zeros([BLOCK_P], tl.float32)
        smooth_sum = tl.zeros([BLOCK_P], tl.float32)
        if not CHUNKED:
            lc, cc = _class_terms(x, m, s, offs_c, C, w_ptr, valid, gamma, HAS_WEIGHT, GAMMA_KIND)
            smooth_loss = tl.sum(lc, axis=0)
            smooth_sum = tl.sum(cc, axis=0)
        else:
            for c0 in range(0, C, BLOCK_C):
                cc_ = c0 + offs_c
                x = tl.load(x_ptr + base + cc_[:, None] * class_stride + offs_p[None, :] * pixel_stride,
                            mask=(cc_[:, None] < C) & pmask[None, :], other=-float("inf")).to(tl.float32)
                lc, cc = _class_terms(x, m, s, cc_, C, w_ptr, valid, gamma, HAS_WEIGHT, GAMMA_KIND)
                smooth_loss += tl.sum(lc, axis=0)
                smooth_sum += tl.sum(cc, axis=0)
        loss = (1.0 - eps) * loss + eps / C * smooth_loss

    if REDUCTION == 0:
        tl.store(loss_ptr + n * P + offs_p, loss.to(loss_ptr.dtype.element_ty), mask=pmask)
    if STORE_GRAD:
        scale = 1.0
        if HAS_SCALE:
            scale = tl.load(scale_ptr)
        target_coef = coef * scale
        if SMOOTH:
            target_coef = (1.0 - eps) * target_coef
        inv_s = 1.0 / s
        if not CHUNKED:
            g = target_coef[None, :] * (is_t.to(tl.float32) - e * inv_s[None, :])
            if SMOOTH:
                g += eps / C * scale * (cc - e * inv_s[None, :] * smooth_sum[None, :])
            g = tl.where(valid[None, :], g, 0.0)
            tl.store(grad_ptr + tile, g.to(grad_ptr.dtype.element_ty), mask=tile_mask)
        else:
            for c0 in range(0, C, BLOCK_C):
                cc_ = c0 + offs_c
                tile_mask = (cc_[:, None] < C) & pmask[None, :]
                tile = base + cc_[:, None] * class_stride + offs_p[None, :] * pixel_stride
                x = tl.load(x_ptr + tile, mask=tile_mask, other=-float("inf")).to(tl.float32)
                pc = tl.exp(x - m[None, :]) * inv_s[None, :]
                is_t = cc_[:, None] == cls[None, :]
                g = target_coef[None, :] * (is_t.to(tl.float32) - pc)
                if SMOOTH:
                    _, cc = _class_terms(x, m, s, cc_, C, w_ptr, valid, gamma, HAS_WEIGHT, GAMMA_KIND)
                    g += eps / C * scale * (cc - pc * smooth_sum[None, :])
                g = tl.where(valid[None, :], g, 0.0)
                tl.store(grad_ptr + tile, g.to(grad_ptr.dtype.element_ty), mask=tile_mask)

    tl.store(partial_ptr + pid * 4 + 0, tl.sum(loss.to(tl.float64), axis=0))
    tl.store(partial_ptr + pid * 4 + 1, tl.sum(valid.to(tl.float64), axis=0))
    tl.store(partial_ptr + pid * 4 + 2, tl.sum(w.to(tl.float64), axis=0))
    tl.store(partial_ptr + pid * 4 + 3, tl.max(bad.to(tl.float64), axis=0))
    if _is_last_program(counter_ptr):
        programs = tl.num_programs(0)
        any_bad = _column_sum(partial_ptr, programs, 3, 4, REDUCE)
        tl.store(ok_ptr, (any_bad == 0).to(tl.int32))
        if REDUCTION != 0:
            total = _column_sum(partial_ptr, programs, 0, 4, REDUCE)
            if REDUCTION == 1:
                value = total
            else:
                if REDUCTION == 2:
                    d = _column_sum(partial_ptr, programs, 1, 4, REDUCE)
                else:
                    d = _column_sum(partial_ptr, programs, 2, 4, REDUCE)
                value = tl.where(d != 0, total / tl.where(d != 0, d, 1.0), 0.0)
            # Through fp32: a direct fp64 -> bf16 cast is wrong in the Triton interpreter.
            tl.store(loss_ptr, value.to(tl.float32).to(loss_ptr.dtype.element_ty))


def block_sizes(C: int, P: int):
    """(BLOCK_C, BLOCK_P, CHUNKED) for C classes and P pixels per sample."""
    block_c = min(triton.next_power_of_2(C), MAX_TILE_C)
    block_p = min(triton.next_power_of_2(max(P, 1)), max(16, 4096 // block_c))
    return block_c, block_p, C > MAX_TILE_C


def focal_loss_forward(logits, target, weight, gamma, ignore_index, reduction, compute_grad, count_confusion,
                       class_last=False, label_smoothing=0.0):
    """Launcher. logits (N, C, P) contiguous, or laid out as (N, P, C) when class_last (channels_last,
    read in place; the gradient is written the same way); target (N, P) contiguous. Returns
    (loss, grad, confusion, ok):
    confusion the int64 (C, C) counts (or empty), ok an int32 device scalar, 0 when a label lies
    outside [0, C) and is not ignore_index."""
    (N, P), C = target.shape, logits.shape[1]
    dev = logits.device
    block_c, block_p, chunked = block_sizes(C, P)
    w = weight.to(device=dev, dtype=torch.float32).contiguous() if weight is not None else logits  # dummy ptr
    loss = torch.empty((N, P) if reduction == 0 else (), device=dev, dtype=logits.dtype)
    from .._saved_gradient import saved_dtype

    grad = (torch.empty_like(logits, dtype=saved_dtype(logits.dtype)) if compute_grad  # same layout
            else torch.empty(0, device=dev, dtype=logits.dtype))
    confusion = torch.zeros((C, C) if count_confusion else (0,), device=dev, dtype=torch.int64)
    if N * P == 0:
        if reduction != 0:
            loss.zero_()
        return loss, grad, confusion, torch.ones((), device=dev, dtype=torch.int32)
    ok = torch.empty((), device=dev, dtype=torch.int32)  # written by the last program
    counters = torch.zeros(2, device=dev, dtype=torch.int32)
    scale = None
    if compute_grad and reduction >= 2:
        # The gradient is written in the main pass, so its 1/denominator is computed first.
        n_lab, block = N * P, 4096
        programs = triton.cdiv(n_lab, block)
        pre = torch.empty((programs, 2), device=dev, dtype=torch.float64)
        scale = torch.empty((), device=dev, dtype=torch.float32)
        _target_stats_kernel[(programs,)](target, w, pre, scale, counters[1:], n_lab, C, ignore_index,
                                          HAS_WEIGHT=weight is not None, WEIGHTED=reduction == 3, BLOCK=block,
                                          REDUCE=REDUCE_BLOCK)
    blocks_per_sample = triton.cdiv(P, block_p)
    programs = N * blocks_per_sample
    partial = torch.empty((programs, STATS), device=dev, dtype=torch.float64)
    _focal_forward_kernel[(programs,)](
        logits, target, w, scale if scale is not None else w, loss, grad, partial, ok, counters, confusion, C, P,
        C if class_last else 1, 1 if class_last else P, blocks_per_sample, float(gamma), float(label_smoothing),
        ignore_index, REDUCTION=reduction, SMOOTH=label_smoothing > 0, HAS_WEIGHT=weight is not None,
        HAS_SCALE=scale is not None, STORE_GRAD=compute_grad, GAMMA_KIND=gamma_kind(gamma), BLOCK_C=block_c,
        BLOCK_P=block_p, CHUNKED=chunked, REDUCE=REDUCE_BLOCK, COUNT=count_confusion,
        BINS=hist_bins(C) if count_confusion else 0,  # one compiled kernel per BLOCK_C when not counting
        num_warps=num_warps(block_c * block_p))
    return loss, grad, confusion, ok
