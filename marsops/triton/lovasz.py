"""Triton passes of the Lovász-Softmax loss (semantics: marsops/lovasz.py), computed in fp32:

- _lovasz_errors_kernel: one program per pixel block of an image: the softmax of the block's
  logits (one [BLOCK_C, BLOCK_P] tile, classes padded to a power of 2), the errors
  ``e = |[y = c] - p_c|`` of the valid pixels (-1 for ignored ones, which sorts them last) and the
  labels (-1 when ignored), class-major, plus the bad-label flag.
- between the kernels, in PyTorch: torch.sort (stable, descending) of each (group, class) row of
  errors, Berman's lovasz_grad from cumulative sums of the sorted foreground flags (int64 counts,
  float64 Jaccard terms), the loss, and d(loss)/d(p) scattered back to pixel order with
  ``torch.Tensor.scatter_``;
- _lovasz_grad_kernel: one program per pixel block: the softmax again and
  dL/dx_j = p_j (dL/dp_j - sum_c p_c dL/dp_c), written in the logits' dtype and layout.
"""
import torch
import triton
import triton.language as tl

from . import num_warps
from .focal import _read_labels
from .region import _layout


@triton.jit
def _lovasz_errors_kernel(x_ptr, y_ptr, err_ptr, lab_ptr, ok_ptr, C, P, NP, pixel_stride, class_stride,
                          blocks_per_sample, ignore_index, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = pid // blocks_per_sample
    offs_p = (pid - n * blocks_per_sample) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < P
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    cmask = offs_c < C
    cls, w, valid, bad = _read_labels(y_ptr, y_ptr, n * P + offs_p, pmask, C, ignore_index, False)
    tile_mask = cmask[:, None] & pmask[None, :]
    x = tl.load(x_ptr + n * C * P + offs_c[:, None] * class_stride + offs_p[None, :] * pixel_stride,
                mask=tile_mask, other=-float("inf")).to(tl.float32)
    m = tl.where(pmask, tl.max(x, axis=0), 0.0)
    e = tl.exp(x - m[None, :])
    s = tl.where(pmask, tl.sum(e, axis=0), 1.0)
    p = e / s[None, :]
    fg = (offs_c[:, None] == cls[None, :]).to(tl.float32)
    # Ignored pixels are selected out (their logits may hold NaN or inf): error -1, sorted last.
    err = tl.where(valid[None, :], tl.abs(fg - p), -1.0)
    tl.store(err_ptr + offs_c[:, None] * NP + (n * P + offs_p)[None, :], err, mask=tile_mask)
    tl.store(lab_ptr + n * P + offs_p, cls.to(tl.int32), mask=pmask)
    tl.atomic_min(ok_ptr, 0, mask=tl.max(bad.to(tl.int32), axis=0) > 0)


@triton.jit
def _lovasz_grad_kernel(x_ptr, lab_ptr, dp_ptr, grad_ptr, C, P, pixel_stride, class_stride, blocks_per_sample,
                        dp_image_stride, dp_class_stride, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = pid // blocks_per_sample
    offs_p = (pid - n * blocks_per_sample) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < P
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    cmask = offs_c < C
    tile_mask = cmask[:, None] & pmask[None, :]
    valid = tl.load(lab_ptr + n * P + offs_p, mask=pmask, other=-1) >= 0
    tile = n * C * P + offs_c[:, None] * class_stride + offs_p[None, :] * pixel_stride
    x = tl.load(x_ptr + tile, mask=tile_mask, other=-float("inf")).to(tl.float32)
    m = tl.where(pmask, tl.max(x, axis=0), 0.0)
    e = tl.exp(x - m[None, :])
    s = tl.where(pmask, tl.sum(e, axis=0), 1.0)
    p = e / s[None, :]
    dp = tl.load(dp_ptr + n * dp_image_stride + offs_c[:, None] * dp_class_stride + offs_p[None, :],
                 mask=tile_mask, other=0.0)
    g = p * (dp - tl.sum(p * dp, axis=0)[None, :])
    g = tl.where(valid[None, :], g, 0.0)  # ignored pixels: exactly 0, whatever their logits hold
    tl.store(grad_ptr + tile, g.to(grad_ptr.dtype.element_ty), mask=tile_mask)


MAX_C = 1024  # classes of one register tile (more spill, and past 65536 the tile does not compile)


def _blocks(C: int, P: int):
    block_c = triton.next_power_of_2(C)
    block_p = min(triton.next_power_of_2(max(P, 1)), max(16, 4096 // block_c))
    return block_c, block_p


def _lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Berman's lovasz_grad along the last dim (reference.lovasz_grad), from exact int64 counts."""
    fg = fg_sorted.to(torch.int64)
    gts = fg.sum(-1, keepdim=True)
    cum_fg = fg.cumsum(-1)
    cum_bg = torch.arange(1, fg.shape[-1] + 1, device=fg.device) - cum_fg
    jac = 1 - (gts - cum_fg).double() / (gts + cum_bg).double()
    return torch.cat([jac[..., :1], jac[..., 1:] - jac[..., :-1]], -1)


def lovasz_softmax(logits, target, classes, only_present, per_image, ignore_index, compute_grad):
    """(loss in the logits' dtype, gradient or an empty tensor, int32 ok flag: 0 when a label lies
    outside [0, C) and is not ignore_index)."""
    from .._saved_gradient import saved_dtype
    from ..focal import _empty_gradient

    N, C = logits.shape[:2]
    if C > MAX_C:  # every class is held in one register tile
        raise ValueError(f"marsops.lovasz_softmax_loss: the triton backend supports up to {MAX_C} classes, got {C}; "
                         "use the cpu or reference backend")
    dev = logits.device
    x, y, _, pixel_stride, class_stride = _layout(logits, target)
    P = y.shape[1]
    NP = N * P
    ok = torch.ones((), device=dev, dtype=torch.int32)
    empty = logits.new_empty(0)
    if NP == 0:
        return torch.zeros((), device=dev, dtype=logits.dtype), (_empty_gradient(logits) if compute_grad else
                                                                 empty), ok
    block_c, block_p = _blocks(C, P)
    blocks_per_sample = triton.cdiv(P, block_p)
    errors = torch.empty((C, NP), device=dev, dtype=torch.float32)
    labels = torch.empty(NP, device=dev, dtype=torch.int32)
    warps = num_warps(block_c * block_p)
    _lovasz_errors_kernel[(N * blocks_per_sample,)](
        x, y, errors, labels, ok, C, P, NP, pixel_stride, class_stride, blocks_per_sample, ignore_index,
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=warps)

    groups, M = (N, P) if per_image else (1, NP)
    e = errors.view(C, groups, M).transpose(0, 1)  # (groups, C, M)
    e_sorted, perm = torch.sort(e, stable=True, dim=-1, descending=True)
    lab = labels.view(groups, 1, M).long().expand(groups, C, M).gather(-1, perm)
    fg = lab == torch.arange(C, device=dev).view(1, C, 1)
    kept = lab >= 0
    g = _lovasz_grad(fg)
    losses = (torch.where(kept, e_sorted, 0.0).double() * g).sum(-1)  # (groups, C)
    scored = torch.zeros(C, device=dev, dtype=torch.bool)
    scored[list(classes)] = True
    scored = scored.view(1, C).expand(groups, C)
    if only_present:
        scored = scored & fg.any(-1)
    count = scored.sum(-1, keepdim=True)
    weight = torch.where(scored, 1.0 / (count.clamp_min(1).double() * groups), 0.0)  # (groups, C)
    loss = (losses * weight).sum().to(logits.dtype)
    if not compute_grad:
        return loss, empty, ok
    d_sorted = torch.where(kept, g * weight.unsqueeze(-1), 0.0)
    d_sorted = torch.where(fg, -d_sorted, d_sorted).float()
    dp = torch.empty_like(e).scatter_(-1, perm, d_sorted)  # (groups, C, M) strided view of (C, groups * M)
    dp = dp.transpose(0, 1).contiguous()  # (C, N * P) class-major, as the errors
    grad = _empty_gradient(logits)
    assert grad.dtype == saved_dtype(logits.dtype)
    _lovasz_grad_kernel[(N * blocks_per_sample,)](
        x, labels, dp, grad, C, P, pixel_stride, class_stride, blocks_per_sample, P, NP,
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=warps)
    return loss, grad, ok
