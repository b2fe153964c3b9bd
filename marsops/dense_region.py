"""The per-class sums of the region losses against dense targets, as one differentiable op:
binary and multi-label masks (sigmoid), soft labels and one-hot targets (softmax), probabilities
(from_logits=False), and any of these against a class map.

``dense_region_sums(x, target, ...)`` returns float64 (groups, C, 3) = [I, S, T] per (image or
batch, class), with q = activation(x) and v the valid elements (reference.dense_targets)::

    I_c = sum v q t,   S_c = sum v q,   T_c = sum v t

The loss is then formed from these with ordinary tensor ops (reference.reduce_region_losses), so
every reduction, weighting and class choice differentiates through them; the op's backward is a
second fused pass over x (and a soft target) from dL/d(I, S, T). Kernels: csrc/cpu/
dense_region_kernel.h, marsops/triton/dense_region.py."""
import math
from typing import Tuple

import torch
from torch import Tensor

from . import _checks, _saved_gradient, reference
from . import triton as _triton

IDENTITY, SIGMOID, SOFTMAX = reference.IDENTITY, reference.SIGMOID, reference.SOFTMAX


def _class_last(x: Tensor) -> bool:
    """channels_last-like x (N, C, *), read in place as (N, P, C); contiguous x is read as (N, C, P)."""
    return x.dim() > 2 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous()


def _as_3d(t: Tensor, class_last: bool) -> Tensor:
    """(N, C, *) as contiguous (N, C, P), or (N, P, C) when class_last (a view where the layout allows)."""
    n, c, p = t.shape[0], t.shape[1], math.prod(t.shape[2:])  # not -1: ambiguous for empty tensors
    if class_last:
        return t.movedim(1, -1).reshape(n, p, c).contiguous()
    return t.reshape(n, c, p).contiguous()


def _from_3d(t3: Tensor, like: Tensor, class_last: bool) -> Tensor:
    """The inverse of _as_3d: like's shape, in the 3-D tensor's layout."""
    if class_last:
        return t3.reshape((like.shape[0],) + tuple(like.shape[2:]) + (like.shape[1],)).movedim(-1, 1)
    return t3.reshape(like.shape)


def _target_3d(target: Tensor, x: Tensor, class_last: bool) -> Tuple[Tensor, bool]:
    """The target as the kernels read it: a dense one in x's 3-D layout (bool as uint8), or a class
    map (N, P); and whether it is a map."""
    if target.dtype == torch.bool:
        target = target.view(torch.uint8)
    elif target.dtype in (torch.uint16, torch.uint32, torch.uint64):
        target = target.to(torch.int64)
    if target.dim() == x.dim() - 1:
        return target.reshape(target.shape[0], math.prod(target.shape[1:])).contiguous(), True
    return _as_3d(target, class_last), False


def _check_backend(backend: str) -> None:
    if backend not in ("cpu", "triton"):
        raise ValueError(f"marsops::dense_region: backend must be 'cpu' or 'triton', got {backend!r}")


def _groups(x: Tensor, per_image: bool) -> int:
    return x.shape[0] if per_image else 1


@torch.library.custom_op("marsops::dense_region", mutates_args=())
def _sums_op(x: Tensor, target: Tensor, activation: int, has_ignore: bool, ignore_index: int, per_image: bool,
             backend: str) -> Tensor:
    _check_backend(backend)
    class_last = _class_last(x)
    x3 = _as_3d(x, class_last)
    t3, is_map = _target_3d(target, x, class_last)
    if backend == "triton":
        _triton.require(x.device.type, "dense_region_sums")
        from .triton import dense_region as kernels

        with _triton.on_device_of(x):
            stats, ok = kernels.dense_region_stats(x3, t3, activation, class_last, is_map, has_ignore, ignore_index,
                                                   per_image)
        _checks.assert_ok(ok, "dense_region_sums", "target values outside {0, 1} / [0, 1] or labels outside [0, C) "
                          "(not ignore_index), or probabilities outside [0, 1] with from_logits=False")
        return stats
    with _checks.label_errors_as_value_errors():
        return torch.ops.marsops.dense_region_stats(x3, t3, activation, class_last, is_map, has_ignore, ignore_index,
                                                    per_image)


@_sums_op.register_fake
def _(x, target, activation, has_ignore, ignore_index, per_image, backend):
    return x.new_empty((_groups(x, per_image), x.shape[1], 3), dtype=torch.float64)


@torch.library.custom_op("marsops::dense_region_backward", mutates_args=())
def _grad_op(x: Tensor, target: Tensor, activation: int, has_ignore: bool, ignore_index: int, per_image: bool,
             coef: Tensor, want_target_grad: bool, backend: str) -> Tuple[Tensor, Tensor]:
    """(dL/dx of x's shape and layout, dL/dtarget of the target's shape or empty) from coef =
    dL/d(I, S, T) (groups, C, 3)."""
    _check_backend(backend)
    class_last = _class_last(x)
    x3 = _as_3d(x, class_last)
    t3, is_map = _target_3d(target, x, class_last)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    # In the compute type, saturated rather than inf: dL/dI of a class absent from the target may pass
    # fp32's range (a tiny mass, smooth 0), and inf * (t = 0) would be NaN.
    limit = torch.finfo(compute).max
    coef = coef.clamp(-limit, limit).to(compute).contiguous()
    if backend == "triton":
        from .triton import dense_region as kernels

        with _triton.on_device_of(x):
            gx, gt = kernels.dense_region_grad(x3, t3, activation, class_last, is_map, has_ignore, ignore_index,
                                               per_image, coef, want_target_grad)
    else:
        gx, gt = torch.ops.marsops.dense_region_grad(x3, t3, activation, class_last, is_map, has_ignore, ignore_index,
                                                     per_image, coef, want_target_grad)
    gx = _like(_from_3d(gx, x, class_last), x)
    gt = _like(_from_3d(gt, target, class_last).to(target.dtype), target) if want_target_grad else gt
    return gx, gt


def _like(t: Tensor, like: Tensor) -> Tensor:
    """t with the strides torch.empty_like(like) has (what the fake kernel promises torch.compile):
    itself in the usual layouts, a copy for other permutations."""
    out = torch.empty_like(like, dtype=t.dtype)
    if out.stride() == t.stride():
        return t
    return out.copy_(t)


@_grad_op.register_fake
def _(x, target, activation, has_ignore, ignore_index, per_image, coef, want_target_grad, backend):
    return torch.empty_like(x), (torch.empty_like(target) if want_target_grad else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, target, activation, has_ignore, ignore_index, per_image, backend = inputs
    ctx.save_for_backward(x, target)
    ctx.args = (activation, has_ignore, ignore_index, per_image)
    ctx.backend = backend


def _backward(ctx, grad_stats):
    _saved_gradient.refuse_double_backward("dense_region_sums")
    x, target = ctx.saved_tensors
    want_target = ctx.needs_input_grad[1]
    gx, gt = _grad_op(x, target, *ctx.args, grad_stats, want_target, ctx.backend)
    return (gx if ctx.needs_input_grad[0] else None), (gt if want_target else None), None, None, None, None, None


_sums_op.register_autograd(_backward, setup_context=_setup_context)


def dense_region_sums(x: Tensor, target: Tensor, activation: int, ignore_index, per_image: bool, backend: str,
                      op: str) -> Tuple[Tensor, Tensor, Tensor]:
    """(I, S, T) float64, (C,) each or (N, C) per image, on the chosen backend (arguments as
    reference.dense_region_sums; ignore_index None: nothing ignored)."""
    if backend == "reference":
        return reference.dense_region_sums(x, target, activation, ignore_index, per_image, op)
    if x.dtype == torch.float64 and backend == "triton":
        raise TypeError(f"marsops.{op}: the triton backend computes in fp32; use float32 inputs or the cpu / "
                        "reference backend for float64")
    _checks.refuse_unsupported_autograd(op, x, target)
    stats = _sums_op(x, target, activation, ignore_index is not None,
                     0 if ignore_index is None else ignore_index, per_image, backend)
    if not per_image:
        stats = stats[0]
    return stats.unbind(-1)
