"""Triton flips (views: csrc/views.h): each program handles BLOCK elements of the flattened
(planes, D, H, W) batch. The views are compile-time constants (4 bits each, packed into CODES), so
every flip and transpose resolves when the kernel is compiled. Indices are int64, and so is every
view's offset k * total (total alone may fit 32 bits while K * total does not)."""
import torch
import triton
import triton.language as tl

BLOCK = 1024


def pack_views(views) -> int:
    """The CODES constexpr: view k's code in bits 4k..4k+3."""
    return sum(int(code) << (4 * k) for k, code in enumerate(views))


@triton.jit
def view_source(code: tl.constexpr, D, H, W, d, h, w):
    """The source (d, h, w) that view `code` shows at output position (d, h, w)."""
    if code & 4:
        d = D - 1 - d
    if code & 2:
        h = H - 1 - h
    if code & 1:
        w = W - 1 - w
    if code & 8:
        return d, w, h
    return d, h, w


@triton.jit
def view_target(code: tl.constexpr, D, H, W, d, h, w):
    """The output position where view `code` puts source position (d, h, w)."""
    if code & 8:
        h, w = w, h
    if code & 4:
        d = D - 1 - d
    if code & 2:
        h = H - 1 - h
    if code & 1:
        w = W - 1 - w
    return d, h, w


@triton.jit
def _split(i, D, H, W):
    """(first element of its volume, d, h, w) of flat indices i of a (planes, D, H, W) layout."""
    w = i % W
    h = (i // W) % H
    d = (i // W // H) % D
    return i - (d * H + h) * W - w, d, h, w


@triton.jit
def _flip_views_kernel(x_ptr, out_ptr, total, D, H, W, CODES: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    first, d0, h0, w0 = _split(i, D, H, W)
    total64 = tl.cast(total, tl.int64)
    for k in tl.static_range(K):
        d, h, w = view_target((CODES >> (4 * k)) & 15, D, H, W, d0, h0, w0)
        # Each input element read once, written to its place in every view.
        tl.store(out_ptr + k * total64 + first + (d * H + h) * W + w, tl.load(x_ptr + i, mask=mask), mask=mask)


@triton.jit
def _flip_views_sum_kernel(y_ptr, out_ptr, total, D, H, W, scale, CODES: tl.constexpr, K: tl.constexpr,
                           ACC: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    first, d0, h0, w0 = _split(i, D, H, W)
    total64 = tl.cast(total, tl.int64)
    s = tl.zeros([BLOCK], ACC)
    for k in tl.static_range(K):  # in view order: the merge's rounding is fixed
        d, h, w = view_target((CODES >> (4 * k)) & 15, D, H, W, d0, h0, w0)
        s += tl.load(y_ptr + k * total64 + first + (d * H + h) * W + w, mask=mask).to(ACC)
    tl.store(out_ptr + i, (s * scale).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _flip_by_flags_kernel(x_ptr, flags_ptr, out_ptr, total, per_sample, D, H, W, ALLOWED: tl.constexpr,
                          BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    code = tl.load(flags_ptr + i // per_sample, mask=mask, other=0).to(tl.int32) & ALLOWED
    first, d, h, w = _split(i, D, H, W)
    d = tl.where((code & 4) != 0, D - 1 - d, d)
    h = tl.where((code & 2) != 0, H - 1 - h, h)
    w = tl.where((code & 1) != 0, W - 1 - w, w)
    transpose = (code & 8) != 0
    src = first + (d * H + tl.where(transpose, w, h)) * W + tl.where(transpose, h, w)
    tl.store(out_ptr + i, tl.load(x_ptr + src, mask=mask), mask=mask)


def _as_bits(t):
    """Flips move bits: bool is viewed as uint8 (Triton has no bool pointers of that layout)."""
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def _layout(x, volume):
    """(D, H, W) of the flipped dims of x (D = 1 for images)."""
    return (x.shape[-3] if volume else 1), x.shape[-2], x.shape[-1]


def flip_views(x, views, volume):
    x = x.contiguous()
    K = len(views)
    out = torch.empty((K * x.shape[0],) + tuple(x.shape[1:]), device=x.device, dtype=x.dtype)
    total = x.numel()
    if total:
        _flip_views_kernel[(triton.cdiv(total, BLOCK),)](_as_bits(x), _as_bits(out), total, *_layout(x, volume),
                                                         CODES=pack_views(views), K=K, BLOCK=BLOCK)
    return out


def flip_views_sum(y, views, volume, scale):
    y = y.contiguous()
    K = len(views)
    out = torch.empty((y.shape[0] // K,) + tuple(y.shape[1:]), device=y.device, dtype=y.dtype)
    total = out.numel()
    if total:
        acc = tl.float64 if y.dtype == torch.float64 else tl.float32
        _flip_views_sum_kernel[(triton.cdiv(total, BLOCK),)](y, out, total, *_layout(y, volume), float(scale),
                                                             CODES=pack_views(views), K=K, ACC=acc, BLOCK=BLOCK)
    return out


def flip_by_flags(x, flags, volume):
    x, flags = x.contiguous(), flags.contiguous()
    out = torch.empty_like(x)
    total = x.numel()
    if total:
        D, H, W = _layout(x, volume)
        allowed = 1 | 2 | (4 if volume else 0) | (8 if H == W else 0)
        _flip_by_flags_kernel[(triton.cdiv(total, BLOCK),)](_as_bits(x), flags, _as_bits(out), total,
                                                            total // x.shape[0], D, H, W, ALLOWED=allowed,
                                                            BLOCK=BLOCK)
    return out
