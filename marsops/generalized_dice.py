"""Generalized Dice loss (Sudre et al. 2017), as MONAI's ``GeneralizedDiceLoss(softmax=True,
to_onehot_y=True, batch=True)`` computes it, on the region losses' two fused passes.

With p = softmax(logits) and the sums over the non-ignored pixels of the whole batch,
I_c = sum p_c [y = c], S_c = sum p_c, T_c = sum [y = c], and class weights w_c = 1 / T_c^2
("square"), 1 / T_c ("simple") or 1 ("uniform") taken as constants (no gradient flows through
them), a class absent from the target (infinite weight) weighing the largest finite weight (0 if
none is finite)::

    loss = 1 - (2 sum_c w_c I_c + smooth) / (sum_c w_c (S_c + T_c) + smooth)

and 0 when numerator and denominator are both 0 (nothing counted, smooth 0). Only the
coefficients differ from the Dice loss: dL/dI_c = -2 w_c / D and dL/dS_c = N w_c / D^2.
"""
import torch
from torch import Tensor, nn

from . import _checks, _saved_gradient, backend as _backend, reference
from .losses import two_passes

WEIGHT_TYPES = ("square", "simple", "uniform")


def generalized_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1e-5, weight_type: str = "square",
                          ignore_index: int = -100, backend: str = "auto") -> Tensor:
    """Generalized Dice loss (module docstring) from logits ``(N, C, *)`` and integer targets
    ``(N, *)`` in [0, C) or ignore_index, without a softmax or one-hot tensor.

    smooth: added to numerator and denominator (finite, >= 0); weight_type: "square" (1 / T_c^2,
    Sudre et al.), "simple" (1 / T_c) or "uniform" (1)."""
    op = "generalized_dice_loss"
    _checks.check_logits_and_target(op, logits, target)
    _checks.check_same_device(op, logits=logits, target=target)
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"marsops.{op}: unknown weight_type {weight_type!r}; choose one of {WEIGHT_TYPES}")
    smooth = _checks.as_nonnegative("smooth", smooth, op)
    ignore_index = _checks.as_int64("ignore_index", ignore_index, op)
    chosen = _backend.resolve("region_stats", logits, backend)
    if chosen == "reference":
        return reference.generalized_dice_loss(logits, target, smooth, weight_type, ignore_index)
    _checks.refuse_unsupported_autograd(op, logits)
    if logits.dtype == torch.float64 and chosen == "triton":
        raise TypeError(f"marsops.{op}: the triton backend computes in fp32; use float32 logits or the cpu / "
                        "reference backend for float64")
    with _checks.label_errors_as_value_errors():
        loss, _ = torch.ops.marsops.generalized_dice_loss(logits, target, smooth, weight_type, ignore_index,
                                                          _checks.wants_grad(logits), chosen)
    return loss


def generalized_dice_coefficients(stats: Tensor, smooth: float, weight_type: str):
    """From region_stats' float64 sums (1, C, 3): the loss, dL/dI and dL/dS of each class (float64)
    and the (absent) focal term's scale, as region_coefficients returns them."""
    I, S, T = stats.unbind(-1)
    w = reference.generalized_dice_weights(T, weight_type)
    num, den = 2 * (w * I).sum() + smooth, (w * (S + T)).sum() + smooth
    ok = den != 0
    safe = torch.where(ok, den, torch.ones_like(den))
    zero = torch.zeros_like(I)
    loss = torch.where(ok, 1 - num / safe, torch.zeros_like(den))
    # dL/dI only reaches pixels labelled c: 0 for classes absent from the target. Divided by safe
    # twice, not by safe**2, which can underflow for tiny weighted masses.
    coef_i = torch.where(ok & (T > 0), -2 * w / safe, zero)
    coef_s = torch.where(ok, num * w / safe / safe, zero)
    return loss, coef_i, coef_s, torch.zeros((), dtype=stats.dtype, device=stats.device)


@torch.library.custom_op("marsops::generalized_dice_loss", mutates_args=())
def _generalized_dice_loss_op(logits: Tensor, target: Tensor, smooth: float, weight_type: str, ignore_index: int,
                              compute_grad: bool, backend: str) -> tuple[Tensor, Tensor]:
    return two_passes(logits, target, ignore_index, False, False, None, 0.0, 0.0, compute_grad, backend,
                      lambda stats, _: generalized_dice_coefficients(stats, smooth, weight_type))


@_generalized_dice_loss_op.register_fake
def _(logits, target, smooth, weight_type, ignore_index, compute_grad, backend):
    from .focal import _empty_gradient

    return logits.new_empty(()), (_empty_gradient(logits) if compute_grad else logits.new_empty(0))


def _setup_context(ctx, inputs, output):
    ctx.has_grad = inputs[5]
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, _grad):
    nothing = (None,) * 6
    if grad_loss is None:
        return (None,) + nothing
    _saved_gradient.check_backward("generalized_dice_loss", ctx.has_grad)
    (grad,) = ctx.saved_tensors
    return (_saved_gradient.scaled(grad, grad_loss, grad_loss),) + nothing


_generalized_dice_loss_op.register_autograd(_backward, setup_context=_setup_context)


class GeneralizedDiceLoss(nn.Module):
    """Module form of :func:`generalized_dice_loss`."""

    def __init__(self, smooth: float = 1e-5, weight_type: str = "square", ignore_index: int = -100,
                 backend: str = "auto"):
        super().__init__()
        if weight_type not in WEIGHT_TYPES:
            raise ValueError(f"marsops.GeneralizedDiceLoss: unknown weight_type {weight_type!r}; choose one of "
                             f"{WEIGHT_TYPES}")
        self.smooth = _checks.as_nonnegative("smooth", smooth, "GeneralizedDiceLoss")
        self.weight_type, self.ignore_index, self.backend = weight_type, ignore_index, backend

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return generalized_dice_loss(logits, target, self.smooth, self.weight_type, self.ignore_index, self.backend)

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, weight_type={self.weight_type!r}, ignore_index={self.ignore_index}"

