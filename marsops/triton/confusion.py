"""Triton confusion matrix: one program per (sample, block of pixels); the argmax over classes
of a [BLOCK_C, BLOCK_P] logits tile, a joint (true, predicted) histogram of the block, added to
the int64 (C, C) output with integer atomics (exact, deterministic)."""
import torch
import triton
import triton.language as tl


@triton.jit
def _confusion_kernel(x_ptr, y_ptr, hist_ptr, bad_ptr, C, P, ignore_index, FROM_LOGITS: tl.constexpr,
                      HAS_IGNORE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_P: tl.constexpr, BINS: tl.constexpr):
    pid_p = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < P
    t = tl.load(y_ptr + n * P + offs_p, mask=pmask, other=0).to(tl.int64)
    keep = pmask
    if HAS_IGNORE:
        keep = keep & (t != ignore_index)
    if FROM_LOGITS:
        offs_c = tl.arange(0, BLOCK_C)
        tile = n * C * P + offs_c[:, None] * P + offs_p[None, :]
        x = tl.load(x_ptr + tile, mask=(offs_c[:, None] < C) & pmask[None, :], other=-float("inf"))
        if UPCAST:
            x = x.to(tl.float32)
        # torch.argmax: the first maximum, and a NaN beats every number.
        is_nan = x != x
        first_nan = tl.min(tl.where(is_nan, offs_c[:, None], BLOCK_C), axis=0)
        m = tl.max(tl.where(is_nan, -float("inf"), x), axis=0)
        first_max = tl.min(tl.where(x == m[None, :], offs_c[:, None], BLOCK_C), axis=0)
        pred = tl.where(first_nan < BLOCK_C, first_nan, first_max).to(tl.int64)
    else:
        pred = tl.load(x_ptr + n * P + offs_p, mask=pmask, other=0).to(tl.int64)
    bad_t = keep & ((t < 0) | (t >= C))
    bad_p = keep & (~bad_t) & ((pred < 0) | (pred >= C))
    ok = keep & (~bad_t) & (~bad_p)
    bins = tl.where(ok, t * C + pred, BINS - 1)  # the last bin collects what is not counted
    h = tl.histogram(bins.to(tl.int32), BINS)
    offs_b = tl.arange(0, BINS)
    tl.atomic_add(hist_ptr + offs_b, h.to(tl.int64), mask=offs_b < C * C)
    flags = tl.max(bad_t.to(tl.int32), axis=0) + 2 * tl.max(bad_p.to(tl.int32), axis=0)
    tl.store(bad_ptr + n * tl.num_programs(0) + pid_p, flags)


def confusion_matrix(x, y, num_classes, ignore_index, from_logits):
    """Launcher. x: logits (N, C, P) or labels (N, P); y (N, P); all contiguous.
    Returns the int64 (C, C) matrix and per-program flags (1: bad target, 2: bad prediction)."""
    N, P = y.shape
    C = num_classes
    block_c = triton.next_power_of_2(C) if from_logits else 1
    block_p = min(triton.next_power_of_2(max(P, 1)), max(64, 8192 // block_c))
    hist = torch.zeros(C * C, device=y.device, dtype=torch.int64)
    grid = (triton.cdiv(P, block_p), N)
    flags = torch.zeros(grid[0] * grid[1], device=y.device, dtype=torch.int32)
    if N * P:
        _confusion_kernel[grid](x, y, hist, flags, C, P, ignore_index if ignore_index is not None else 0,
                                FROM_LOGITS=from_logits, HAS_IGNORE=ignore_index is not None,
                                UPCAST=from_logits and x.dtype in (torch.float16, torch.bfloat16),
                                BLOCK_C=block_c, BLOCK_P=block_p, BINS=triton.next_power_of_2(C * C + 1))
    return hist.view(C, C), flags
