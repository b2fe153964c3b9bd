"""Online hard example mining (OHEM) for segmentation: the focal (or, with gamma = 0, the
cross-entropy) loss averaged over the pixels the model finds hardest.

With p_t the softmax probability of each non-ignored pixel's label, s those values ascending (n of
them) and k = min(min_kept * N, n - 1), the pixels kept are those with p_t < tau, tau = max(thresh,
s[k]): every pixel less sure than thresh, and at least the min_kept * N hardest (fewer only when
ties at s[k], or pixels at p_t = s[k] = the largest, are dropped, as mmsegmentation's
OHEMPixelSampler drops them). The kernels find s[k] by counting, never sorting: one pass over the
logits writes each pixel's log p_t (log space: p_t itself underflows to 0 past a logit margin of
~87 in fp32, which would tie the hardest pixels) and a histogram of it, and a selection within
s[k]'s bin gives its exact value; the loss and its gradient are then the fused focal loss of the
kept pixels (a second pass).
"""
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import _checks, _extension, backend as _backend, reference
from . import triton as _triton
from .focal import focal_loss

KEPT_SENTINEL = -1  # the label of the pixels not kept, in the selection's int32 labels


def ohem_focal_loss(logits: Tensor, target: Tensor, gamma: float = 0.5, thresh: float = 0.7,
                    min_kept: int = 100_000, weight: Optional[Tensor] = None, ignore_index: int = -100,
                    backend: str = "auto") -> Tensor:
    """Focal loss over the hard pixels (module docstring): the mean of ``-w[y] (1 - p_t)^gamma log p_t``
    over the kept pixels, 0 (with a zero gradient) when none is kept. gamma = 0 is OHEM cross-entropy.

    Args:
        logits: ``(N, C, *spatial)`` float (fp16 / bf16 computed in fp32; channels_last read in place).
        target: ``(N, *spatial)`` integer labels in [0, C) or ignore_index.
        thresh: probability in [0, 1]; pixels with p_t below it are always kept.
        min_kept: pixels kept per image at least (min_kept * N over the batch), >= 0.
        weight: optional (C,) class weights of the focal term (the mean stays over the kept pixels).

    The kept set is a constant of the gradient. The selection runs in log space (log p_t, which does
    not underflow as p_t does past a logit margin of ~87 in fp32), in fp32 in the kernels (float64
    for float64 logits on the cpu backend), so a pixel within rounding of tau may be kept by one
    backend and not another."""
    op = "ohem_focal_loss"
    _checks.check_logits_and_target(op, logits, target)
    _checks.check_same_device(op, logits=logits, target=target, weight=weight)
    thresh = _checks.as_float("thresh", thresh, op)
    if not 0 <= thresh <= 1:
        raise ValueError(f"marsops.{op}: thresh must be a probability in [0, 1], got {thresh}")
    min_kept = _checks.as_int64("min_kept", min_kept, op)
    if min_kept < 0:
        raise ValueError(f"marsops.{op}: min_kept must be >= 0, got {min_kept}")
    ignore_index = _checks.as_int64("ignore_index", ignore_index, op)
    batch_kept = min(min_kept * logits.shape[0], 2**62)
    _check_focal_arguments(logits, weight, gamma)
    chosen = _backend.resolve("ohem_select", logits, backend)
    if chosen == "reference":
        return reference.ohem_focal_loss(logits, target, gamma, thresh, min_kept, weight, ignore_index)
    if logits.dtype == torch.float64 and chosen == "triton":
        raise TypeError(f"marsops.{op}: the triton backend computes in fp32; use float32 logits or the cpu / "
                        "reference backend for float64")
    labels = ohem_labels(logits, target, thresh, batch_kept, ignore_index, chosen)
    return focal_loss(logits, labels, weight, gamma, KEPT_SENTINEL, "mean", chosen)


def ohem_labels(logits: Tensor, target: Tensor, thresh: float, batch_kept: int, ignore_index: int,
                backend: str) -> Tensor:
    """The selection alone: int32 labels of the target's shape, KEPT_SENTINEL where not kept (the
    ops also return float64 [log tau, kept, counted])."""
    with _checks.label_errors_as_value_errors():
        if backend == "triton":
            labels, _ = torch.ops.marsops.ohem_select_triton(logits.detach(), target, ignore_index, thresh, batch_kept)
        else:
            labels, _ = torch.ops.marsops.ohem_select(logits.detach(), target, ignore_index, thresh, batch_kept)
    return labels


def _check_focal_arguments(logits, weight, gamma):
    """What focal_loss checks, before the selection runs, with errors naming this op."""
    op = "ohem_focal_loss"
    if weight is not None:
        _checks.check_tensor("weight", weight, op)
        _checks.check_float("weight", weight, op)
        if weight.shape != (logits.shape[1],):
            raise ValueError(f"marsops.{op}: weight must have shape ({logits.shape[1]},), got {tuple(weight.shape)}")
    gamma = _checks.as_float("gamma", gamma, op)
    if not 0 <= gamma < float("inf"):
        raise ValueError(f"marsops.{op}: gamma must be finite and >= 0, got {gamma}")


class OhemFocalLoss(nn.Module):
    """Module form of :func:`ohem_focal_loss`; ``weight`` is a buffer."""

    def __init__(self, gamma: float = 0.5, thresh: float = 0.7, min_kept: int = 100_000,
                 weight: Optional[Union[Tensor, Sequence[float]]] = None, ignore_index: int = -100,
                 backend: str = "auto"):
        super().__init__()
        self.register_buffer("weight", None if weight is None else _checks.as_weight_buffer(weight))
        self.gamma, self.thresh, self.min_kept, self.ignore_index, self.backend = (gamma, thresh, min_kept,
                                                                                    ignore_index, backend)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return ohem_focal_loss(logits, target, self.gamma, self.thresh, self.min_kept, self.weight, self.ignore_index,
                               self.backend)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, thresh={self.thresh}, min_kept={self.min_kept}, ignore_index={self.ignore_index}"


# ---- custom-op plumbing: the Triton selection, and the fake (shape-only) kernels of both ----------

@torch.library.custom_op("marsops::ohem_select_triton", mutates_args=())
def _ohem_select_triton(logits: Tensor, target: Tensor, ignore_index: int, thresh: float,
                        min_kept: int) -> tuple[Tensor, Tensor]:
    _triton.require(logits.device.type, "ohem_focal_loss")
    from .triton.ohem import ohem_select

    # As the C++ op checks its arguments (an op others may call directly).
    _checks.check_float("logits", logits, "ohem_select_triton")
    _checks.check_integer("target", target, "ohem_select_triton")
    if logits.dim() < 2 or tuple(target.shape) != (logits.shape[0],) + tuple(logits.shape[2:]):
        raise ValueError(f"marsops.ohem_select_triton: target shape {tuple(target.shape)} does not match logits "
                         f"shape {tuple(logits.shape)}")
    if logits.dtype == torch.float64:
        raise TypeError("marsops.ohem_select_triton: computes in fp32; float64 logits need the cpu backend")
    if not 0 <= thresh <= 1 or min_kept < 0:
        raise ValueError(f"marsops.ohem_select_triton: thresh must be in [0, 1] and min_kept >= 0, got {thresh}, "
                         f"{min_kept}")

    N, C = logits.shape[:2]
    P = target[0].numel() if N else 0
    class_last = _checks.is_class_last(logits)  # read in place; the kernel takes the strides
    x = logits if class_last else logits.contiguous().view(N, C, P)
    with _triton.on_device_of(logits):
        labels, stats, ok = ohem_select(x, target.contiguous().view(N, P), ignore_index, thresh, min_kept, class_last)
    _checks.assert_ok(ok, "ohem_focal_loss", "target contains a label outside [0, C) that is not ignore_index")
    return labels.view(target.shape), stats


def _fake(logits, target, ignore_index, thresh, min_kept):
    return target.new_empty(target.shape, dtype=torch.int32), logits.new_empty(3, dtype=torch.float64)


for _op in ("marsops::ohem_select_triton",) + (("marsops::ohem_select",) if _extension._C else ()):
    torch.library.register_fake(_op)(_fake)
