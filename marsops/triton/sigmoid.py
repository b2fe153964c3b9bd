"""Triton sigmoid focal loss (binary / multi-label masks): one program per block of elements of
the flattened logits (a flat 1-D grid), loss and gradient from one read of logits and targets.
The math is csrc/cpu/sigmoid_kernel.h's. Each program writes its float64 loss sum; torch adds them
up in a fixed order. Bad targets clear an "all valid" flag with an integer atomic."""
import torch
import triton
import triton.language as tl

from .._saved_gradient import saved_dtype
from .focal import _q_pow_gamma, gamma_kind

BLOCK = 1024


@triton.jit
def _sigmoid_focal_kernel(x_ptr, y_ptr, pw_ptr, scale_ptr, loss_ptr, grad_ptr, partial_ptr, ok_ptr, n, C, P, alpha,
                          gamma, ignore_index, FLOAT_TARGET: tl.constexpr, HAS_IGNORE: tl.constexpr,
                          HAS_PW: tl.constexpr, HAS_ALPHA: tl.constexpr, HAS_SCALE: tl.constexpr,
                          STORE_LOSS: tl.constexpr, STORE_GRAD: tl.constexpr, GAMMA_KIND: tl.constexpr,
                          BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # int64: n may pass 2**31
    mask = offs < n
    if FLOAT_TARGET:
        t = tl.load(y_ptr + offs, mask=mask, other=0).to(tl.float32)
        valid = mask & (t >= 0.0) & (t <= 1.0)  # false for NaN
        bad = mask & (~valid)
    else:
        label = tl.load(y_ptr + offs, mask=mask, other=0).to(tl.int64)
        if HAS_IGNORE:
            ignored = mask & (label == ignore_index)
        else:
            ignored = offs < 0  # none
        bad = mask & (~ignored) & (label != 0) & (label != 1)
        valid = mask & (~ignored) & (~bad)
        t = label.to(tl.float32)
    t = tl.where(valid, t, 0.0)
    # Ignored elements are selected out below: their logits may hold NaN or inf.
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_PW:
        w = tl.load(pw_ptr + (offs // P) % C, mask=mask, other=1.0).to(tl.float32)
    else:
        w = 1.0
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    l1 = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))  # log1p(e) to fp32 accuracy (Kahan's)
    inv = 1.0 / (1.0 + e)
    p = tl.where(x >= 0, inv, e * inv)  # sigmoid(x)
    omp = tl.where(x >= 0, e * inv, inv)  # sigmoid(-x) = 1 - p without cancellation
    a = w * t
    b = 1.0 - t
    sp_neg = tl.maximum(-x, 0.0) + l1  # -log p
    sp_pos = tl.maximum(x, 0.0) + l1  # -log(1 - p)
    q = t * omp + b * p
    qg = _q_pow_gamma(q, gamma, GAMMA_KIND)
    if HAS_ALPHA:
        at = alpha * t + (1.0 - alpha) * b
    else:
        at = 1.0
    # ce = a sp_neg + b sp_pos, the factors multiplied first (csrc/cpu/sigmoid_kernel.h): a product
    # leaves fp32's range only where the loss does, and a zero factor gives 0, never 0 * inf.
    k = at * qg
    loss = tl.where(valid, (k * a) * sp_neg + (k * b) * sp_pos, 0.0)
    if STORE_LOSS:
        tl.store(loss_ptr + offs, loss.to(loss_ptr.dtype.element_ty), mask=mask)
    if STORE_GRAD:
        g = qg * (b * p - a * omp)
        if GAMMA_KIND != 0:
            # q^(gamma-1) dq = q^gamma (dq / q), where |dq / q| <= 1: q^(gamma-1) alone overflows
            # for a tiny q and gamma < 1.
            dq = -(p * omp) * (2.0 * t - 1.0)
            r = tl.minimum(tl.maximum(dq / tl.where(q > 0.0, q, 1.0), -1.0), 1.0)
            f = gamma * qg * r
            # 0 where q does not move (dq = 0: a saturated sigmoid, whose ce may be inf for an inf logit)
            g += tl.where((q > 0.0) & (f != 0.0), (f * a) * sp_neg + (f * b) * sp_pos, 0.0)
        g = at * g
        if HAS_SCALE:
            g = g * tl.load(scale_ptr)
        tl.store(grad_ptr + offs, tl.where(valid, g, 0.0).to(grad_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + pid, tl.sum(loss.to(tl.float64), axis=0))
    tl.atomic_min(ok_ptr, 0, mask=tl.max(bad.to(tl.int32), axis=0) > 0)


def sigmoid_focal_forward(logits, target, pos_weight, alpha, gamma, ignore_index, reduction, compute_grad):
    """Launcher. logits and target of one shape (made contiguous here); reduction 0 none, 1 sum,
    2 mean. Returns (loss, grad, ok) with ok an int32 device flag, 0 when a target is invalid."""
    x = logits.contiguous()
    y = target.contiguous()
    if y.dtype == torch.bool:
        y = y.view(torch.uint8)
    dev, n = x.device, x.numel()
    float_target = y.is_floating_point()
    has_ignore = ignore_index is not None and not float_target
    C = pos_weight.numel() if pos_weight is not None else 1
    P = n // max(1, x.shape[0] * C) if C > 1 else max(n, 1)
    pw = pos_weight.to(device=dev, dtype=torch.float32).contiguous() if pos_weight is not None else x  # dummy ptr
    scale = None
    if reduction == 2:  # the mean's 1/count, on the device: no synchronisation
        count = (y != ignore_index).sum() if has_ignore else torch.full((), n, device=dev)  # a fill, not a copy
        scale = torch.where(count > 0, 1.0 / count.clamp_min(1).double(), 0.0).float()
    loss = torch.empty(x.shape if reduction == 0 else (), device=dev, dtype=x.dtype)
    grad = (torch.empty_like(x, dtype=saved_dtype(x.dtype)) if compute_grad
            else torch.empty(0, device=dev, dtype=x.dtype))
    ok = torch.ones((), device=dev, dtype=torch.int32)
    programs = triton.cdiv(n, BLOCK)
    partial = torch.zeros(max(programs, 1), device=dev, dtype=torch.float64)
    if n:
        _sigmoid_focal_kernel[(programs,)](
            x, y, pw, scale if scale is not None else pw, loss, grad, partial, ok, n, C, P,
            float(alpha), float(gamma), ignore_index if has_ignore else 0, FLOAT_TARGET=float_target,
            HAS_IGNORE=has_ignore, HAS_PW=pos_weight is not None, HAS_ALPHA=alpha >= 0, HAS_SCALE=scale is not None,
            STORE_LOSS=reduction == 0, STORE_GRAD=compute_grad, GAMMA_KIND=gamma_kind(gamma), BLOCK=BLOCK)
    if reduction != 0:
        total = partial.sum()
        loss.copy_(total if reduction == 1 else total * scale)
    return loss, grad, ok
