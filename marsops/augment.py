"""On-device flip augmentation of image + mask batches (images and volumes), and flip / dihedral
test-time augmentation.

Flip names: "left-right" (horizontal) reverses W, "up-down" (vertical) reverses H, "depth"
reverses D of volumes ``(N, *, D, H, W)``. Every op here is one kernel built on views (csrc/views.h):
a view is a code, bit 0 reversing W, bit 1 H, bit 2 D, bit 3 transposing H and W (square images).
"""
import operator
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _checks, _extension, backend as _backend, reference
from . import triton as _triton

LEFT_RIGHT, UP_DOWN, DEPTH, TRANSPOSE = 1, 2, 4, 8  # bits of a view code / of the per-sample flags
FLIP4_ORDER = ("as is", "left-right", "up-down", "both")
D4_VIEWS = (0, 1, 2, 3, 8, 9, 10, 11)  # the 8 symmetries of a square: flips, then with a transpose
_BIT_OF_DIM = {-1: LEFT_RIGHT, -2: UP_DOWN, -3: DEPTH}


def flip_views_for(dims: Sequence[int]) -> Tuple[int, ...]:
    """The views of flip4(dims=...): every subset of the flipped dims, in binary order over the dims
    from the last (for (-2, -1): as is, left-right, up-down, both)."""
    try:
        ints = [operator.index(d) for d in dims]  # 0-dim tensors too (whose set() would not dedupe)
        bits = [_BIT_OF_DIM[d] for d in sorted(set(ints), reverse=True)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"marsops.flip4: dims must be a non-empty subset of (-3, -2, -1), got {dims!r}") from None
    if not bits or len(bits) != len(ints):
        raise ValueError(f"marsops.flip4: dims must be a non-empty subset of (-3, -2, -1), got {dims!r}")
    return tuple(sum(b for j, b in enumerate(bits) if k >> j & 1) for k in range(2 ** len(bits)))


def _check_pair(images: Tensor, masks: Optional[Tensor], op: str, volume: bool):
    _checks.check_tensor("images", images, op)
    if images.is_complex():
        raise TypeError(f"marsops.{op}: complex images are not supported; flips take real floating, integer and "
                        f"bool dtypes, got {images.dtype}")
    need = 4 if volume else 3
    if images.dim() < need:
        raise ValueError(f"marsops.{op}: images must be (N, *, {'D, ' if volume else ''}H, W), got shape "
                         f"{tuple(images.shape)}")
    if masks is None:
        return
    _checks.check_tensor("masks", masks, op)
    _checks.check_integer("masks", masks, op)
    trailing = masks.dim() - 1
    expected = (images.shape[0],) + tuple(images.shape[images.dim() - trailing:])
    if masks.dim() < need or masks.dim() > images.dim() or tuple(masks.shape) != expected:
        raise ValueError(f"marsops.{op}: masks shape {tuple(masks.shape)} does not match images shape "
                         f"{tuple(images.shape)}: masks are (N, {'D, ' if volume else ''}H, W) or (N, *, H, W) "
                         "with the images' trailing sizes")
    _checks.check_same_device(op, images=images, masks=masks)


def _op(name: str, x: Tensor, backend: str, op: str):
    """The callable implementing flip op `name` for x under `backend` (public op `op`)."""
    chosen = _backend.resolve(name, x, backend)
    if chosen == "reference":
        return getattr(reference, name)  # torch ops: every autograd mode works
    _checks.refuse_unsupported_autograd(op, x)
    if chosen == "triton":
        return getattr(torch.ops.marsops, name + "_triton")
    return getattr(torch.ops.marsops, name)


def _expand(images, masks, views, volume, backend, op):
    _check_pair(images, masks, op, volume)
    views = list(views)
    out_images = _op("flip_views", images, backend, op)(images, views, volume)
    out_masks = None if masks is None else _op("flip_views", masks, backend, op)(masks, views, volume)
    return out_images, out_masks


def flip4(images: Tensor, masks: Optional[Tensor] = None, dims: Sequence[int] = (-2, -1),
          backend: str = "auto") -> Tuple[Tensor, Optional[Tensor]]:
    """The report's four-way expansion: (N, ...) -> (4N, ...) holding every sample as is,
    flipped left-right, flipped up-down and both, in that order, as four blocks of N:
    ``out[k * N + i] = flip_k(x[i])``. One kernel per tensor.

    dims: the flipped dims, a subset of (-3, -2, -1); with -3 the images are volumes
    ``(N, *, D, H, W)`` and the expansion is ``2**len(dims)``-fold (8 views with the depth flip), in
    binary order over the dims from the last (``flip_views_for(dims)``).

    Images of any real dtype (float, integer, bool; complex is refused) are differentiable
    through the flips when floating; masks (N, [D,] H, W) keep their integer dtype. Returns
    (images, masks); masks is None when not given.
    """
    return _expand(images, masks, flip_views_for(dims), -3 in dims, backend, "flip4")


def d4(images: Tensor, masks: Optional[Tensor] = None, backend: str = "auto") -> Tuple[Tensor, Optional[Tensor]]:
    """The dihedral expansion of square images (H == W): (N, ...) -> (8N, ...), the 8 symmetries of
    the square (the identity, 3 flips, then the transpose and its 3 flips: D4_VIEWS), as blocks of
    N, in one kernel per tensor. Same image / mask and autograd rules as flip4."""
    _checks.check_tensor("images", images, "d4")
    if images.dim() >= 2 and images.shape[-1] != images.shape[-2]:
        raise ValueError(f"marsops.d4: needs square images (H == W), got shape {tuple(images.shape)}")
    return _expand(images, masks, D4_VIEWS, False, backend, "d4")


def _merge(outputs: Tensor, views, volume: bool, backend: str, op: str) -> Tensor:
    _checks.check_tensor("outputs", outputs, op)
    _checks.check_float("outputs", outputs, op)
    K = len(views)
    if outputs.dim() < (4 if volume else 3) or outputs.shape[0] % K:
        raise ValueError(f"marsops.{op}: expected the outputs of a {K}-view batch ({K}N, ..., H, W), got shape "
                         f"{tuple(outputs.shape)}")
    return _op("flip_views_sum", outputs, backend, op)(outputs, list(views), volume, 1.0 / K)


def flip4_merge(outputs: Tensor, dims: Sequence[int] = (-2, -1), backend: str = "auto") -> Tensor:
    """Test-time augmentation: for model outputs (4N, C, H, W) of a flip4 batch, undo each flip
    and average the four views back to (N, C, H, W), in one pass. dims as in flip4."""
    return _merge(outputs, flip_views_for(dims), -3 in dims, backend, "flip4_merge")


def d4_merge(outputs: Tensor, backend: str = "auto") -> Tensor:
    """Test-time augmentation: for model outputs (8N, C, H, W) of a d4 batch, undo each symmetry
    and average the eight views back to (N, C, H, W), in one pass."""
    if outputs.dim() >= 2 and outputs.shape[-1] != outputs.shape[-2]:
        raise ValueError(f"marsops.d4_merge: needs square outputs (H == W), got shape {tuple(outputs.shape)}")
    return _merge(outputs, D4_VIEWS, False, backend, "d4_merge")


def flip4_argmax(outputs: Tensor, softmax: bool = True, dims: Sequence[int] = (-2, -1), backend: str = "auto") -> Tensor:
    """Flip test-time augmentation, as predictions: for model outputs (4N, C, H, W) of a flip4
    batch (8N, C, D, H, W with dims=(-3, -2, -1)), undo each flip, average the views (their
    softmax, or the logits when softmax is False) and take the argmax over classes: (N, [D,] H, W)
    int64 labels, equal to ``flip4_merge(outputs.softmax(1)).argmax(1)`` but in one pass that never
    builds the softmax or the merged tensor. Outputs are read in place (channels_last included);
    computed in fp32; ties go to the first class, NaN wins. ``StreamingIoU.update_flip4`` counts
    the same predictions against targets."""
    pred, _ = views_argmax_op(outputs, None, None, softmax, True, flip_views_for(dims), -3 in dims, backend)
    return pred


def d4_argmax(outputs: Tensor, softmax: bool = True, backend: str = "auto") -> Tensor:
    """Dihedral test-time augmentation, as predictions: flip4_argmax for the outputs (8N, C, H, W)
    of a d4 batch of square images."""
    pred, _ = views_argmax_op(outputs, None, None, softmax, True, D4_VIEWS, False, backend)
    return pred


def views_argmax_op(outputs: Tensor, target: Optional[Tensor], ignore_index: Optional[int], softmax: bool,
                    want_pred: bool, views, volume: bool, backend: str):
    """(pred, counts) of the views_argmax op for `outputs` (checked here) and an optional target."""
    op = "flip4_argmax"
    softmax = _checks.as_bool("softmax", softmax, op)
    _checks.check_tensor("outputs", outputs, op)
    _checks.check_float("outputs", outputs, op)
    K = len(views)
    if outputs.dim() not in ((5,) if volume else (4, 5)) or outputs.shape[0] % K:
        raise ValueError(f"marsops.flip4_argmax: expected the outputs of a {K}-view batch ({K}N, C, "
                         f"{'D, ' if volume else '[D, ]'}H, W), got shape {tuple(outputs.shape)}")
    if outputs.shape[1] < 1:
        raise ValueError("marsops.flip4_argmax: outputs need at least one class")
    if any(code & TRANSPOSE for code in views) and outputs.shape[-1] != outputs.shape[-2]:
        raise ValueError(f"marsops.d4_argmax: needs square outputs (H == W), got shape {tuple(outputs.shape)}")
    if target is not None:
        _checks.check_tensor("target", target, op)
        _checks.check_integer("target", target, op)
        expected = (outputs.shape[0] // K,) + tuple(outputs.shape[2:])
        if tuple(target.shape) != expected:
            raise ValueError(f"marsops.flip4_argmax: target shape {tuple(target.shape)} does not match outputs shape "
                             f"{tuple(outputs.shape)}; expected {expected}")
        _checks.check_same_device(op, outputs=outputs, target=target)
    chosen = _backend.resolve("views_argmax", outputs, backend)
    if chosen == "reference":
        return reference.views_argmax(outputs, target, ignore_index, softmax, want_pred, list(views), volume)
    fn = torch.ops.marsops.views_argmax_triton if chosen == "triton" else torch.ops.marsops.views_argmax
    with _checks.label_errors_as_value_errors():
        return fn(outputs, target, ignore_index, bool(softmax), bool(want_pred), list(views), volume)


def random_flip(images: Tensor, masks: Optional[Tensor] = None, p_h: float = 0.5, p_v: float = 0.5,
                generator: Optional[torch.Generator] = None, backend: str = "auto", p_d: float = 0.0,
                p_t: float = 0.0) -> Tuple[Tensor, Optional[Tensor], Tensor]:
    """Per-sample random flips, the same flip for a sample's image and mask, in one launch each.

    p_h: probability of a left-right (horizontal) flip; p_v: of an up-down (vertical) flip; p_d:
    of a depth flip (volumes ``(N, *, D, H, W)``: dim -3); p_t: of a transpose of H and W (square
    images: with p_h = p_v = p_t = 0.5 every dihedral symmetry is equally likely). The decisions
    are drawn on the images' device (from `generator`, which must live there, for reproducible
    draws). Returns (images, masks, flips) with flips an (N, 4) bool tensor of [left-right,
    up-down, depth, transpose] per sample; masks is None when not given.
    """
    volume = p_d > 0
    _check_pair(images, masks, "random_flip", volume)
    for name, p in (("p_h", p_h), ("p_v", p_v), ("p_d", p_d), ("p_t", p_t)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"marsops.random_flip: {name} must be in [0, 1], got {p}")
    if p_t > 0 and images.shape[-1] != images.shape[-2]:
        raise ValueError(f"marsops.random_flip: p_t > 0 needs square images (H == W), got shape {tuple(images.shape)}")
    draws = torch.rand(images.shape[0], 4, device=images.device, generator=generator)
    # Python floats, compared on the device: no host-to-device copy, no synchronisation.
    flips = torch.stack([draws[:, 0] < p_h, draws[:, 1] < p_v, draws[:, 2] < p_d, draws[:, 3] < p_t], dim=1)
    f = flips.to(torch.uint8)
    flags = f[:, 0] * LEFT_RIGHT | f[:, 1] * UP_DOWN | f[:, 2] * DEPTH | f[:, 3] * TRANSPOSE
    out_images = _op("flip_by_flags", images, backend, "random_flip")(images, flags, volume)
    out_masks = None if masks is None else _op("flip_by_flags", masks, backend, "random_flip")(masks, flags, volume)
    return out_images, out_masks, flips


# ---- custom-op plumbing ------------------------------------------------------------------------

def _triton_module(x: Tensor, op: str):
    _triton.require(x.device.type, op)
    from .triton import flip

    return flip


@torch.library.custom_op("marsops::flip_views_triton", mutates_args=())
def _flip_views_triton(x: Tensor, views: list[int], volume: bool) -> Tensor:
    with _triton.on_device_of(x):
        return _triton_module(x, "flip4").flip_views(x, views, volume)


@torch.library.custom_op("marsops::flip_views_sum_triton", mutates_args=())
def _flip_views_sum_triton(y: Tensor, views: list[int], volume: bool, scale: float) -> Tensor:
    with _triton.on_device_of(y):
        return _triton_module(y, "flip4_merge").flip_views_sum(y, views, volume, scale)


@torch.library.custom_op("marsops::flip_by_flags_triton", mutates_args=())
def _flip_by_flags_triton(x: Tensor, flags: Tensor, volume: bool) -> Tensor:
    with _triton.on_device_of(x):
        return _triton_module(x, "random_flip").flip_by_flags(x, flags, volume)


@torch.library.custom_op("marsops::views_argmax_triton", mutates_args=())
def _views_argmax_triton(outputs: Tensor, target: Optional[Tensor], ignore_index: Optional[int], softmax: bool,
                         want_pred: bool, views: list[int], volume: bool) -> tuple[Tensor, Tensor]:
    _triton.require(outputs.device.type, "flip4_argmax")
    from .triton.tta import views_argmax as launch

    with _triton.on_device_of(outputs):
        pred, counts, ok = launch(outputs, target, ignore_index, softmax, want_pred, views, volume)
    if target is not None:
        _checks.assert_ok(ok, "flip4_argmax", "target contains a label outside [0, C) and not ignore_index")
    return pred, counts


def _views_argmax_fake(outputs, target, ignore_index, softmax, want_pred, views, volume):
    num_classes = outputs.shape[1]
    pred = outputs.new_empty(((outputs.shape[0] // len(views),) + tuple(outputs.shape[2:])) if want_pred else (0,),
                             dtype=torch.int64)
    counts = outputs.new_empty((num_classes, num_classes) if target is not None else (0,), dtype=torch.int64)
    return pred, counts


torch.library.register_fake("marsops::views_argmax_triton")(_views_argmax_fake)
if _extension._C is not None:
    torch.library.register_fake("marsops::views_argmax")(_views_argmax_fake)


def _register(suffix: str):
    ops = torch.ops.marsops
    views_op, sum_op, flags_op = (getattr(ops, n + suffix) for n in ("flip_views", "flip_views_sum", "flip_by_flags"))

    def views_fake(x, views, volume):
        return x.new_empty((len(views) * x.shape[0],) + tuple(x.shape[1:]))

    def sum_fake(y, views, volume, scale):
        torch._check(y.shape[0] % len(views) == 0)
        return y.new_empty((y.shape[0] // len(views),) + tuple(y.shape[1:]))

    def flags_fake(x, flags, volume):
        torch._check(flags.shape[0] == x.shape[0])
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def views_setup(ctx, inputs, output):
        ctx.views, ctx.volume = inputs[1], inputs[2]

    def sum_setup(ctx, inputs, output):
        ctx.views, ctx.volume, ctx.scale = inputs[1], inputs[2], inputs[3]

    def flags_setup(ctx, inputs, output):
        ctx.volume = inputs[2]
        ctx.save_for_backward(inputs[1])

    # Each view op is the other's adjoint: flip_views <-> flip_views_sum; a per-sample view is
    # undone by its inverse (a flip by itself; under a transpose the H and W flips swap).
    def views_backward(ctx, g):
        return sum_op(g, ctx.views, ctx.volume, 1.0), None, None

    def sum_backward(ctx, g):
        return views_op(g, ctx.views, ctx.volume) * ctx.scale, None, None, None

    def flags_backward(ctx, g):
        (flags,) = ctx.saved_tensors
        transposed = (flags & TRANSPOSE) != 0
        swapped = (flags & (DEPTH | TRANSPOSE)) | ((flags & LEFT_RIGHT) << 1) | ((flags & UP_DOWN) >> 1)
        return flags_op(g, torch.where(transposed, swapped, flags), ctx.volume), None, None

    for base, fake, setup, backward in (("flip_views", views_fake, views_setup, views_backward),
                                        ("flip_views_sum", sum_fake, sum_setup, sum_backward),
                                        ("flip_by_flags", flags_fake, flags_setup, flags_backward)):
        torch.library.register_fake(f"marsops::{base}{suffix}")(fake)
        torch.library.register_autograd(f"marsops::{base}{suffix}", backward, setup_context=setup)


_register("_triton")
if _extension._C is not None:
    _register("")
