"""The sigmoid focal loss (Lin et al. 2017) for binary and multi-label masks: every element is
its own two-class problem, as in torchvision.ops.sigmoid_focal_loss (softmax-based multi-class
focal: marsops.focal_loss)."""
from typing import Optional

import torch
from torch import Tensor, nn

from . import _checks, _extension, _saved_gradient, backend as _backend, reference
from . import triton as _triton

REDUCTIONS = ("none", "sum", "mean")


def sigmoid_focal_loss(logits: Tensor, target: Tensor, alpha: Optional[float] = 0.25, gamma: float = 2.0,
                       pos_weight: Optional[Tensor] = None, ignore_index: Optional[int] = None,
                       reduction: str = "mean", backend: str = "auto") -> Tensor:
    """Sigmoid focal loss of logits against a target of the same shape.

    Per element, with p = sigmoid(x) and t the target:
    ``ce = -(pos_weight * t * log(p) + (1 - t) * log(1 - p))``, ``p_t = p t + (1 - p)(1 - t)``,
    ``loss = alpha_t * (1 - p_t)**gamma * ce`` with ``alpha_t = alpha t + (1 - alpha)(1 - t)``.
    Without pos_weight this is torchvision.ops.sigmoid_focal_loss; with gamma = 0 and alpha None it
    is F.binary_cross_entropy_with_logits(pos_weight=...).

    Args:
        logits: any shape; floating point.
        target: the logits' shape. Floating point: soft labels in [0, 1]. Integer or bool: 0 / 1,
            or ignore_index (such elements count nowhere: loss 0, gradient 0, not in the mean).
        alpha: weight of the positives in [0, 1] (negatives get 1 - alpha); None or < 0: no
            weighting (torchvision's alpha=-1).
        gamma: focusing parameter >= 0.
        pos_weight: one value, or (C,) for logits ``(N, C, *)``: the positive term's weight per class
            (BCEWithLogitsLoss's pos_weight).
        ignore_index: a label value to skip (integer targets only).
        reduction: "none" (per element), "sum", or "mean" (over the counted elements; 0 if none).

    Invalid targets (integers other than 0, 1, ignore_index; floats outside [0, 1] or NaN) raise a
    ValueError (on CUDA, a device-side assertion)."""
    op = "sigmoid_focal_loss"
    _checks.check_tensor("logits", logits, op)
    _checks.check_tensor("target", target, op)
    _checks.check_float("logits", logits, op)
    if target.is_complex():
        raise TypeError(f"marsops.{op}: target must be real, got {target.dtype}")
    if target.dtype in (torch.uint16, torch.uint32, torch.uint64):  # labels 0 / 1: any integer type holds them
        target = target.to(torch.int64)
    if target.shape != logits.shape:
        raise ValueError(f"marsops.{op}: target shape {tuple(target.shape)} must equal the logits shape "
                         f"{tuple(logits.shape)}")
    if pos_weight is not None:
        _checks.check_tensor("pos_weight", pos_weight, op)
        _checks.check_float("pos_weight", pos_weight, op)
        per_class = logits.dim() >= 2 and pos_weight.dim() == 1 and pos_weight.numel() == logits.shape[1]
        if pos_weight.numel() != 1 and not per_class:
            raise ValueError(f"marsops.{op}: pos_weight must hold one value or one per class (dim 1 of the logits, "
                             f"{logits.shape[1] if logits.dim() >= 2 else 'absent'}), got shape "
                             f"{tuple(pos_weight.shape)}")
    _checks.check_same_device(op, logits=logits, target=target, pos_weight=pos_weight)
    _checks.check_choice("reduction", reduction, REDUCTIONS, op)
    gamma = _checks.as_float("gamma", gamma, op)
    if not gamma >= 0 or gamma == float("inf"):
        raise ValueError(f"marsops.{op}: gamma must be finite and >= 0, got {gamma}")
    alpha = -1.0 if alpha is None else _checks.as_float("alpha", alpha, op)
    if not alpha <= 1:
        raise ValueError(f"marsops.{op}: alpha must be in [0, 1] (or None / negative for no weighting), got {alpha}")
    if ignore_index is not None:
        ignore_index = _checks.as_int64("ignore_index", ignore_index, op)
        if target.is_floating_point():
            raise ValueError(f"marsops.{op}: ignore_index applies to integer targets; float targets are soft labels "
                             "(pass integer 0/1 labels to ignore some)")

    chosen = _backend.resolve("sigmoid_focal_loss_forward", logits, backend)
    if chosen == "reference":
        return reference.sigmoid_focal_loss(logits, target, None if alpha < 0 else alpha, gamma, pos_weight,
                                            ignore_index, reduction)
    _checks.refuse_unsupported_autograd(op, logits, pos_weight)
    if pos_weight is not None and pos_weight.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"marsops.{op}: pos_weight requires grad, but the fused {chosen} kernels treat it as a "
                         "constant; pass pos_weight.detach(), or backend='reference'")
    if target.requires_grad and torch.is_grad_enabled():  # silently no gradient would be wrong
        raise ValueError(f"marsops.{op}: target requires grad, but the fused {chosen} kernels give the gradient "
                         "of the logits only; pass target.detach(), or backend='reference'")
    if logits.dtype == torch.float64 and chosen in ("cuda", "triton"):
        raise TypeError(f"marsops.{op}: the {chosen} backend computes in fp32; use float32 logits or the cpu / "
                        "reference backend for float64")
    compute_grad = _checks.wants_grad(logits)
    fn = (torch.ops.marsops.sigmoid_focal_loss_forward_triton if chosen == "triton"
          else torch.ops.marsops.sigmoid_focal_loss_forward)
    with _checks.label_errors_as_value_errors():
        loss, _ = fn(logits, target, pos_weight, alpha, gamma, ignore_index, REDUCTIONS.index(reduction),
                     compute_grad)
    return loss


class SigmoidFocalLoss(nn.Module):
    """Module form of :func:`sigmoid_focal_loss`; ``pos_weight`` is a buffer."""

    def __init__(self, alpha: Optional[float] = 0.25, gamma: float = 2.0, pos_weight: Optional[Tensor] = None,
                 ignore_index: Optional[int] = None, reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else
                             _checks.as_weight_buffer(pos_weight))
        self.alpha, self.gamma, self.ignore_index, self.reduction, self.backend = (alpha, gamma, ignore_index,
                                                                                    reduction, backend)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return sigmoid_focal_loss(logits, target, self.alpha, self.gamma, self.pos_weight, self.ignore_index,
                                  self.reduction, self.backend)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"


# ---- custom-op plumbing: the Triton op, and the fake and autograd of both -------------------------

@torch.library.custom_op("marsops::sigmoid_focal_loss_forward_triton", mutates_args=())
def _sigmoid_focal_triton(logits: Tensor, target: Tensor, pos_weight: Optional[Tensor], alpha: float, gamma: float,
                          ignore_index: Optional[int], reduction: int, compute_grad: bool) -> tuple[Tensor, Tensor]:
    _triton.require(logits.device.type, "sigmoid_focal_loss")
    from .triton.sigmoid import sigmoid_focal_forward

    with _triton.on_device_of(logits):
        loss, grad, ok = sigmoid_focal_forward(logits, target, pos_weight, alpha, gamma, ignore_index, reduction,
                                               compute_grad)
    _checks.assert_ok(ok, "sigmoid_focal_loss", "target contains a label outside {0, 1} that is not ignore_index "
                      "(integer targets), or a value outside [0, 1] (float targets)")
    return loss, grad


def _fake(logits, target, pos_weight, alpha, gamma, ignore_index, reduction, compute_grad):
    loss = logits.new_empty(logits.shape if reduction == 0 else ())
    grad = (torch.empty_like(logits, memory_format=torch.contiguous_format,
                             dtype=_saved_gradient.saved_dtype(logits.dtype)) if compute_grad else logits.new_empty(0))
    return loss, grad


def _setup_context(ctx, inputs, output):
    target, ignore_index, reduction = inputs[1], inputs[5], inputs[6]
    ctx.has_grad, ctx.reduction, ctx.ignore_index = inputs[7], reduction, ignore_index
    # 'none' with ignored elements: the targets too, so an upstream NaN or inf there cannot reach
    # the gradient (0 * inf is NaN; an ignored element's gradient is exactly 0).
    masked = reduction == 0 and ignore_index is not None and not target.is_floating_point()
    ctx.masked = masked
    ctx.save_for_backward(output[1], *((target,) if masked else ()))
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, _grad):
    nothing = (None,) * 7
    if grad_loss is None:
        return (None,) + nothing
    _saved_gradient.check_backward("sigmoid_focal_loss", ctx.has_grad)
    grad, *target = ctx.saved_tensors
    scale = _saved_gradient.masked_upstream(grad_loss, target[0], ctx.ignore_index) if ctx.masked else grad_loss
    return (_saved_gradient.scaled(grad, grad_loss, scale),) + nothing


for _op in (("marsops::sigmoid_focal_loss_forward_triton",)
            + (("marsops::sigmoid_focal_loss_forward",) if _extension._C else ())):
    _saved_gradient.register(_op, _fake, _backward, _setup_context)
