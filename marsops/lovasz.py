"""The Lovász-Softmax loss (Berman, Rannen Triki, Blaschko, CVPR 2018), a convex surrogate of the
Jaccard (IoU) loss, on softmax probabilities.

With p = softmax(logits) and, per group (the whole batch, or each image with per_image=True) and
class c, over the group's non-ignored pixels: fg = [y = c], errors ``e = |fg - p_c|`` sorted in
decreasing order, and with gts = sum fg, jac_k = 1 - (gts - cumsum(fg)_k) / (gts + cumsum(1 - fg)_k),
g = jac with g[1:] = jac[1:] - jac[:-1] (Berman's lovasz_grad)::

    loss_c = dot(e_sorted, g)

A group's loss is the mean of loss_c over the scored classes ("present": the classes occurring in
the group's non-ignored target; "all"; or a list of classes, scored whether present or not), 0
when no class is scored or the group has no valid pixel; the loss is the mean over the groups (an
image with no class to score counts as 0 in the per_image mean, as in Berman's code; one with no
valid pixel too, where Berman's code returns an empty tensor). The
gradient is the Lovász subgradient for the sort order found (dL/de_k = g_k / classes / groups),
through the softmax. Tied errors give the same loss in any order; only the gradient depends on the
order of ties (the kernels keep ties in pixel order, as a stable sort).
"""
from typing import Sequence, Union

import torch
from torch import Tensor, nn

from . import _checks, _saved_gradient, backend as _backend, reference
from . import triton as _triton

OP = "lovasz_softmax_loss"


def lovasz_softmax_loss(logits: Tensor, target: Tensor, classes: Union[str, Sequence[int]] = "present",
                        per_image: bool = False, ignore_index: int = -100, backend: str = "auto") -> Tensor:
    """Lovász-Softmax loss (module docstring) from logits ``(N, C, *spatial)`` and integer targets
    ``(N, *spatial)`` in [0, C) or ignore_index.

    classes: "present" (the classes in the target), "all", or a list of class indices to average;
    per_image: the loss of each image, averaged over the images (else one loss over the batch)."""
    num_classes = _checks.check_logits_and_target(OP, logits, target)
    _checks.check_same_device(OP, logits=logits, target=target)
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise ValueError(f"marsops.{OP}: classes must be 'present', 'all' or a list of class indices, got "
                             f"{classes!r}")
        chosen_classes = tuple(range(num_classes))
    else:
        chosen_classes = _checks.as_classes(classes, num_classes, OP)
    only_present = isinstance(classes, str) and classes == "present"  # an array compares elementwise
    per_image = _checks.as_bool("per_image", per_image, OP)
    ignore_index = _checks.as_int64("ignore_index", ignore_index, OP)
    chosen = _backend.resolve("lovasz_softmax_forward", logits, backend)
    if chosen == "reference":
        return reference.lovasz_softmax_loss(logits, target, classes if isinstance(classes, str) else chosen_classes,
                                             per_image, ignore_index)
    _checks.refuse_unsupported_autograd(OP, logits)
    if logits.dtype == torch.float64 and chosen == "triton":
        raise TypeError(f"marsops.{OP}: the triton backend computes in fp32; use float32 logits or the cpu / "
                        "reference backend for float64")
    compute_grad = _checks.wants_grad(logits)
    with _checks.label_errors_as_value_errors():
        loss, _ = torch.ops.marsops.lovasz_softmax_loss(logits, target, list(chosen_classes), only_present, per_image,
                                                        ignore_index, compute_grad, chosen)
    return loss


# ---- the custom op: one backend's loss and saved gradient ---------------------------------------

@torch.library.custom_op("marsops::lovasz_softmax_loss", mutates_args=())
def _lovasz_op(logits: Tensor, target: Tensor, classes: list[int], only_present: bool, per_image: bool,
               ignore_index: int, compute_grad: bool, backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton":
        _triton.require(logits.device.type, OP)
        from .triton import lovasz as kernels

        with _triton.on_device_of(logits):
            loss, grad, ok = kernels.lovasz_softmax(logits, target, classes, only_present, per_image, ignore_index,
                                                    compute_grad)
        _checks.assert_ok(ok, OP, "target contains a label outside [0, C) that is not ignore_index")
        return loss, grad
    return torch.ops.marsops.lovasz_softmax_forward(logits, target, classes, only_present, per_image, ignore_index,
                                                    compute_grad)


@_lovasz_op.register_fake
def _(logits, target, classes, only_present, per_image, ignore_index, compute_grad, backend):
    from .focal import _empty_gradient

    return logits.new_empty(()), (_empty_gradient(logits) if compute_grad else logits.new_empty(0))


def _setup_context(ctx, inputs, output):
    ctx.has_grad = inputs[6]
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, _grad):
    nothing = (None,) * 7
    if grad_loss is None:
        return (None,) + nothing
    _saved_gradient.check_backward(OP, ctx.has_grad)
    (grad,) = ctx.saved_tensors
    return (_saved_gradient.scaled(grad, grad_loss, grad_loss),) + nothing


_lovasz_op.register_autograd(_backward, setup_context=_setup_context)


class LovaszSoftmaxLoss(nn.Module):
    """Module form of :func:`lovasz_softmax_loss`."""

    def __init__(self, classes: Union[str, Sequence[int]] = "present", per_image: bool = False,
                 ignore_index: int = -100, backend: str = "auto"):
        super().__init__()
        self.classes = classes if isinstance(classes, str) else tuple(classes)
        self.per_image = _checks.as_bool("per_image", per_image, type(self).__name__)
        self.ignore_index, self.backend = ignore_index, backend

    def extra_repr(self) -> str:
        return f"classes={self.classes!r}, per_image={self.per_image}, ignore_index={self.ignore_index}"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return lovasz_softmax_loss(logits, target, self.classes, self.per_image, self.ignore_index, self.backend)
