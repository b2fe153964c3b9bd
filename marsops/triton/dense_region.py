"""Triton region sums against dense targets (Dice, Jaccard and Tversky losses in binary,
multi-label, soft-label and probability modes; the loss itself is formed by the caller). Two passes:

- dense_region_stats: per (group, class) sums I = sum v q t, S = sum v q, T = sum v t, with
  q = activation(x) (identity, sigmoid, or softmax over the classes of a pixel), t the target
  (a dense map of 0/1 or soft labels, or a class map) and v the element's validity. Each program
  walks a strided set of pixel blocks of one image and writes its own float64 partial row; torch
  adds the rows in a fixed order (deterministic, no float atomics). Bad input clears an int32
  "ok" flag with an integer atomic.
- dense_region_grad: one program per block of pixels (and of classes, for the elementwise
  activations): dL/dx from (A, B, D) = (dL/dI, dL/dS, dL/dT) of each (group, class), and dL/dt
  for soft targets.

x is (N, C, P), or (N, P, C) when class_last (read in place through two strides); a dense target
has x's shape and layout, a class map is (N, P). A program holds a [BLOCK_C, BLOCK_P] register
tile: the whole class vector of its pixels for softmax (so at most MAX_C classes), a chunk of at
most ELEMENTWISE_BLOCK_C classes for identity / sigmoid, which do not couple classes."""
import torch
import triton
import triton.language as tl

from . import num_warps, on_device_of

IDENTITY, SIGMOID, SOFTMAX = 0, 1, 2
MAX_C = 1024  # softmax: every class of a pixel in one register tile (what lovasz.py allows too)
ELEMENTWISE_BLOCK_C = 64  # identity / sigmoid: classes per program (more classes: more programs)
TILE = 4096  # elements of a [BLOCK_C, BLOCK_P] tile
MAX_PROGRAMS = 4096  # stats pass: about this many programs, each over several blocks of one image

_FLOAT_TARGETS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_TARGETS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@triton.jit
def _read_tile(x_ptr, y_ptr, base, n, offs_c, offs_p, C, P, pixel_stride, class_stride, ignore_index,
               ACTIVATION: tl.constexpr, TARGET_IS_MAP: tl.constexpr, FLOAT_TARGET: tl.constexpr,
               HAS_IGNORE: tl.constexpr):
    """(q, t, valid, bad, tile, tile_mask) of a [BLOCK_C, BLOCK_P] tile: q the activation in
    fp32, t the target in fp32 (0 where not valid), tile the int64 element offsets. Invalid
    elements' q may be NaN: every use selects it out."""
    cmask = offs_c < C
    pmask = offs_p < P
    tile_mask = cmask[:, None] & pmask[None, :]
    tile = base + offs_c[:, None] * class_stride + offs_p[None, :] * pixel_stride
    if TARGET_IS_MAP:
        label = tl.load(y_ptr + n * P + offs_p, mask=pmask, other=0).to(tl.int64)
        if HAS_IGNORE:
            ignored = label == ignore_index
        else:
            ignored = offs_p < 0  # none
        bad_p = pmask & (~ignored) & ((label < 0) | (label >= C))
        valid_p = pmask & (~ignored) & (~bad_p)
        valid = tile_mask & valid_p[None, :]
        t = tl.where(valid & (offs_c[:, None] == label[None, :]), 1.0, 0.0)
        bad = tile_mask & bad_p[None, :]
    elif FLOAT_TARGET:
        raw = tl.load(y_ptr + tile, mask=tile_mask, other=0)
        if raw.dtype == tl.float64:  # checked in its own precision: 1 + 1e-12 is outside [0, 1]
            inside = (raw >= 0.0) & (raw <= 1.0)  # false for NaN
        else:
            raw = raw.to(tl.float32)
            inside = (raw >= 0.0) & (raw <= 1.0)
        bad = tile_mask & (~inside)
        valid = tile_mask & inside
        t = tl.where(valid, raw.to(tl.float32), 0.0)
    else:
        k = tl.load(y_ptr + tile, mask=tile_mask, other=0).to(tl.int64)
        if HAS_IGNORE:
            ignored = k == ignore_index
        else:
            ignored = tile < 0  # none
        bad = tile_mask & (~ignored) & (k != 0) & (k != 1)
        valid = tile_mask & (~ignored) & (~bad)
        t = tl.where(valid, k.to(tl.float32), 0.0)
    if ACTIVATION == 2:  # softmax over the classes of each pixel (the whole class vector is in the tile)
        x = tl.load(x_ptr + tile, mask=tile_mask, other=-float("inf")).to(tl.float32)
        m = tl.where(pmask, tl.max(x, axis=0), 0.0)
        e = tl.exp(x - m[None, :])
        s = tl.where(pmask, tl.sum(e, axis=0), 1.0)
        q = e / s[None, :]
    elif ACTIVATION == 1:
        x = tl.load(x_ptr + tile, mask=tile_mask, other=0.0).to(tl.float32)
        e = tl.exp(-tl.abs(x))
        inv = 1.0 / (1.0 + e)
        q = tl.where(x >= 0, inv, e * inv)
    else:
        q = tl.load(x_ptr + tile, mask=tile_mask, other=0.0).to(tl.float32)
        bad = bad | (valid & ~((q >= 0.0) & (q <= 1.0)))  # a valid probability outside [0, 1] or NaN
    return q, t, valid, bad, tile, tile_mask


@triton.jit
def _dense_region_stats_kernel(x_ptr, y_ptr, partial_ptr, ok_ptr, C, P, pixel_stride, class_stride,
                               blocks_per_sample, splits, ignore_index, ACTIVATION: tl.constexpr,
                               TARGET_IS_MAP: tl.constexpr, FLOAT_TARGET: tl.constexpr,
                               HAS_IGNORE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Program (r, k): classes [k BLOCK_C, (k + 1) BLOCK_C) of pixel blocks r % splits, + splits, ...
    of image r // splits, summed into row r of the (N splits, C, 3) float64 partials."""
    pid = tl.program_id(0).to(tl.int64)
    n = pid // splits
    base = n * C * P  # int64: n * C * P may pass 2**31
    offs_c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    acc_i = tl.zeros([BLOCK_C], tl.float64)
    acc_s = tl.zeros([BLOCK_C], tl.float64)
    acc_t = tl.zeros([BLOCK_C], tl.float64)
    any_bad = tl.zeros([BLOCK_C], tl.int32)
    for b in range(pid - n * splits, blocks_per_sample, splits):
        offs_p = b * BLOCK_P + tl.arange(0, BLOCK_P)
        q, t, valid, bad, tile, tile_mask = _read_tile(x_ptr, y_ptr, base, n, offs_c, offs_p, C, P, pixel_stride,
                                                       class_stride, ignore_index, ACTIVATION, TARGET_IS_MAP,
                                                       FLOAT_TARGET, HAS_IGNORE)
        any_bad = tl.maximum(any_bad, tl.max(bad.to(tl.int32), axis=1))  # a [BLOCK_C] vector: fewer registers
        # Invalid elements are selected out: their logits may hold NaN or inf.
        vq = tl.where(valid, q, 0.0)
        acc_i += tl.sum(vq * t, axis=1).to(tl.float64)
        acc_s += tl.sum(vq, axis=1).to(tl.float64)
        acc_t += tl.sum(t, axis=1).to(tl.float64)
    row = partial_ptr + pid * C * 3 + offs_c * 3
    cmask = offs_c < C
    tl.store(row, acc_i, mask=cmask)
    tl.store(row + 1, acc_s, mask=cmask)
    tl.store(row + 2, acc_t, mask=cmask)
    tl.atomic_min(ok_ptr, 0, mask=tl.max(any_bad, axis=0) > 0)


@triton.jit
def _dense_region_grad_kernel(x_ptr, y_ptr, coef_ptr, grad_ptr, grad_t_ptr, C, P, pixel_stride, class_stride,
                              blocks_per_sample, ignore_index, ACTIVATION: tl.constexpr,
                              TARGET_IS_MAP: tl.constexpr, FLOAT_TARGET: tl.constexpr, HAS_IGNORE: tl.constexpr,
                              PER_IMAGE: tl.constexpr, TARGET_GRAD: tl.constexpr, BLOCK_C: tl.constexpr,
                              BLOCK_P: tl.constexpr):
    """gq = A t + B on valid elements (0 elsewhere); dL/dx = gq (identity), gq q (1 - q) (sigmoid),
    q_c (gq_c - sum_k q_k gq_k) (softmax); dL/dt = A q + D on valid elements."""
    pid = tl.program_id(0).to(tl.int64)
    n = pid // blocks_per_sample
    offs_p = (pid - n * blocks_per_sample) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    base = n * C * P
    q, t, valid, bad, tile, tile_mask = _read_tile(x_ptr, y_ptr, base, n, offs_c, offs_p, C, P, pixel_stride,
                                                   class_stride, ignore_index, ACTIVATION, TARGET_IS_MAP,
                                                   FLOAT_TARGET, HAS_IGNORE)
    cmask = offs_c < C
    group = n * C * 3 if PER_IMAGE else n * 0
    a_c = tl.load(coef_ptr + group + offs_c * 3, mask=cmask, other=0.0)
    b_c = tl.load(coef_ptr + group + offs_c * 3 + 1, mask=cmask, other=0.0)
    gq = tl.where(valid, a_c[:, None] * t + b_c[:, None], 0.0)
    if ACTIVATION == 2:
        pixel_valid = tl.max(valid.to(tl.int32), axis=0) > 0
        inner = tl.sum(tl.where(valid, q * gq, 0.0), axis=0)
        # A pixel with no valid element gets exactly 0, whatever its logits hold (its q may be NaN).
        g = tl.where(pixel_valid[None, :] & tile_mask, q * (gq - inner[None, :]), 0.0)
    elif ACTIVATION == 1:
        x = tl.load(x_ptr + tile, mask=tile_mask, other=0.0).to(tl.float32)
        e = tl.exp(-tl.abs(x))
        inv = 1.0 / (1.0 + e)
        # q (1 - q) = sigmoid(x) sigmoid(-x): no cancellation in 1 - q
        g = tl.where(valid, gq * (e * inv * inv), 0.0)
    else:
        g = gq
    tl.store(grad_ptr + tile, g.to(grad_ptr.dtype.element_ty), mask=tile_mask)
    if TARGET_GRAD:
        d_c = tl.load(coef_ptr + group + offs_c * 3 + 2, mask=cmask, other=0.0)
        gt = tl.where(valid, a_c[:, None] * q + d_c[:, None], 0.0)
        tl.store(grad_t_ptr + tile, gt, mask=tile_mask)


def _block_sizes(C: int, P: int, activation: int):
    """(BLOCK_C, BLOCK_P, class chunks) for C classes, P pixels per image."""
    if activation == SOFTMAX:
        if C > MAX_C:  # every class of a pixel is held in one register tile
            raise ValueError(f"marsops: the triton backend's softmax region losses support up to {MAX_C} classes, "
                             f"got {C}; use backend='cpu', or mode='multilabel' (a sigmoid per class)")
        block_c = triton.next_power_of_2(C)
    else:
        block_c = min(triton.next_power_of_2(C), ELEMENTWISE_BLOCK_C)
    block_p = min(triton.next_power_of_2(max(P, 1)), max(8, TILE // block_c))
    return block_c, block_p, triton.cdiv(C, block_c)


def _shape(x, target, activation, class_last, target_is_map):
    """(N, C, P) after checking what the caller promises."""
    assert x.dim() == 3 and x.is_contiguous(), "x: a contiguous 3-D tensor"
    assert x.dtype in (torch.float16, torch.bfloat16, torch.float32), f"x: fp16 / bf16 / fp32, got {x.dtype}"
    assert activation in (IDENTITY, SIGMOID, SOFTMAX), activation
    N, C, P = (x.shape[0], x.shape[2], x.shape[1]) if class_last else tuple(x.shape)
    assert C >= 1, "at least one class"
    assert target.is_contiguous() and target.device == x.device
    if target_is_map:
        assert target.shape == (N, P) and target.dtype in _INT_TARGETS, (target.shape, target.dtype)
    else:
        assert target.shape == x.shape and target.dtype in _FLOAT_TARGETS + _INT_TARGETS, (target.shape,
                                                                                          target.dtype)
    return N, C, P


def _flags(target, target_is_map, has_ignore, ignore_index):
    float_target = not target_is_map and target.is_floating_point()
    has_ignore = bool(has_ignore) and not float_target  # only integer targets have an ignore value
    return float_target, has_ignore, int(ignore_index) if has_ignore else 0


def dense_region_stats(x, target, activation, class_last, target_is_map, has_ignore, ignore_index, per_image):
    """(stats, ok): float64 (G, C, 3) [sum v q t, sum v q, sum v t] per (group, class), G = N if
    per_image else 1; ok an int32 (1,) tensor, 0 when an element is bad (a label outside [0, C),
    an integer target other than 0 / 1 / ignore_index, a float target outside [0, 1] or NaN, an
    identity-activation x outside [0, 1] or NaN on a valid element)."""
    N, C, P = _shape(x, target, activation, class_last, target_is_map)
    float_target, has_ignore, ignore_index = _flags(target, target_is_map, has_ignore, ignore_index)
    dev = x.device
    groups = N if per_image else 1
    ok = torch.ones(1, device=dev, dtype=torch.int32)
    block_c, block_p, chunks = _block_sizes(C, P, activation)
    if N * P == 0:
        return torch.zeros((groups, C, 3), device=dev, dtype=torch.float64), ok
    blocks_per_sample = triton.cdiv(P, block_p)
    splits = max(1, min(blocks_per_sample, MAX_PROGRAMS // (N * chunks)))
    partial = torch.empty((N * splits, C, 3), device=dev, dtype=torch.float64)  # every entry written once
    with on_device_of(x):  # Triton launches on the current device, which need not be x's
        _dense_region_stats_kernel[(N * splits, chunks)](
            x, target, partial, ok, C, P, C if class_last else 1, 1 if class_last else P, blocks_per_sample, splits,
            ignore_index, ACTIVATION=activation, TARGET_IS_MAP=target_is_map, FLOAT_TARGET=float_target,
            HAS_IGNORE=has_ignore, BLOCK_C=block_c, BLOCK_P=block_p, num_warps=num_warps(block_c * block_p))
    stats = partial.view(N, splits, C, 3).sum(1)
    return (stats if per_image else stats.sum(0, keepdim=True)), ok


def dense_region_grad(x, target, activation, class_last, target_is_map, has_ignore, ignore_index, per_image, coef,
                      want_target_grad):
    """(grad_x, grad_t): dL/dx in x's dtype, shape and layout from coef, a float32 (G, C, 3)
    [dL/dI, dL/dS, dL/dT] per (group, class); dL/dt in float32 with the target's shape when
    want_target_grad and the target is dense float, else an empty tensor. Inputs are not checked
    again (dense_region_stats ran first)."""
    N, C, P = _shape(x, target, activation, class_last, target_is_map)
    float_target, has_ignore, ignore_index = _flags(target, target_is_map, has_ignore, ignore_index)
    dev = x.device
    assert coef.dtype == torch.float32 and coef.is_contiguous() and coef.shape == (N if per_image else 1, C, 3), (
        coef.dtype, coef.shape)
    target_grad = bool(want_target_grad) and float_target
    grad_x = torch.empty_like(x)
    grad_t = (torch.empty(target.shape, device=dev, dtype=torch.float32) if target_grad
              else torch.empty(0, device=dev, dtype=torch.float32))
    block_c, block_p, chunks = _block_sizes(C, P, activation)
    if N * P == 0:
        return grad_x, grad_t
    blocks_per_sample = triton.cdiv(P, block_p)
    with on_device_of(x):
        _dense_region_grad_kernel[(N * blocks_per_sample, chunks)](
            x, target, coef, grad_x, grad_t if target_grad else grad_x, C, P, C if class_last else 1,
            1 if class_last else P, blocks_per_sample, ignore_index, ACTIVATION=activation,
            TARGET_IS_MAP=target_is_map, FLOAT_TARGET=float_target, HAS_IGNORE=has_ignore, PER_IMAGE=per_image,
            TARGET_GRAD=target_grad, BLOCK_C=block_c, BLOCK_P=block_p, num_warps=num_warps(block_c * block_p))
    return grad_x, grad_t
