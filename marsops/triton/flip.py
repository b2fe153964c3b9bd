"""Triton flips: each program handles BLOCK elements of the flattened (N*M*H*W) batch, reading
each input element once. Indices are int64, and the four blocks of a flip4 batch are passed as
four pointers (no k * total product in the kernel that could pass 2**31)."""
import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _flip_offsets(i, H, W):
    """For flat indices i of a (planes, H, W) layout: (as is, left-right, up-down, both) sources."""
    w = i % W
    h = (i // W) % H
    plane = i - h * W - w
    return i, plane + h * W + (W - 1 - w), plane + (H - 1 - h) * W + w, plane + (H - 1 - h) * W + (W - 1 - w)


@triton.jit
def _flip4_kernel(x_ptr, out0, out1, out2, out3, total, H, W, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    v = tl.load(x_ptr + i, mask=mask)
    same, lr, ud, both = _flip_offsets(i, H, W)
    tl.store(out0 + same, v, mask=mask)
    tl.store(out1 + lr, v, mask=mask)
    tl.store(out2 + ud, v, mask=mask)
    tl.store(out3 + both, v, mask=mask)


@triton.jit
def _flip4_sum_kernel(y0, y1, y2, y3, out_ptr, total, H, W, scale, ACC: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    same, lr, ud, both = _flip_offsets(i, H, W)
    s = tl.load(y0 + same, mask=mask).to(ACC)
    s += tl.load(y1 + lr, mask=mask).to(ACC)
    s += tl.load(y2 + ud, mask=mask).to(ACC)
    s += tl.load(y3 + both, mask=mask).to(ACC)
    tl.store(out_ptr + i, (s * scale).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _flip_by_flags_kernel(x_ptr, flags_ptr, out_ptr, total, per_sample, H, W, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    f = tl.load(flags_ptr + i // per_sample, mask=mask, other=0).to(tl.int32)
    w = i % W
    h = (i // W) % H
    plane = i - h * W - w
    src_h = tl.where((f & 2) != 0, H - 1 - h, h)
    src_w = tl.where((f & 1) != 0, W - 1 - w, w)
    tl.store(out_ptr + i, tl.load(x_ptr + plane + src_h * W + src_w, mask=mask), mask=mask)


def _as_bits(t):
    """Flips move bits: bool is viewed as uint8 (Triton has no bool pointers of that layout)."""
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def flip4(x):
    x = x.contiguous()
    out = torch.empty((4 * x.shape[0],) + tuple(x.shape[1:]), device=x.device, dtype=x.dtype)
    total = x.numel()
    if total:
        blocks = _as_bits(out).view(4, total)
        _flip4_kernel[(triton.cdiv(total, BLOCK),)](_as_bits(x), *blocks, total, x.shape[-2], x.shape[-1],
                                                    BLOCK=BLOCK)
    return out


def flip4_sum(y, scale):
    y = y.contiguous()
    out = torch.empty((y.shape[0] // 4,) + tuple(y.shape[1:]), device=y.device, dtype=y.dtype)
    total = out.numel()
    if total:
        acc = tl.float64 if y.dtype == torch.float64 else tl.float32
        _flip4_sum_kernel[(triton.cdiv(total, BLOCK),)](*y.view(4, total), out, total, y.shape[-2], y.shape[-1],
                                                        float(scale), ACC=acc, BLOCK=BLOCK)
    return out


def flip_by_flags(x, flags):
    x, flags = x.contiguous(), flags.contiguous()
    out = torch.empty_like(x)
    total = x.numel()
    if total:
        per_sample = total // x.shape[0]
        _flip_by_flags_kernel[(triton.cdiv(total, BLOCK),)](_as_bits(x), flags, _as_bits(out), total, per_sample,
                                                            x.shape[-2], x.shape[-1], BLOCK=BLOCK)
    return out
