"""Fused softmax focal loss: public API, custom-op registration (fake kernels, autograd) and the
dispatch to the reference / C++ CPU / CUDA / Triton implementations."""
from typing import TYPE_CHECKING, Optional, Union

import torch
from torch import Tensor, nn

from . import _checks, _extension, _saved_gradient, backend as _backend, reference
from . import triton as _triton

if TYPE_CHECKING:
    from .metrics import StreamingIoU

REDUCTIONS = reference.REDUCTIONS  # code = position: none 0, sum 1, mean 2, weighted_mean 3


def focal_loss(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, gamma: float = 2.0,
               ignore_index: int = -100, reduction: str = "mean", backend: str = "auto",
               confusion: Optional[Union[Tensor, "StreamingIoU"]] = None, label_smoothing: float = 0.0) -> Tensor:
    """Softmax focal loss (Lin et al. 2017) for classification and segmentation.

    For each element i with target y_i != ignore_index and p_i = softmax(logits_i)[y_i]:
    ``l_i = -weight[y_i] * (1 - p_i)**gamma * log(p_i)``; ignored elements give 0.

    Args:
        logits: (N, C) or ``(N, C, *spatial)`` float tensor (fp16/bf16 are computed in fp32).
        target: (N,) or ``(N, *spatial)`` integer tensor of class indices in [0, C) or ignore_index.
        weight: optional (C,) per-class weights (None: all ones).
        gamma: focusing parameter >= 0; gamma = 0 is the (weighted) cross-entropy.
        ignore_index: target value that contributes nothing.
        reduction: "none" (shape of target), "sum", "mean" (sum / number of non-ignored elements)
            or "weighted_mean" (sum / sum of weight[y_i], torch's cross_entropy convention).
            When that denominator is 0 (all ignored), the loss and its gradient are 0.
        backend: "auto", "reference", "cpu", "cuda" or "triton" (see marsops.backends()).
        label_smoothing: eps in [0, 1]: the per-element loss becomes (1 - eps) times the above
            plus eps / C times the sum over every class c of -weight[c] (1 - p_c)^gamma log p_c,
            as F.cross_entropy(label_smoothing=eps) weighs it (equal to it at gamma = 0); the
            reductions' denominators are unchanged.
        confusion: an int64 (C, C) tensor on the logits' device, or a ``StreamingIoU``: the pass
            also counts (label, argmax) pairs of the non-ignored pixels into it, with
            ``confusion_matrix``'s rules (rows = true class, ties to the first class, NaN wins).
            The logits are read once for the loss, its gradient and the metric.

    The fused kernels compute the gradient in the forward pass (one extra logits-sized buffer,
    kept until backward) and never build softmax or one-hot tensors. Labels outside [0, C) that
    are not ignore_index raise a ValueError (on CUDA, a device-side assertion).
    """
    op = "focal_loss"
    _checks.check_tensor("logits", logits, op)
    _checks.check_tensor("target", target, op)
    _checks.check_float("logits", logits, op)
    _checks.check_integer("target", target, op)
    if logits.dim() < 2 or logits.shape[1] < 1:
        raise ValueError(f"marsops.focal_loss: logits must be (N, C) or (N, C, *spatial) with C >= 1, got shape "
                         f"{tuple(logits.shape)}")
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"marsops.focal_loss: target shape {tuple(target.shape)} does not match logits shape "
                         f"{tuple(logits.shape)}; expected {expected}")
    if weight is not None:
        _checks.check_tensor("weight", weight, op)
        _checks.check_float("weight", weight, op)
        if weight.shape != (logits.shape[1],):
            raise ValueError(f"marsops.focal_loss: weight must have shape ({logits.shape[1]},), got {tuple(weight.shape)}")
    _checks.check_same_device(op, logits=logits, target=target, weight=weight)
    _checks.check_choice("reduction", reduction, REDUCTIONS, op)
    gamma = _checks.as_float("gamma", gamma, op)
    if not gamma >= 0 or gamma == float("inf"):
        raise ValueError(f"marsops.focal_loss: gamma must be finite and >= 0, got {gamma}")
    ignore_index = _checks.as_int64("ignore_index", ignore_index, op)
    label_smoothing = _checks.as_float("label_smoothing", label_smoothing, op)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"marsops.focal_loss: label_smoothing must be in [0, 1], got {label_smoothing}")
    if confusion is not None:
        _checks.refuse_vmap(op, "confusion=", logits, target, weight)
    counts_into = _confusion_sink(confusion, logits.shape[1], ignore_index, logits.device)
    if counts_into is not None and _recomputing():
        counts_into = None  # activation checkpointing runs the forward again: count once

    chosen = _backend.resolve("focal_loss_forward", logits, backend)
    if chosen != "reference":
        _checks.refuse_unsupported_autograd(op, logits, weight)
    if chosen == "reference":
        if counts_into is not None:
            counts_into.add_(reference.confusion_matrix(logits.detach(), target, logits.shape[1], ignore_index))
        return reference.focal_loss(logits, target, weight, gamma, ignore_index, reduction, label_smoothing)
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"marsops.focal_loss: weight requires grad, but the fused {chosen} kernels treat class "
                         "weights as constants (they would get no gradient). Pass weight.detach(), or "
                         "backend='reference' to learn the weights.")
    if logits.dtype == torch.float64 and chosen in ("cuda", "triton"):
        raise TypeError(f"marsops.focal_loss: the {chosen} backend computes in fp32; use float32 logits or "
                        "the cpu / reference backend for float64")
    compute_grad = _checks.wants_grad(logits)
    fn = torch.ops.marsops.focal_loss_forward_triton if chosen == "triton" else torch.ops.marsops.focal_loss_forward
    with _checks.label_errors_as_value_errors():
        loss, _, counts = fn(logits, target, weight, gamma, ignore_index, REDUCTIONS.index(reduction), compute_grad,
                             counts_into is not None, label_smoothing)
    if counts_into is not None:
        counts_into.add_(counts)
    return loss


def _recomputing() -> bool:
    """Whether this forward runs inside a backward pass: activation checkpointing recomputing it."""
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


def _confusion_sink(confusion, num_classes: int, ignore_index: int, device) -> Optional[Tensor]:
    """The int64 (C, C) tensor a pass's confusion counts are added to, or None."""
    if confusion is None:
        return None
    if isinstance(confusion, Tensor):
        if confusion.dtype != torch.int64 or tuple(confusion.shape) != (num_classes, num_classes):
            raise ValueError(f"marsops.focal_loss: confusion must be an int64 ({num_classes}, {num_classes}) tensor, "
                             f"got {confusion.dtype} {tuple(confusion.shape)}")
        if confusion.device != device:
            raise ValueError(f"marsops.focal_loss: confusion is on {confusion.device}, the logits on {device}")
        return confusion
    from .metrics import StreamingIoU

    if isinstance(confusion, StreamingIoU):
        return confusion.counts_for(num_classes, ignore_index, device)
    raise TypeError(f"marsops.focal_loss: confusion must be an int64 tensor or a StreamingIoU, got "
                    f"{type(confusion).__name__}")


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss`; ``weight`` is a buffer, so it follows ``.to(device)``."""

    def __init__(self, weight: Optional[Tensor] = None, gamma: float = 2.0, ignore_index: int = -100,
                 reduction: str = "mean", backend: str = "auto", label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", None if weight is None else _checks.as_weight_buffer(weight))
        self.gamma, self.ignore_index, self.reduction, self.backend = gamma, ignore_index, reduction, backend
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor,
                confusion: Optional[Union[Tensor, "StreamingIoU"]] = None) -> Tensor:
        return focal_loss(logits, target, self.weight, self.gamma, self.ignore_index, self.reduction, self.backend,
                          confusion, self.label_smoothing)

    def extra_repr(self) -> str:
        smoothing = f", label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        return f"gamma={self.gamma}, ignore_index={self.ignore_index}, reduction={self.reduction!r}{smoothing}"


# ---- custom-op plumbing, shared by the compiled op and the Triton op ----------------------------

@torch.library.custom_op("marsops::focal_loss_forward_triton", mutates_args=())
def _focal_loss_forward_triton(logits: Tensor, target: Tensor, weight: Optional[Tensor], gamma: float,
                               ignore_index: int, reduction: int, compute_grad: bool,
                               count_confusion: bool, label_smoothing: float) -> tuple[Tensor, Tensor, Tensor]:
    from .triton.focal import focal_loss_forward

    _triton.require(logits.device.type, "focal_loss")
    N, C = logits.shape[:2]
    P = target[0].numel() if N else 0
    class_last = _checks.is_class_last(logits)  # read in place; the kernel takes the strides
    x = logits if class_last else logits.contiguous().view(N, C, P)
    y = target.contiguous().view(N, P)
    with _triton.on_device_of(logits):
        loss, grad, counts, ok = focal_loss_forward(x, y, weight, gamma, ignore_index, reduction, compute_grad,
                                                    count_confusion, class_last, label_smoothing)
    _checks.assert_ok(ok, "focal_loss", "target contains a label outside [0, C) that is not ignore_index")
    return ((loss.view(target.shape) if reduction == 0 else loss), (grad.view(logits.shape) if compute_grad else grad),
            counts)


def _fake(logits, target, weight, gamma, ignore_index, reduction, compute_grad, count_confusion, label_smoothing):
    torch._check(target.shape[0] == logits.shape[0])
    loss = logits.new_empty(target.shape if reduction == 0 else ())
    grad = _empty_gradient(logits) if compute_grad else logits.new_empty(0)
    num_classes = logits.shape[1]
    counts = logits.new_empty((num_classes, num_classes) if count_confusion else (0,), dtype=torch.int64)
    return loss, grad, counts


def _empty_gradient(logits):
    """The gradient's layout: the logits' own when they are class-last (channels_last), else contiguous."""
    dtype = _saved_gradient.saved_dtype(logits.dtype)
    if _checks.is_class_last(logits):
        return torch.empty_like(logits.movedim(1, -1), memory_format=torch.contiguous_format,
                                dtype=dtype).movedim(-1, 1)
    return torch.empty_like(logits, memory_format=torch.contiguous_format, dtype=dtype)


def _setup_context(ctx, inputs, output):
    ctx.reduction = inputs[5]
    ctx.has_grad = inputs[6]  # compute_grad: the forward wrote the gradient
    ctx.ignore_index = inputs[4]
    # 'none': the targets too, so that an upstream gradient's NaN or inf at an ignored pixel cannot
    # reach the gradient (0 * inf is NaN; an ignored pixel's gradient is exactly 0).
    ctx.save_for_backward(output[1], *((inputs[1],) if inputs[5] == 0 else ()))
    # The saved gradient and the counts get no gradient: without these, autograd would allocate
    # and zero a logits-sized tensor for the gradient in every backward.
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, _grad, _counts):
    nothing = (None,) * 8
    if grad_loss is None:  # the loss did not reach what was differentiated
        return (None,) + nothing
    _saved_gradient.check_backward("focal_loss", ctx.has_grad)
    grad, *target = ctx.saved_tensors
    scale = grad_loss
    if ctx.reduction == 0:  # one upstream value per pixel; ignored pixels' are never used
        scale = _saved_gradient.masked_upstream(grad_loss, target[0], ctx.ignore_index).unsqueeze(1)
    return (_saved_gradient.scaled(grad, grad_loss, scale),) + nothing


for _op in ("marsops::focal_loss_forward_triton",) + (("marsops::focal_loss_forward",) if _extension._C else ()):
    _saved_gradient.register(_op, _fake, _backward, _setup_context)
