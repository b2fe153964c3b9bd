"""Region losses for segmentation (Dice, Jaccard, Tversky), their sums with a focal or
cross-entropy term (the nnU-Net / MONAI DiceFocal and DiceCE losses), fused: one pass over the
logits for the per-class sums, one for the gradient, no softmax or one-hot tensor.

With p = softmax(logits) and the sums over the non-ignored pixels of the batch (of each image
with per_image=True): I_c = sum p_c [y = c], S_c = sum p_c, T_c = sum [y = c], and::

    dice_c    = (2 I_c + smooth) / (S_c + T_c + smooth)
    jaccard_c = (I_c + smooth) / (S_c + T_c - I_c + smooth)
    tversky_c = (I_c + smooth) / (I_c + alpha (S_c - I_c) + beta (T_c - I_c) + smooth)

the loss is 1 - the weighted mean of the scores over the scored classes (the mean over images of
that with per_image). A class absent from prediction and target scores 1 (with smooth > 0:
smooth / smooth; with smooth = 0 it is defined as 1) and so costs nothing. Sums accumulate in
float64 whatever the logits' dtype.
"""
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import _checks, _saved_gradient, backend as _backend, reference, region_modes
from . import triton as _triton
from .focal import REDUCTIONS

DICE = (2.0, 0.0, 1.0, 1.0)  # (a, b, alpha, beta): score = (a I + smooth) / (b I + alpha S + beta T + smooth)
JACCARD = (1.0, -1.0, 1.0, 1.0)


def tversky_coefficients(alpha: float, beta: float):
    """(I + s) / (I + alpha (S - I) + beta (T - I) + s) as (a, b, alpha, beta); alpha = beta = 1/2 is a
    Dice with its smooth term doubled."""
    return (1.0, 1.0 - alpha - beta, alpha, beta)


def dice_loss(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, classes: Optional[Sequence[int]] = None,
              smooth: float = 1.0, ignore_index: int = -100, per_image: bool = False, backend: str = "auto",
              mode: str = "multiclass", from_logits: bool = True, reduction: str = "mean") -> Tensor:
    """Soft Dice loss, 1 - mean_c dice_c (module docstring), fused: no softmax, sigmoid or one-hot
    tensor is built.

    mode: "multiclass": logits ``(N, C, *)``, softmax over C, target an integer class map ``(N, *)``
    in [0, C) or ignore_index, or ``(N, C, *)`` one-hot / soft labels (float in [0, 1], bool, or
    integer 0 / 1). "binary": logits ``(N, 1, *)`` or ``(N, *)``, sigmoid, a target of that shape.
    "multilabel": logits ``(N, C, *)``, a sigmoid per channel, target ``(N, C, *)``. Mask targets
    are float soft labels in [0, 1], bool, or integer 0 / 1 where an element equal to ignore_index
    is left out (ignore_index applies to integer and bool targets only).

    from_logits: False when the input holds probabilities already (softmax / sigmoid skipped;
    values outside [0, 1] are an error). weight: (C,) finite class weights >= 0 (None: all 1;
    weights summing to 0 score nothing: loss 0); classes: the classes scored (None: all); smooth:
    added to numerator and denominator; per_image: sums per image, loss averaged over the images
    (else over the whole batch). reduction: "mean" the weighted mean of the per-class losses
    (averaged over the images with per_image), "sum" the sum of the weighted per-class losses,
    "none" those losses, weight_c (1 - dice_c) of each scored class: shape (K,) for K scored
    classes, (N, K) with per_image. A soft target that requires grad gets its gradient too."""
    return _region_loss("dice_loss", logits, target, DICE, weight, classes, smooth, ignore_index, per_image, backend,
                        mode, from_logits, reduction)


def jaccard_loss(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                 classes: Optional[Sequence[int]] = None, smooth: float = 1.0, ignore_index: int = -100,
                 per_image: bool = False, backend: str = "auto", mode: str = "multiclass", from_logits: bool = True,
                 reduction: str = "mean") -> Tensor:
    """Soft Jaccard (IoU) loss, 1 - mean_c jaccard_c; arguments as dice_loss."""
    return _region_loss("jaccard_loss", logits, target, JACCARD, weight, classes, smooth, ignore_index, per_image,
                        backend, mode, from_logits, reduction)


def tversky_loss(logits: Tensor, target: Tensor, alpha: float = 0.5, beta: float = 0.5,
                 weight: Optional[Tensor] = None, classes: Optional[Sequence[int]] = None, smooth: float = 1.0,
                 ignore_index: int = -100, per_image: bool = False, backend: str = "auto", mode: str = "multiclass",
                 from_logits: bool = True, reduction: str = "mean") -> Tensor:
    """Tversky loss, 1 - mean_c tversky_c: alpha weighs false positives, beta false negatives
    (alpha = beta = 1 is the Jaccard loss); other arguments as dice_loss."""
    alpha, beta = (_checks.as_nonnegative(n, v, "tversky_loss") for n, v in (("alpha", alpha), ("beta", beta)))
    if not alpha + beta > 0:
        raise ValueError(f"marsops.tversky_loss: alpha and beta must not both be 0, got {alpha}, {beta}")
    return _region_loss("tversky_loss", logits, target, tversky_coefficients(alpha, beta), weight, classes, smooth,
                        ignore_index, per_image, backend, mode, from_logits, reduction)


def dice_focal_loss(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                    classes: Optional[Sequence[int]] = None, smooth: float = 1.0, gamma: float = 2.0,
                    focal_weight: Optional[Tensor] = None, lambda_dice: float = 1.0, lambda_focal: float = 1.0,
                    ignore_index: int = -100, per_image: bool = False, label_smoothing: float = 0.0,
                    backend: str = "auto", mode: str = "multiclass", from_logits: bool = True,
                    reduction: str = "mean") -> Tensor:
    """lambda_dice * dice_loss + lambda_focal * focal_loss (mean over the non-ignored pixels, class
    weights focal_weight), sharing the softmax and the two passes over the logits. In binary and
    multilabel modes the focal term is marsops.sigmoid_focal_loss (alpha None; focal_weight its
    pos_weight). Needs logits (from_logits=True), a class map in multiclass mode, and reduction
    "mean"."""
    return _region_loss("dice_focal_loss", logits, target, DICE, weight, classes, smooth, ignore_index, per_image,
                        backend, mode, from_logits, reduction, region_lambda=lambda_dice, focal_lambda=lambda_focal,
                        gamma=gamma, focal_weight=focal_weight, focal_reduction="mean", label_smoothing=label_smoothing,
                        lambda_names=("lambda_dice", "lambda_focal"))


def dice_ce_loss(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                 classes: Optional[Sequence[int]] = None, smooth: float = 1.0, ce_weight: Optional[Tensor] = None,
                 lambda_dice: float = 1.0, lambda_ce: float = 1.0, ignore_index: int = -100, per_image: bool = False,
                 label_smoothing: float = 0.0, backend: str = "auto", mode: str = "multiclass",
                 from_logits: bool = True, reduction: str = "mean") -> Tensor:
    """lambda_dice * dice_loss + lambda_ce * F.cross_entropy(logits, target, weight=ce_weight,
    ignore_index=..., label_smoothing=...), sharing the softmax and the two passes. In binary and
    multilabel modes the second term is binary cross-entropy (ce_weight its pos_weight, as MONAI's
    DiceCELoss); with ``(N, C, *)`` soft labels in multiclass mode, cross-entropy against them (as
    F.cross_entropy with probability targets, ce_weight then weighs the terms but the mean is over
    the pixels, not the weights as for a class map). Needs logits (from_logits=True) and reduction
    "mean"."""
    return _region_loss("dice_ce_loss", logits, target, DICE, weight, classes, smooth, ignore_index, per_image,
                        backend, mode, from_logits, reduction, region_lambda=lambda_dice, focal_lambda=lambda_ce,
                        gamma=0.0, focal_weight=ce_weight, focal_reduction="weighted_mean",
                        label_smoothing=label_smoothing, focal_name="ce_weight",
                        lambda_names=("lambda_dice", "lambda_ce"))


MODES = ("multiclass", "binary", "multilabel")
LOSS_REDUCTIONS = ("mean", "sum", "none")


def _region_loss(op, logits, target, coeffs, weight, classes, smooth, ignore_index, per_image, backend,
                 mode="multiclass", from_logits=True, reduction="mean", region_lambda=1.0, focal_lambda=0.0,
                 gamma=0.0, focal_weight=None, focal_reduction="mean", label_smoothing=0.0,
                 focal_name="focal_weight", lambda_names=("lambda_dice", "lambda_focal")):
    _checks.check_choice("mode", mode, MODES, op)
    _checks.check_choice("reduction", reduction, LOSS_REDUCTIONS, op)
    from_logits = _checks.as_bool("from_logits", from_logits, op)
    _checks.check_tensor("target", target, op)
    if target.dtype in (torch.uint16, torch.uint32, torch.uint64):  # labels fit int64: every path takes them
        target = target.to(torch.int64)
    class_map = mode == "multiclass" and target.dim() == logits.dim() - 1
    if not (class_map and from_logits and reduction == "mean"):
        return region_modes.region_loss(op, logits, target, coeffs, weight, classes, smooth, ignore_index, per_image,
                                        backend, mode, from_logits, reduction, region_lambda, focal_lambda, gamma,
                                        focal_weight, focal_reduction, label_smoothing, focal_name, lambda_names)
    num_classes = _checks.check_logits_and_target(op, logits, target)
    smooth, gamma, region_lambda, focal_lambda, label_smoothing, per_image, ignore_index = \
        region_modes.check_options(op, num_classes, logits, target, weight, focal_weight, focal_name, smooth, gamma,
                                   region_lambda, focal_lambda, label_smoothing, per_image, ignore_index, lambda_names)
    chosen = _backend.resolve("region_stats", logits, backend)
    # The weighted mean is taken in float64 (the per-class sums are), so the weights keep their
    # precision: a float64 weight is not rounded to float32 (float32 ones convert exactly).
    if weight is None:
        class_weight = torch.ones(num_classes, dtype=torch.float64, device=logits.device)
    else:  # the reference differentiates through the weights; the kernels take them as constants
        class_weight = weight.double() if chosen == "reference" else weight.detach().double()
    if classes is not None:
        chosen_classes = _checks.as_classes(classes, num_classes, op)
        # Built on the device from the Python ints: copying a host tensor there would synchronise.
        index = torch.arange(num_classes, device=class_weight.device)
        mask = torch.zeros(num_classes, dtype=torch.bool, device=class_weight.device)
        for c in chosen_classes:
            mask |= index == c
        class_weight = class_weight * mask

    if chosen == "reference":
        return reference.region_loss(logits, target, class_weight, coeffs, smooth, per_image, ignore_index,
                                     region_lambda, focal_lambda, gamma, focal_weight, focal_reduction,
                                     label_smoothing)
    _checks.refuse_unsupported_autograd(op, logits, weight, focal_weight)
    for name, w in (("weight", weight), (focal_name, focal_weight)):
        if w is not None and w.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"marsops.{op}: {name} requires grad, but the fused {chosen} kernels treat class "
                             f"weights as constants; pass {name}.detach(), or backend='reference'")
    if logits.dtype == torch.float64 and chosen == "triton":
        raise TypeError(f"marsops.{op}: the triton backend computes in fp32; use float32 logits or the cpu / "
                        "reference backend for float64")
    compute_grad = _checks.wants_grad(logits)
    with _checks.label_errors_as_value_errors():
        loss, _ = torch.ops.marsops.region_loss(logits, target, class_weight, list(coeffs), smooth, per_image,
                                                ignore_index, region_lambda, focal_lambda, gamma, focal_weight,
                                                REDUCTIONS.index(focal_reduction), label_smoothing, compute_grad,
                                                chosen)
    return loss


def region_coefficients(stats, focal_stats, class_weight, coeffs, smooth, region_lambda, focal_lambda,
                        focal_reduction):
    """From the first pass's sums: the loss and, for the second, dL/dI and dL/dS of each (group,
    class) and the focal term's scale (float64 tensors)."""
    a, b, alpha, beta = coeffs
    I, S, T = stats.unbind(-1)  # (groups, C)
    num, den = a * I + smooth, b * I + alpha * S + beta * T + smooth
    ok = den != 0
    safe = torch.where(ok, den, torch.ones_like(den))
    score = torch.where(ok, num / safe, torch.ones_like(den))
    w = class_weight.to(stats.dtype)
    norm = reference.class_shares(w)
    groups = max(stats.shape[0], 1)  # per image with no image: nothing scored, 0
    share = norm * (region_lambda / groups)  # d(loss) / d(score) = -share
    loss = region_lambda * ((1 - score) * norm).sum() / groups
    # dL/dI only reaches pixels labelled c: 0 for classes absent from the target (whose tiny
    # denominators could otherwise make it overflow fp32 and poison 0 * inf products).
    # Divided by safe twice, not by safe**2, which underflows to 0 (and 0 / 0) for tiny masses.
    coef_i = torch.where(ok & (T > 0), -share * (a * safe - num * b) / safe / safe, torch.zeros_like(den))
    coef_s = torch.where(ok, share * num * alpha / safe / safe, torch.zeros_like(den))
    focal_scale = torch.zeros((), dtype=stats.dtype, device=stats.device)
    if focal_lambda:
        total, count, weight_sum = focal_stats.unbind()
        d = count if focal_reduction == REDUCTIONS.index("mean") else weight_sum
        # Nothing counted (d = 0): 0. A NaN weight makes d NaN, and the loss NaN, as the reference.
        safe_d = torch.where(d != 0, d, torch.ones_like(d))
        loss = loss + focal_lambda * torch.where(d != 0, total / safe_d, torch.zeros_like(d))
        focal_scale = torch.where(d != 0, focal_lambda / safe_d, torch.zeros_like(d))
    return loss, coef_i, coef_s, focal_scale


# ---- the custom op: the two passes of one backend, the loss, the saved gradient --------------------

@torch.library.custom_op("marsops::region_loss", mutates_args=())
def _region_loss_op(logits: Tensor, target: Tensor, class_weight: Tensor, coeffs: list[float], smooth: float,
                    per_image: bool, ignore_index: int, region_lambda: float, focal_lambda: float, gamma: float,
                    focal_weight: Optional[Tensor], focal_reduction: int, label_smoothing: float, compute_grad: bool,
                    backend: str) -> tuple[Tensor, Tensor]:
    def coefficients(stats, focal_stats):
        return region_coefficients(stats, focal_stats, class_weight, coeffs, smooth, region_lambda, focal_lambda,
                                   focal_reduction)

    return two_passes(logits, target, ignore_index, per_image, focal_lambda != 0, focal_weight, gamma,
                      label_smoothing, compute_grad, backend, coefficients)


def two_passes(logits: Tensor, target: Tensor, ignore_index: int, per_image: bool, focal: bool,
               focal_weight: Optional[Tensor], gamma: float, label_smoothing: float, compute_grad: bool, backend: str,
               coefficients) -> tuple[Tensor, Tensor]:
    """The body of a region loss op on one backend: region_stats' per-class sums, then
    coefficients(stats, focal_stats) -> (loss, dL/dI, dL/dS, focal scale) in float64, then
    region_grad's gradient (empty unless compute_grad). Returns (loss in the logits' dtype, gradient)."""
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if backend == "triton":
        _triton.require(logits.device.type, "region_loss")
        from .triton import region as kernels

        with _triton.on_device_of(logits):
            stats, focal_stats, ok = kernels.region_stats(logits, target, ignore_index, per_image, focal,
                                                          focal_weight, gamma, label_smoothing)
        _checks.assert_ok(ok, "region_loss", "target contains a label outside [0, C) that is not ignore_index")
    else:
        stats, focal_stats = torch.ops.marsops.region_stats(logits, target, ignore_index, per_image, focal,
                                                            focal_weight, gamma, label_smoothing)
    loss, coef_i, coef_s, focal_scale = coefficients(stats, focal_stats)
    grad = logits.new_empty(0)
    if compute_grad:
        # In the compute type; a coefficient beyond its range saturates there rather than turning inf.
        limit = torch.finfo(compute).max
        coef_i, coef_s = (c.clamp(-limit, limit).to(compute).contiguous() for c in (coef_i, coef_s))
        if backend == "triton":
            with _triton.on_device_of(logits):
                grad = kernels.region_grad(logits, target, ignore_index, per_image, coef_i, coef_s, focal,
                                           focal_weight, gamma, label_smoothing, focal_scale.float().reshape(()))
        else:
            grad = torch.ops.marsops.region_grad(logits, target, ignore_index, per_image, coef_i, coef_s, focal,
                                                 focal_weight, gamma, label_smoothing, float(focal_scale))
    return loss.to(logits.dtype), grad


@_region_loss_op.register_fake
def _(logits, target, class_weight, coeffs, smooth, per_image, ignore_index, region_lambda, focal_lambda, gamma,
      focal_weight, focal_reduction, label_smoothing, compute_grad, backend):
    from .focal import _empty_gradient

    return logits.new_empty(()), (_empty_gradient(logits) if compute_grad else logits.new_empty(0))


def _setup_context(ctx, inputs, output):
    ctx.has_grad = inputs[13]
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, _grad):
    nothing = (None,) * 14
    if grad_loss is None:
        return (None,) + nothing
    _saved_gradient.check_backward("region_loss", ctx.has_grad)
    (grad,) = ctx.saved_tensors
    return (_saved_gradient.scaled(grad, grad_loss, grad_loss),) + nothing


_region_loss_op.register_autograd(_backward, setup_context=_setup_context)


# ---- modules ------------------------------------------------------------------------------------

class _RegionLossModule(nn.Module):
    def __init__(self, weight: Optional[Union[Tensor, Sequence[float]]] = None, classes: Optional[Sequence[int]] = None,
                 smooth: float = 1.0, ignore_index: int = -100, per_image: bool = False, backend: str = "auto",
                 mode: str = "multiclass", from_logits: bool = True, reduction: str = "mean"):
        super().__init__()
        per_image = _checks.as_bool("per_image", per_image, type(self).__name__)
        from_logits = _checks.as_bool("from_logits", from_logits, type(self).__name__)
        _checks.check_choice("mode", mode, MODES, type(self).__name__)
        _checks.check_choice("reduction", reduction, LOSS_REDUCTIONS, type(self).__name__)
        self.mode, self.from_logits, self.reduction = mode, from_logits, reduction
        self.register_buffer("weight", None if weight is None else _checks.as_weight_buffer(weight))
        self.classes = None if classes is None else tuple(classes)
        self.smooth, self.ignore_index, self.per_image, self.backend = smooth, ignore_index, per_image, backend

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, classes={self.classes}, smooth={self.smooth}, ignore_index={self.ignore_index}, "
                f"per_image={self.per_image}, from_logits={self.from_logits}, reduction={self.reduction!r}")


class DiceLoss(_RegionLossModule):
    """Module form of :func:`dice_loss`; ``weight`` is a buffer."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return dice_loss(logits, target, self.weight, self.classes, self.smooth, self.ignore_index, self.per_image,
                         self.backend, self.mode, self.from_logits, self.reduction)


class JaccardLoss(_RegionLossModule):
    """Module form of :func:`jaccard_loss`."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return jaccard_loss(logits, target, self.weight, self.classes, self.smooth, self.ignore_index, self.per_image,
                            self.backend, self.mode, self.from_logits, self.reduction)


class TverskyLoss(_RegionLossModule):
    """Module form of :func:`tversky_loss`."""

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.alpha, self.beta = alpha, beta

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return tversky_loss(logits, target, self.alpha, self.beta, self.weight, self.classes, self.smooth,
                            self.ignore_index, self.per_image, self.backend, self.mode, self.from_logits,
                            self.reduction)


class DiceFocalLoss(_RegionLossModule):
    """Module form of :func:`dice_focal_loss`; ``focal_weight`` is a buffer too."""

    def __init__(self, gamma: float = 2.0, focal_weight: Optional[Union[Tensor, Sequence[float]]] = None,
                 lambda_dice: float = 1.0, lambda_focal: float = 1.0, label_smoothing: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("focal_weight", None if focal_weight is None else
                             _checks.as_weight_buffer(focal_weight))
        self.gamma, self.lambda_dice, self.lambda_focal = gamma, lambda_dice, lambda_focal
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return dice_focal_loss(logits, target, self.weight, self.classes, self.smooth, self.gamma, self.focal_weight,
                               self.lambda_dice, self.lambda_focal, self.ignore_index, self.per_image,
                               self.label_smoothing, self.backend, self.mode, self.from_logits, self.reduction)


class DiceCELoss(_RegionLossModule):
    """Module form of :func:`dice_ce_loss`; ``ce_weight`` is a buffer too."""

    def __init__(self, ce_weight: Optional[Union[Tensor, Sequence[float]]] = None, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, label_smoothing: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("ce_weight", None if ce_weight is None else _checks.as_weight_buffer(ce_weight))
        self.lambda_dice, self.lambda_ce, self.label_smoothing = lambda_dice, lambda_ce, label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return dice_ce_loss(logits, target, self.weight, self.classes, self.smooth, self.ce_weight, self.lambda_dice,
                            self.lambda_ce, self.ignore_index, self.per_image, self.label_smoothing, self.backend,
                            self.mode, self.from_logits, self.reduction)
