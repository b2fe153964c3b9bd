"""Triton focal loss: one program per (sample, block of pixels), all classes of the block held
as a [BLOCK_C, BLOCK_P] tile, loss and gradient from one read of the logits."""
import torch
import triton
import triton.language as tl

# Which q**gamma formula the kernel compiles in (a constexpr, so the others cost nothing).
GAMMA_ZERO, GAMMA_HALF, GAMMA_ONE, GAMMA_TWO, GAMMA_OTHER = range(5)


def gamma_kind(gamma: float) -> int:
    """Chosen from gamma as the kernel sees it (fp32): a tiny gamma that rounds to 0 must take
    the 0**0 = 1 path, not exp(0 * log 0) = NaN."""
    gamma32 = float(torch.tensor(gamma, dtype=torch.float32))
    return {0.0: GAMMA_ZERO, 0.5: GAMMA_HALF, 1.0: GAMMA_ONE, 2.0: GAMMA_TWO}.get(gamma32, GAMMA_OTHER)


@triton.jit
def _read_labels(y_ptr, w_ptr, offs, mask, C, ignore_index, HAS_WEIGHT: tl.constexpr):
    """Labels of a block: (class or -1, weight or 0, valid, bad) per element."""
    t = tl.load(y_ptr + offs, mask=mask, other=ignore_index).to(tl.int64)
    ignored = t == ignore_index
    bad = (t != ignore_index) & ((t < 0) | (t >= C)) & mask
    valid = (~ignored) & (~bad) & mask
    cls = tl.where(valid, t, -1)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + tl.where(valid, t, 0), mask=valid, other=0.0).to(tl.float32)
    else:
        w = tl.where(valid, 1.0, 0.0)
    return cls, w, valid, bad


@triton.jit
def _target_stats_kernel(y_ptr, w_ptr, stats_ptr, n, C, ignore_index, HAS_WEIGHT: tl.constexpr,
                         BLOCK: tl.constexpr):
    """Per program: [count, weight sum, any bad label] of its BLOCK labels."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    _, w, valid, bad = _read_labels(y_ptr, w_ptr, offs, offs < n, C, ignore_index, HAS_WEIGHT)
    tl.store(stats_ptr + pid * 3 + 0, tl.sum(valid.to(tl.float32), axis=0))
    tl.store(stats_ptr + pid * 3 + 1, tl.sum(w, axis=0))
    tl.store(stats_ptr + pid * 3 + 2, tl.max(bad.to(tl.float32), axis=0))


@triton.jit
def _focal_forward_kernel(x_ptr, y_ptr, w_ptr, scale_ptr, loss_ptr, grad_ptr, stats_ptr, C, P, gamma, ignore_index,
                          HAS_WEIGHT: tl.constexpr, HAS_SCALE: tl.constexpr, STORE_LOSS: tl.constexpr,
                          STORE_GRAD: tl.constexpr, GAMMA_KIND: tl.constexpr, BLOCK_C: tl.constexpr,
                          BLOCK_P: tl.constexpr):
    pid_p = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < P
    offs_c = tl.arange(0, BLOCK_C)
    tile_mask = (offs_c[:, None] < C) & pmask[None, :]
    cls, w, valid, bad = _read_labels(y_ptr, w_ptr, n * P + offs_p, pmask, C, ignore_index, HAS_WEIGHT)

    tile = n * C * P + offs_c[:, None] * P + offs_p[None, :]
    x = tl.load(x_ptr + tile, mask=tile_mask, other=-float("inf")).to(tl.float32)
    m = tl.where(pmask, tl.max(x, axis=0), 0.0)
    e = tl.exp(x - m[None, :])
    s = tl.where(pmask, tl.sum(e, axis=0), 1.0)
    is_t = offs_c[:, None] == cls[None, :]
    xt = tl.sum(tl.where(is_t, x, 0.0), axis=0)
    et = tl.sum(tl.where(is_t, e, 0.0), axis=0)
    other = tl.sum(tl.where(is_t, 0.0, e), axis=0)
    inv_s = 1.0 / s
    logp = tl.where(valid, xt - m - tl.log(s), 0.0)
    p = et * inv_s
    q = other * inv_s  # 1 - p without cancellation
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
    # log(p) / q, by its series near q = 0 (see csrc/focal_math.h).
    series = -1.0 - q * (0.5 + q * (1.0 / 3.0 + q * 0.25))
    ratio = tl.where(q < 1e-3, series, logp / q)
    loss = tl.where(valid, -w * qg * logp, 0.0)
    coef = tl.where(valid, w * (gamma * qg * p * ratio - qg), 0.0)
    if STORE_LOSS:
        tl.store(loss_ptr + n * P + offs_p, loss.to(loss_ptr.dtype.element_ty), mask=pmask)
    if STORE_GRAD:
        if HAS_SCALE:
            coef = coef * tl.load(scale_ptr)
        # Ignored pixels get an exact 0, whatever their logits hold (NaN and inf included).
        g = tl.where(valid[None, :], coef[None, :] * (is_t.to(tl.float32) - e * inv_s[None, :]), 0.0)
        tl.store(grad_ptr + tile, g.to(grad_ptr.dtype.element_ty), mask=tile_mask)
    prog = n * tl.num_programs(0) + pid_p
    tl.store(stats_ptr + prog * 4 + 0, tl.sum(loss, axis=0))
    tl.store(stats_ptr + prog * 4 + 1, tl.sum(valid.to(tl.float32), axis=0))
    tl.store(stats_ptr + prog * 4 + 2, tl.sum(w, axis=0))
    tl.store(stats_ptr + prog * 4 + 3, tl.max(bad.to(tl.float32), axis=0))


def _inverse(denom: torch.Tensor) -> torch.Tensor:
    return torch.where(denom > 0, 1.0 / denom.clamp_min(1e-30), torch.zeros_like(denom))


def focal_loss_forward(logits, target, weight, gamma, ignore_index, reduction, compute_grad, raise_if):
    """Launcher. logits (N, C, P) and target (N, P) contiguous; returns (loss, grad, any bad label)."""
    N, C, P = logits.shape
    dev = logits.device
    block_c = triton.next_power_of_2(C)
    block_p = min(triton.next_power_of_2(max(P, 1)), max(16, 4096 // block_c))
    w = weight.to(device=dev, dtype=torch.float32).contiguous() if weight is not None else logits  # dummy ptr
    loss = torch.empty((N, P) if reduction == 0 else (), device=dev, dtype=logits.dtype)
    grad = torch.empty_like(logits) if compute_grad else torch.empty(0, device=dev, dtype=logits.dtype)
    scale = None
    if compute_grad and reduction >= 2:
        # The gradient is written in the main pass, so its 1/denominator is computed first.
        n_lab, block = N * P, 4096
        pre = torch.zeros((max(triton.cdiv(n_lab, block), 1), 3), device=dev, dtype=torch.float32)
        if n_lab:
            _target_stats_kernel[(triton.cdiv(n_lab, block),)](target, w, pre, n_lab, C, ignore_index,
                                                               HAS_WEIGHT=weight is not None, BLOCK=block)
        sums = pre.double().sum(0)
        raise_if(sums[2] > 0)
        scale = _inverse(sums[0] if reduction == 2 else sums[1]).float()
    grid = (triton.cdiv(P, block_p), N)
    stats = torch.zeros((grid[0] * grid[1], 4), device=dev, dtype=torch.float32)
    if N * P:
        _focal_forward_kernel[grid](
            logits, target, w, scale if scale is not None else w, loss, grad, stats, C, P, float(gamma),
            ignore_index, HAS_WEIGHT=weight is not None, HAS_SCALE=scale is not None, STORE_LOSS=reduction == 0,
            STORE_GRAD=compute_grad, GAMMA_KIND=gamma_kind(gamma), BLOCK_C=block_c, BLOCK_P=block_p)
    sums = stats.double().sum(0)
    raise_if(sums[3] > 0)
    if reduction == 1:
        loss.copy_(sums[0])
    elif reduction >= 2:
        loss.copy_(sums[0] * _inverse(sums[1] if reduction == 2 else sums[2]))
    return loss, grad
