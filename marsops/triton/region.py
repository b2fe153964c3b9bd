"""Triton region-loss passes (Dice, Jaccard, Tversky and their sums with a focal / cross-entropy
term; the loss itself is formed in marsops/losses.py). Same two passes as csrc/cpu/region_kernel.h:

- region_stats: per (image, class) sums I = sum p [y = c], S = sum p, T = sum [y = c] over the
  non-ignored pixels, and the focal term's loss sum, count and weight sum. Each program walks a
  strided set of pixel blocks of one image and writes its own float64 partial row; torch adds the
  rows up in a fixed order (deterministic, no float atomics).
- region_grad: one program per pixel block, dL/dx from dL/dI and dL/dS of each (group, class).

Up to MAX_TILE_C classes are one [BLOCK_C, BLOCK_P] register tile; more are streamed in chunks with
an online softmax (the logits are then read 2 or 3 times)."""
import torch
import triton
import triton.language as tl

from . import num_warps
from .focal import _class_terms, _focal_terms, _online_softmax, _read_labels, block_sizes, gamma_kind

MAX_PROGRAMS = 4096  # pass 1: about this many programs, each over several blocks of one image


@triton.jit
def _region_stats_kernel(x_ptr, y_ptr, fw_ptr, stats_ptr, focal_ptr, ok_ptr, C, P, pixel_stride, class_stride,
                         blocks_per_sample, splits, gamma, eps, ignore_index,
                         FOCAL: tl.constexpr, SMOOTH: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                         GAMMA_KIND: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                         CHUNKED: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = pid // splits
    base = n * C * P  # int64: n * C * P may pass 2**31
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    row = stats_ptr + pid * C * 3  # this program's (C, 3) partial sums
    acc_i = tl.zeros([BLOCK_C], tl.float64)
    acc_s = tl.zeros([BLOCK_C], tl.float64)
    acc_t = tl.zeros([BLOCK_C], tl.float64)
    f_loss = tl.zeros([BLOCK_P], tl.float64)
    f_count = tl.zeros([BLOCK_P], tl.float64)
    f_weight = tl.zeros([BLOCK_P], tl.float64)
    any_bad = tl.zeros([BLOCK_P], tl.int32)
    for b in range(pid - n * splits, blocks_per_sample, splits):
        offs_p = b * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = offs_p < P
        cls, w, valid, bad = _read_labels(y_ptr, fw_ptr, n * P + offs_p, pmask, C, ignore_index, HAS_WEIGHT)
        any_bad = tl.maximum(any_bad, bad.to(tl.int32))
        if not CHUNKED:
            x = tl.load(x_ptr + base + offs_c[:, None] * class_stride + offs_p[None, :] * pixel_stride,
                        mask=(offs_c[:, None] < C) & pmask[None, :], other=-float("inf")).to(tl.float32)
            m = tl.where(pmask, tl.max(x, axis=0), 0.0)
            e = tl.exp(x - m[None, :])
            s = tl.where(pmask, tl.sum(e, axis=0), 1.0)
            is_t = offs_c[:, None] == cls[None, :]
            # Ignored pixels are selected out: their logits may hold NaN or inf.
            p = tl.where(valid[None, :], e / s[None, :], 0.0)
            acc_i += tl.sum(tl.where(is_t, p, 0.0), axis=1).to(tl.float64)
            acc_s += tl.sum(p, axis=1).to(tl.float64)
            acc_t += tl.sum(is_t.to(tl.float32), axis=1).to(tl.float64)
            if FOCAL:
                xt = tl.sum(tl.where(is_t, x, 0.0), axis=0)
                et = tl.sum(tl.where(is_t, e, 0.0), axis=0)
                other = tl.sum(tl.where(is_t, 0.0, e), axis=0)
        else:
            m, s, xt, other, unused_pred = _online_softmax(x_ptr, base, offs_c, offs_p, pmask, cls, C, pixel_stride,
                                                           class_stride, BLOCK_C, BLOCK_P, False)
            et = tl.exp(xt - m)
            for c0 in range(0, C, BLOCK_C):
                cc = c0 + offs_c
                x = tl.load(x_ptr + base + cc[:, None] * class_stride + offs_p[None, :] * pixel_stride,
                            mask=(cc[:, None] < C) & pmask[None, :], other=-float("inf")).to(tl.float32)
                p = tl.where(valid[None, :], tl.exp(x - m[None, :]) / s[None, :], 0.0)
                is_t = cc[:, None] == cls[None, :]
                # The program's own row, read back after a barrier: no other program touches it.
                cmask = cc < C
                cur = row + cc * 3
                tl.store(cur, tl.load(cur, mask=cmask, other=0.0, cache_modifier=".cg")
                         + tl.sum(tl.where(is_t, p, 0.0), axis=1).to(tl.float64), mask=cmask)
                tl.store(cur + 1, tl.load(cur + 1, mask=cmask, other=0.0, cache_modifier=".cg")
                         + tl.sum(p, axis=1).to(tl.float64), mask=cmask)
                tl.store(cur + 2, tl.load(cur + 2, mask=cmask, other=0.0, cache_modifier=".cg")
                         + tl.sum(is_t.to(tl.float32), axis=1).to(tl.float64), mask=cmask)
                tl.debug_barrier()
        if FOCAL:
            loss, pixel_coef = _focal_terms(xt, m, s, et, other, w, valid, gamma, GAMMA_KIND)
            if SMOOTH:  # + eps / C of every class's focal term
                smooth_loss = tl.zeros([BLOCK_P], tl.float32)
                if not CHUNKED:
                    lc, class_coef = _class_terms(x, m, s, offs_c, C, fw_ptr, valid, gamma, HAS_WEIGHT, GAMMA_KIND)
                    smooth_loss = tl.sum(lc, axis=0)
                else:
                    for c0 in range(0, C, BLOCK_C):
                        cc = c0 + offs_c
                        x = tl.load(x_ptr + base + cc[:, None] * class_stride + offs_p[None, :] * pixel_stride,
                                    mask=(cc[:, None] < C) & pmask[None, :], other=-float("inf")).to(tl.float32)
                        lc, class_coef = _class_terms(x, m, s, cc, C, fw_ptr, valid, gamma, HAS_WEIGHT, GAMMA_KIND)
                        smooth_loss += tl.sum(lc, axis=0)
                loss = (1.0 - eps) * loss + eps / C * smooth_loss
            f_loss += loss.to(tl.float64)
            f_count += valid.to(tl.float64)
            f_weight += w.to(tl.float64)
    if not CHUNKED:
        cmask = offs_c < C
        tl.store(row + offs_c * 3, acc_i, mask=cmask)
        tl.store(row + offs_c * 3 + 1, acc_s, mask=cmask)
        tl.store(row + offs_c * 3 + 2, acc_t, mask=cmask)
    if FOCAL:
        tl.store(focal_ptr + pid * 3, tl.sum(f_loss, axis=0))
        tl.store(focal_ptr + pid * 3 + 1, tl.sum(f_count, axis=0))
        tl.store(focal_ptr + pid * 3 + 2, tl.sum(f_weight, axis=0))
    tl.atomic_min(ok_ptr, 0, mask=tl.max(any_bad, axis=0) > 0)


@triton.jit
def _region_grad_kernel(x_ptr, y_ptr, fw_ptr, coef_i_ptr, coef_s_ptr, scale_ptr, grad_ptr, C, P, pixel_stride,
                        class_stride, blocks_per_sample, gamma, eps, ignore_index,
                        PER_IMAGE: tl.constexpr, FOCAL: tl.constexpr, SMOOTH: tl.constexpr,
                        HAS_WEIGHT: tl.constexpr, GAMMA_KIND: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_P: tl.constexpr, CHUNKED: tl.constexpr):
    """dL/dx_j = p_j (A_j [y = j] + B_j - A_y p_y - sum_c p_c B_c) with A = dL/dI, B = dL/dS of the
    pixel's group, + scale * the focal term's gradient (see csrc/cpu/region_kernel.h)."""
    pid = tl.program_id(0).to(tl.int64)
    n = pid // blocks_per_sample
    offs_p = (pid - n * blocks_per_sample) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < P
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    cls, w, valid, bad = _read_labels(y_ptr, fw_ptr, n * P + offs_p, pmask, C, ignore_index, HAS_WEIGHT)
    base = n * C * P
    group = n * C if PER_IMAGE else n * 0
    scale = 0.0
    if FOCAL:
        scale = tl.load(scale_ptr)
    if not CHUNKED:
        cmask = offs_c < C
        tile_mask = cmask[:, None] & pmask[None, :]
        tile = base + offs_c[:, None] * class_stride + offs_p[None, :] * pixel_stride
        x = tl.load(x_ptr + tile, mask=tile_mask, other=-float("inf")).to(tl.float32)
        m = tl.where(pmask, tl.max(x, axis=0), 0.0)
        e = tl.exp(x - m[None, :])
        s = tl.where(pmask, tl.sum(e, axis=0), 1.0)
        p = e / s[None, :]
        is_t = offs_c[:, None] == cls[None, :]
        a_c = tl.load(coef_i_ptr + group + offs_c, mask=cmask, other=0.0)
        b_c = tl.load(coef_s_ptr + group + offs_c, mask=cmask, other=0.0)
        shared = tl.sum(tl.where(is_t, a_c[:, None] * p, 0.0), axis=0) + tl.sum(p * b_c[:, None], axis=0)
        g = p * (tl.where(is_t, a_c[:, None], 0.0) + b_c[:, None] - shared[None, :])
        if FOCAL:
            xt = tl.sum(tl.where(is_t, x, 0.0), axis=0)
            et = tl.sum(tl.where(is_t, e, 0.0), axis=0)
            other = tl.sum(tl.where(is_t, 0.0, e), axis=0)
            pixel_loss, coef = _focal_terms(xt, m, s, et, other, w, valid, gamma, GAMMA_KIND)
            if SMOOTH:
                coef = (1.0 - eps) * coef
            g += scale * coef[None, :] * (is_t.to(tl.float32) - p)
            if SMOOTH:
                class_loss, cc = _class_terms(x, m, s, offs_c, C, fw_ptr, valid, gamma, HAS_WEIGHT, GAMMA_KIND)
                g += eps / C * scale * (cc - p * tl.sum(cc, axis=0)[None, :])
        g = tl.where(valid[None, :], g, 0.0)  # ignored pixels: exactly 0, whatever their logits hold
        tl.store(grad_ptr + tile, g.to(grad_ptr.dtype.element_ty), mask=tile_mask)
    else:
        m, s, xt, other, unused_pred = _online_softmax(x_ptr, base, offs_c, offs_p, pmask, cls, C, pixel_stride,
                                                       class_stride, BLOCK_C, BLOCK_P, False)
        inv_s = 1.0 / s
        p_y = tl.exp(xt - m) * inv_s
        a_y = tl.load(coef_i_ptr + group + tl.where(valid, cls, 0), mask=valid, other=0.0)
        pb = tl.zeros([BLOCK_P], tl.float32)
        smooth_sum = tl.zeros([BLOCK_P], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cc = c0 + offs_c
            x = tl.load(x_ptr + base + cc[:, None] * class_stride + offs_p[None, :] * pixel_stride,
                        mask=(cc[:, None] < C) & pmask[None, :], other=-float("inf")).to(tl.float32)
            b_c = tl.load(coef_s_ptr + group + cc, mask=cc < C, other=0.0)
            pb += tl.sum(tl.exp(x - m[None, :]) * inv_s[None, :] * b_c[:, None], axis=0)
            if FOCAL and SMOOTH:
                smooth_loss, ccoef = _class_terms(x, m, s, cc, C, fw_ptr, valid, gamma, HAS_WEIGHT, GAMMA_KIND)
                smooth_sum += tl.sum(ccoef, axis=0)
        shared = a_y * p_y + pb
        if FOCAL:
            pixel_loss, coef = _focal_terms(xt, m, s, tl.exp(xt - m), other, w, valid, gamma, GAMMA_KIND)
            if SMOOTH:
                coef = (1.0 - eps) * coef
        for c0 in range(0, C, BLOCK_C):
            cc = c0 + offs_c
            cmask = cc < C
            tile_mask = cmask[:, None] & pmask[None, :]
            tile = base + cc[:, None] * class_stride + offs_p[None, :] * pixel_stride
            x = tl.load(x_ptr + tile, mask=tile_mask, other=-float("inf")).to(tl.float32)
            p = tl.exp(x - m[None, :]) * inv_s[None, :]
            is_t = cc[:, None] == cls[None, :]
            a_c = tl.load(coef_i_ptr + group + cc, mask=cmask, other=0.0)
            b_c = tl.load(coef_s_ptr + group + cc, mask=cmask, other=0.0)
            g = p * (tl.where(is_t, a_c[:, None], 0.0) + b_c[:, None] - shared[None, :])
            if FOCAL:
                g += scale * coef[None, :] * (is_t.to(tl.float32) - p)
                if SMOOTH:
                    class_loss, ccoef = _class_terms(x, m, s, cc, C, fw_ptr, valid, gamma, HAS_WEIGHT, GAMMA_KIND)
                    g += eps / C * scale * (ccoef - p * smooth_sum[None, :])
            g = tl.where(valid[None, :], g, 0.0)
            tl.store(grad_ptr + tile, g.to(grad_ptr.dtype.element_ty), mask=tile_mask)


def _layout(logits, target):
    """(x, y, class_last, pixel_stride, class_stride): logits as (N, C, P), or read in place as
    (N, P, C) when class-last (channels_last); target (N, P) contiguous."""
    from .._checks import is_class_last

    N, C = logits.shape[:2]
    P = target[0].numel() if N else 0
    class_last = is_class_last(logits)
    x = logits if class_last else logits.contiguous().view(N, C, P)
    return x, target.contiguous().view(N, P), class_last, (C if class_last else 1), (1 if class_last else P)


def _weight(focal_weight, like):
    return focal_weight.to(device=like.device, dtype=torch.float32).contiguous() if focal_weight is not None else like


def region_stats(logits, target, ignore_index, per_image, focal, focal_weight, gamma, label_smoothing):
    """Pass 1: (float64 (groups, C, 3) [I, S, T], float64 (3,) focal [loss sum, count, weight sum],
    int32 ok flag: 0 when a label lies outside [0, C) and is not ignore_index)."""
    N, C = logits.shape[:2]
    dev = logits.device
    groups = N if per_image else 1
    x, y, _, pixel_stride, class_stride = _layout(logits, target)
    P = y.shape[1]
    ok = torch.ones((), device=dev, dtype=torch.int32)
    if N * P == 0:
        return (torch.zeros((groups, C, 3), device=dev, dtype=torch.float64),
                torch.zeros(3, device=dev, dtype=torch.float64), ok)
    block_c, block_p, chunked = block_sizes(C, P)
    blocks_per_sample = triton.cdiv(P, block_p)
    splits = max(1, min(blocks_per_sample, MAX_PROGRAMS // N))
    programs = N * splits
    partial = torch.zeros((programs, C, 3), device=dev, dtype=torch.float64)
    focal_partial = torch.zeros((programs, 3), device=dev, dtype=torch.float64)
    _region_stats_kernel[(programs,)](
        x, y, _weight(focal_weight, x), partial, focal_partial, ok, C, P, pixel_stride, class_stride,
        blocks_per_sample, splits, float(gamma), float(label_smoothing), ignore_index, FOCAL=focal,
        SMOOTH=label_smoothing > 0, HAS_WEIGHT=focal_weight is not None, GAMMA_KIND=gamma_kind(gamma),
        BLOCK_C=block_c, BLOCK_P=block_p, CHUNKED=chunked, num_warps=num_warps(block_c * block_p))
    stats = partial.view(N, splits, C, 3).sum(1)
    return (stats if per_image else stats.sum(0, keepdim=True)), focal_partial.sum(0), ok


def region_grad(logits, target, ignore_index, per_image, coef_i, coef_s, focal, focal_weight, gamma,
                label_smoothing, focal_scale):
    """Pass 2: the gradient in the logits' dtype and layout. coef_i, coef_s: float32 (groups, C);
    focal_scale: a float32 device scalar."""
    from ..focal import _empty_gradient

    N, C = logits.shape[:2]
    x, y, _, pixel_stride, class_stride = _layout(logits, target)
    P = y.shape[1]
    grad = _empty_gradient(logits)
    if N * P == 0:
        return grad
    block_c, block_p, chunked = block_sizes(C, P)
    blocks_per_sample = triton.cdiv(P, block_p)
    _region_grad_kernel[(N * blocks_per_sample,)](
        x, y, _weight(focal_weight, x), coef_i, coef_s, focal_scale, grad, C, P, pixel_stride, class_stride,
        blocks_per_sample, float(gamma), float(label_smoothing), ignore_index, PER_IMAGE=per_image, FOCAL=focal,
        SMOOTH=label_smoothing > 0, HAS_WEIGHT=focal_weight is not None, GAMMA_KIND=gamma_kind(gamma),
        BLOCK_C=block_c, BLOCK_P=block_p, CHUNKED=chunked, num_warps=num_warps(block_c * block_p))
    return grad
