"""On-device flip augmentation of image + mask batches, and flip test-time augmentation.

Flip names: "left-right" (horizontal) reverses W, "up-down" (vertical) reverses H.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _checks, _extension, backend as _backend, reference
from . import triton as _triton

LEFT_RIGHT, UP_DOWN = 1, 2  # bits of the per-sample flags
FLIP4_ORDER = ("as is", "left-right", "up-down", "both")


def _check_pair(images: Tensor, masks: Optional[Tensor], op: str):
    _checks.check_tensor("images", images, op)
    if images.is_complex():
        raise TypeError(f"marsops.{op}: complex images are not supported; flips take real floating, integer and "
                        f"bool dtypes, got {images.dtype}")
    if images.dim() not in (3, 4):
        raise ValueError(f"marsops.{op}: images must be (N, H, W) or (N, C, H, W), got shape {tuple(images.shape)}")
    if masks is None:
        return
    _checks.check_tensor("masks", masks, op)
    _checks.check_integer("masks", masks, op)
    expected = (images.shape[0],) + tuple(images.shape[-2:])
    if tuple(masks.shape) != expected:
        raise ValueError(f"marsops.{op}: masks shape {tuple(masks.shape)} does not match images shape "
                         f"{tuple(images.shape)}; expected {expected}")
    _checks.check_same_device(op, images=images, masks=masks)


def _op(name: str, x: Tensor, backend: str):
    """The callable implementing flip op `name` for x under `backend`."""
    chosen = _backend.resolve(name, x, backend)
    if chosen == "reference":
        return getattr(reference, name)
    if chosen == "triton":
        return getattr(torch.ops.marsops, name + "_triton")
    return getattr(torch.ops.marsops, name)


def flip4(images: Tensor, masks: Optional[Tensor] = None, backend: str = "auto") -> Tuple[Tensor, Optional[Tensor]]:
    """The report's four-way expansion: (N, ...) -> (4N, ...) holding every sample as is,
    flipped left-right, flipped up-down and both, in that order, as four blocks of N:
    ``out[k * N + i] = flip_k(x[i])``. One kernel per tensor reads each input element once.

    Images of any real dtype (float, integer, bool; complex is refused) are differentiable
    through the flips when floating; masks keep their integer dtype. Returns (images, masks); masks is None when not given.
    """
    _check_pair(images, masks, "flip4")
    out_images = _op("flip4", images, backend)(images)
    out_masks = None if masks is None else _op("flip4", masks, backend)(masks)
    return out_images, out_masks


def flip4_merge(outputs: Tensor, backend: str = "auto") -> Tensor:
    """Test-time augmentation: for model outputs (4N, C, H, W) of a flip4 batch, undo each flip
    and average the four views back to (N, C, H, W), in one pass."""
    _checks.check_tensor("outputs", outputs, "flip4_merge")
    _checks.check_float("outputs", outputs, "flip4_merge")
    if outputs.dim() < 3 or outputs.shape[0] % 4:
        raise ValueError(f"marsops.flip4_merge: expected a (4N, ..., H, W) flip4 batch, got shape "
                         f"{tuple(outputs.shape)}")
    return _op("flip4_sum", outputs, backend)(outputs, 0.25)


def flip4_argmax(outputs: Tensor, softmax: bool = True, backend: str = "auto") -> Tensor:
    """Flip test-time augmentation, as predictions: for model outputs (4N, C, *, H, W) of a flip4
    batch, undo each flip, average the four views (their softmax, or the logits when softmax is
    False) and take the argmax over classes: (N, *, H, W) int64 labels, equal to
    ``flip4_merge(outputs.softmax(1)).argmax(1)`` but in one pass that never builds the softmax or
    the merged (N, C, H, W) tensor. Computed in fp32; ties go to the first class, NaN wins.
    ``StreamingIoU.update_flip4`` counts the same predictions against targets."""
    pred, _ = flip4_argmax_op(outputs, None, None, softmax, True, backend)
    return pred


def flip4_argmax_op(outputs: Tensor, target: Optional[Tensor], ignore_index: Optional[int], softmax: bool,
                    want_pred: bool, backend: str):
    """(pred, counts) of the flip4_argmax op for `outputs` (checked here) and an optional target."""
    op = "flip4_argmax"
    _checks.check_tensor("outputs", outputs, op)
    _checks.check_float("outputs", outputs, op)
    if outputs.dim() < 4 or outputs.shape[0] % 4:
        raise ValueError(f"marsops.flip4_argmax: expected flip4 outputs (4N, C, *, H, W), got shape "
                         f"{tuple(outputs.shape)}")
    if target is not None:
        _checks.check_tensor("target", target, op)
        _checks.check_integer("target", target, op)
        expected = (outputs.shape[0] // 4,) + tuple(outputs.shape[2:])
        if tuple(target.shape) != expected:
            raise ValueError(f"marsops.flip4_argmax: target shape {tuple(target.shape)} does not match outputs shape "
                             f"{tuple(outputs.shape)}; expected {expected}")
        _checks.check_same_device(op, outputs=outputs, target=target)
    chosen = _backend.resolve("flip4_argmax", outputs, backend)
    if chosen == "reference":
        return reference.flip4_argmax(outputs, target, ignore_index, softmax, want_pred)
    fn = torch.ops.marsops.flip4_argmax_triton if chosen == "triton" else torch.ops.marsops.flip4_argmax
    return fn(outputs, target, ignore_index, bool(softmax), bool(want_pred))


def random_flip(images: Tensor, masks: Optional[Tensor] = None, p_h: float = 0.5, p_v: float = 0.5,
                generator: Optional[torch.Generator] = None, backend: str = "auto"):
    """Per-sample random flips, the same flip for a sample's image and mask, in one launch each.

    p_h: probability of a left-right (horizontal) flip; p_v: of an up-down (vertical) flip. The
    decisions are drawn on the images' device (from `generator`, which must live there, for
    reproducible draws). Returns (images, masks, flips) with flips an (N, 2) bool tensor of
    [left-right, up-down] per sample; masks is None when not given.
    """
    _check_pair(images, masks, "random_flip")
    for name, p in (("p_h", p_h), ("p_v", p_v)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"marsops.random_flip: {name} must be in [0, 1], got {p}")
    draws = torch.rand(images.shape[0], 2, device=images.device, generator=generator)
    flips = torch.stack([draws[:, 0] < p_h, draws[:, 1] < p_v], dim=1)  # Python floats: no host-to-device copy
    flags = (flips[:, 0].to(torch.uint8) * LEFT_RIGHT) | (flips[:, 1].to(torch.uint8) * UP_DOWN)
    out_images = _op("flip_by_flags", images, backend)(images, flags)
    out_masks = None if masks is None else _op("flip_by_flags", masks, backend)(masks, flags)
    return out_images, out_masks, flips


# ---- custom-op plumbing ------------------------------------------------------------------------

def _triton_module(x: Tensor, op: str):
    _triton.require(x.device.type, op)
    from .triton import flip

    return flip


@torch.library.custom_op("marsops::flip4_triton", mutates_args=())
def _flip4_triton(x: Tensor) -> Tensor:
    return _triton_module(x, "flip4").flip4(x)


@torch.library.custom_op("marsops::flip4_sum_triton", mutates_args=())
def _flip4_sum_triton(y: Tensor, scale: float) -> Tensor:
    return _triton_module(y, "flip4_merge").flip4_sum(y, scale)


@torch.library.custom_op("marsops::flip_by_flags_triton", mutates_args=())
def _flip_by_flags_triton(x: Tensor, flags: Tensor) -> Tensor:
    return _triton_module(x, "random_flip").flip_by_flags(x, flags)


@torch.library.custom_op("marsops::flip4_argmax_triton", mutates_args=())
def _flip4_argmax_triton(outputs: Tensor, target: Optional[Tensor], ignore_index: Optional[int], softmax: bool,
                         want_pred: bool) -> tuple[Tensor, Tensor]:
    _triton.require(outputs.device.type, "flip4_argmax")
    from .triton.tta import flip4_argmax as launch

    shape = tuple(outputs.shape)
    four_n, C = shape[:2]
    H, W = shape[-2:]
    M = outputs[0, 0].numel() // (H * W) if outputs.numel() else 0
    x = outputs.contiguous().view(four_n, C, M, H, W)
    y = None if target is None else target.contiguous().view(four_n // 4, M, H, W)
    pred, counts, ok = launch(x, y, ignore_index, softmax, want_pred)
    if target is not None:
        _checks.assert_ok(ok, "flip4_argmax", "target contains a label outside [0, C) and not ignore_index")
    return (pred.view((four_n // 4,) + shape[2:]) if want_pred else pred), counts


def _flip4_argmax_fake(outputs, target, ignore_index, softmax, want_pred):
    num_classes = outputs.shape[1]
    pred = outputs.new_empty(((outputs.shape[0] // 4,) + tuple(outputs.shape[2:])) if want_pred else (0,),
                             dtype=torch.int64)
    counts = outputs.new_empty((num_classes, num_classes) if target is not None else (0,), dtype=torch.int64)
    return pred, counts


torch.library.register_fake("marsops::flip4_argmax_triton")(_flip4_argmax_fake)
if _extension._C is not None:
    torch.library.register_fake("marsops::flip4_argmax")(_flip4_argmax_fake)


def _register(suffix: str):
    ops = torch.ops.marsops
    flip4_op, sum_op, flags_op = (getattr(ops, n + suffix) for n in ("flip4", "flip4_sum", "flip_by_flags"))

    def flip4_fake(x):
        return x.new_empty((4 * x.shape[0],) + tuple(x.shape[1:]))

    def sum_fake(y, scale):
        torch._check(y.shape[0] % 4 == 0)
        return y.new_empty((y.shape[0] // 4,) + tuple(y.shape[1:]))

    def flags_fake(x, flags):
        torch._check(flags.shape[0] == x.shape[0])
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def flip4_setup(ctx, inputs, output):
        pass

    def sum_setup(ctx, inputs, output):
        ctx.scale = inputs[1]

    def flags_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    # Each flip is its own adjoint partner: flip4 <-> flip4_sum, and a per-sample flip undoes itself.
    def flip4_backward(ctx, g):
        return sum_op(g, 1.0)

    def sum_backward(ctx, g):
        return flip4_op(g) * ctx.scale, None

    def flags_backward(ctx, g):
        (flags,) = ctx.saved_tensors
        return flags_op(g, flags), None

    for base, fake, setup, backward in (("flip4", flip4_fake, flip4_setup, flip4_backward),
                                        ("flip4_sum", sum_fake, sum_setup, sum_backward),
                                        ("flip_by_flags", flags_fake, flags_setup, flags_backward)):
        torch.library.register_fake(f"marsops::{base}{suffix}")(fake)
        torch.library.register_autograd(f"marsops::{base}{suffix}", backward, setup_context=setup)


_register("_triton")
if _extension._C is not None:
    _register("")
