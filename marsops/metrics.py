"""Confusion matrix with the argmax fused in, and a streaming per-class IoU metric built on it."""
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _checks, _extension, backend as _backend, reference
from . import triton as _triton


def confusion_matrix(pred_or_logits: Tensor, target: Tensor, num_classes: int, ignore_index: Optional[int] = None,
                     backend: str = "auto") -> Tensor:
    """int64 (num_classes, num_classes) matrix: entry [i, j] counts pixels of true class i predicted as j.

    Args:
        pred_or_logits: logits (N, C, *) of a floating dtype (the argmax over C is fused into the
            counting pass: ties go to the first class and NaN counts as the maximum, as
            torch.argmax), or predicted labels (N, *) of an integer dtype.
        target: (N, *) integer labels in [0, num_classes) or ignore_index.
        ignore_index: target value whose pixels are not counted (None: every pixel counts).

    Counting uses integer atomics or private histograms: exact and deterministic, with no host
    synchronisation on GPUs. Out-of-range labels raise a ValueError (on CUDA, a device-side
    assertion).
    """
    op = "confusion_matrix"
    _checks.check_tensor("pred_or_logits", pred_or_logits, op)
    _checks.check_tensor("target", target, op)
    _checks.check_integer("target", target, op)
    num_classes = _checks.as_int64("num_classes", num_classes, op)
    if num_classes < 1:
        raise ValueError(f"marsops.confusion_matrix: num_classes must be a positive int, got {num_classes!r}")
    if ignore_index is not None:
        ignore_index = _checks.as_int64("ignore_index", ignore_index, op)
    if target.dim() < 1:
        raise ValueError("marsops.confusion_matrix: target must be (N, *), got a scalar")
    if pred_or_logits.is_floating_point():
        expected = (target.shape[0], num_classes) + tuple(target.shape[1:])
        what = "logits"
    else:
        _checks.check_integer("pred_or_logits", pred_or_logits, op)
        expected, what = tuple(target.shape), "predicted labels"
    if tuple(pred_or_logits.shape) != expected:
        raise ValueError(f"marsops.confusion_matrix: {what} shape {tuple(pred_or_logits.shape)} does not match "
                         f"target shape {tuple(target.shape)}; expected {expected}")
    _checks.check_same_device(op, pred_or_logits=pred_or_logits, target=target)
    chosen = _backend.resolve("confusion_matrix", target, backend)
    if chosen == "reference":
        return reference.confusion_matrix(pred_or_logits, target, num_classes, ignore_index)
    fn = torch.ops.marsops.confusion_matrix_triton if chosen == "triton" else torch.ops.marsops.confusion_matrix
    with _checks.label_errors_as_value_errors():
        return fn(pred_or_logits, target, num_classes, ignore_index)


@torch.library.custom_op("marsops::confusion_matrix_triton", mutates_args=())
def _confusion_matrix_triton(input: Tensor, target: Tensor, num_classes: int, ignore_index: Optional[int]) -> Tensor:
    from .triton.confusion import confusion_matrix as launch

    _triton.require(target.device.type, "confusion_matrix")
    N = target.shape[0]
    P = target[0].numel() if N else 0
    from_logits = input.is_floating_point()
    class_last = from_logits and _checks.is_class_last(input)  # read in place; the kernel takes the strides
    x = input if class_last else input.contiguous().view((N, num_classes, P) if from_logits else (N, P))
    hist, ok = launch(x, target.contiguous().view(N, P), num_classes, ignore_index, from_logits, class_last)
    _checks.assert_ok(ok[0], "confusion_matrix", "target contains a label outside [0, num_classes) and not ignore_index")
    _checks.assert_ok(ok[1], "confusion_matrix", "predictions contain a label outside [0, num_classes)")
    return hist


def _confusion_fake(input, target, num_classes, ignore_index):
    return target.new_empty((num_classes, num_classes), dtype=torch.int64)


torch.library.register_fake("marsops::confusion_matrix_triton")(_confusion_fake)
if _extension._C is not None:
    torch.library.register_fake("marsops::confusion_matrix")(_confusion_fake)


@dataclass
class IoUResult:
    """Scores from a confusion matrix; per-class tensors are float64 with NaN where undefined."""

    iou: Tensor  # (C,) diag / (row + col - diag); NaN where the class is absent from truth and prediction
    miou: Tensor  # mean of iou over the chosen classes, NaN ones left out
    precision: Tensor  # (C,) diag / predicted count
    recall: Tensor  # (C,) diag / true count
    pixel_accuracy: Tensor  # trace / total counted


def scores(matrix: Tensor, classes: Optional[Sequence[int]] = None) -> IoUResult:
    """IoU, precision, recall and pixel accuracy from an int64 (C, C) confusion matrix."""
    m = matrix.double()
    diag, true, pred = m.diagonal(), m.sum(1), m.sum(0)
    iou = diag / (true + pred - diag)  # 0/0 = NaN for a class with empty union
    chosen = iou if classes is None else iou[list(classes)]
    return IoUResult(iou=iou, miou=chosen.nanmean(), precision=diag / pred, recall=diag / true,
                     pixel_accuracy=diag.sum() / m.sum())


class StreamingIoU:
    """Per-class IoU accumulated over batches; the (C, C) counts stay on the inputs' device.

    >>> metric = StreamingIoU(5, classes=[1, 2, 3, 4])   # the report's score: mean over classes 1..4
    >>> metric.update(logits, masks)                      # any number of batches, no host sync
    >>> metric.compute().miou.item()

    IoU is computed over the whole data set (summed counts), not averaged per image. A class whose
    union is empty gets NaN and is left out of the mean.

    Under torch.distributed, each process counts its own batches (`local`); `sync()` sums them
    over the processes into a separate copy that `matrix` and `compute()` then report, until the
    next update. Calling `sync()` again recomputes that sum from the local counts, so it never
    counts twice.
    """

    def __init__(self, num_classes: int, classes: Optional[Sequence[int]] = None, ignore_index: Optional[int] = None,
                 device=None, backend: str = "auto"):
        op = "StreamingIoU"
        num_classes = _checks.as_int64("num_classes", num_classes, op)
        if num_classes < 1:
            raise ValueError(f"marsops.StreamingIoU: num_classes must be a positive int, got {num_classes}")
        if classes is not None:
            classes = tuple(_checks.as_int64("classes", c, op) for c in classes)  # a generator is read once, here
            if not classes or not all(0 <= c < num_classes for c in classes) or len(set(classes)) != len(classes):
                raise ValueError(f"marsops.StreamingIoU: classes {list(classes)} must be a non-empty subset of "
                                 f"[0, {num_classes}), each class once")
        if ignore_index is not None:
            ignore_index = _checks.as_int64("ignore_index", ignore_index, op)
        self.num_classes, self.classes, self.ignore_index, self.backend = num_classes, classes, ignore_index, backend
        self.local = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self._synced: Optional[Tensor] = None  # the all-reduced counts, valid until the local ones change

    @property
    def matrix(self) -> Tensor:
        """The counts compute() scores: summed over processes after sync(), else this process's."""
        return self._synced if self._synced is not None else self.local

    def update(self, pred_or_logits: Tensor, target: Tensor) -> None:
        m = confusion_matrix(pred_or_logits, target, self.num_classes, self.ignore_index, self.backend)
        self._to_device(m.device)
        self.local += m
        self._synced = None

    def update_flip4(self, outputs: Tensor, target: Tensor, softmax: bool = True, dims=(-2, -1)) -> None:
        """Counts flip test-time-augmented predictions: outputs (4N, C, H, W) of a flip4 batch
        (marsops.flip4 of the images; 8N, C, D, H, W with dims=(-3, -2, -1)), target (N, [D,] H, W).
        Each flip is undone, the views averaged (softmax by default) and the argmax counted, in one
        pass (marsops.flip4_argmax)."""
        from .augment import flip_views_for

        self._update_views(outputs, target, softmax, flip_views_for(dims), -3 in dims)

    def update_d4(self, outputs: Tensor, target: Tensor, softmax: bool = True) -> None:
        """Counts dihedral test-time-augmented predictions: outputs (8N, C, H, W) of a d4 batch of
        square images, target (N, H, W); one pass (marsops.d4_argmax)."""
        from .augment import D4_VIEWS

        self._update_views(outputs, target, softmax, D4_VIEWS, False)

    def _update_views(self, outputs, target, softmax, views, volume) -> None:
        from .augment import views_argmax_op

        if outputs.dim() >= 2 and outputs.shape[1] != self.num_classes:
            raise ValueError(f"StreamingIoU: outputs have {outputs.shape[1]} classes, the metric "
                             f"{self.num_classes}")
        _, counts = views_argmax_op(outputs, target, self.ignore_index, softmax, False, views, volume, self.backend)
        self._to_device(counts.device)
        self.local += counts
        self._synced = None

    def counts_for(self, num_classes: int, ignore_index: int, device) -> Tensor:
        """The local counts, for another op (focal_loss(confusion=...)) to add a pass's counts to."""
        if num_classes != self.num_classes:
            raise ValueError(f"StreamingIoU: counts for {num_classes} classes, the metric has {self.num_classes}")
        if self.ignore_index is not None and self.ignore_index != ignore_index:
            raise ValueError(f"StreamingIoU: the metric ignores label {self.ignore_index}, the loss {ignore_index}")
        self._to_device(device)
        self._synced = None
        return self.local

    def _to_device(self, device) -> None:
        if self.local.device != torch.device(device):
            if self.local.any():
                raise ValueError(f"StreamingIoU: counts live on {self.local.device}, got inputs on {device}")
            self.local = self.local.to(device)

    def compute(self) -> IoUResult:
        return scores(self.matrix, self.classes)

    def reset(self) -> None:
        self.local.zero_()
        self._synced = None

    def merge(self, other: "StreamingIoU") -> "StreamingIoU":
        """Adds another metric's local counts to this one's."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(f"StreamingIoU.merge: {other.num_classes} classes ignoring {other.ignore_index} vs "
                             f"{self.num_classes} classes ignoring {self.ignore_index}")
        self.local += other.local.to(self.local.device)
        self._synced = None
        return self

    def sync(self, group=None) -> "StreamingIoU":
        """Sums the local counts of every process of a torch.distributed group (a collective: every
        process must call it). Idempotent: the sum always starts again from the local counts."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            synced = self.local.clone()
            dist.all_reduce(synced, op=dist.ReduceOp.SUM, group=group)
            self._synced = synced
        return self
