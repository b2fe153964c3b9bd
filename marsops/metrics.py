"""Confusion matrix with the argmax fused in, and a streaming per-class IoU metric built on it."""
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _checks, _extension, backend as _backend, reference
from . import triton as _triton


MAX_CLASSES = 46340  # C * C < 2**31: the kernels' bin indices, and a 17 GB matrix at most


def confusion_matrix(pred_or_logits: Tensor, target: Tensor, num_classes: int, ignore_index: Optional[int] = None,
                     backend: str = "auto") -> Tensor:
    """int64 (num_classes, num_classes) matrix: entry [i, j] counts pixels of true class i predicted as j.

    Args:
        pred_or_logits: logits ``(N, C, *)`` of a floating dtype (the argmax over C is fused into the
            counting pass: ties go to the first class and NaN counts as the maximum, as
            torch.argmax), or predicted labels ``(N, *)`` of an integer dtype.
        target: ``(N, *)`` integer labels in [0, num_classes) or ignore_index.
        ignore_index: target value whose pixels are not counted (None: every pixel counts).

    Counting uses integer atomics or private histograms: exact and deterministic, with no host
    synchronisation on GPUs. Out-of-range labels raise a ValueError (on CUDA, a device-side
    assertion).
    """
    num_classes, ignore_index = _check_inputs(pred_or_logits, target, num_classes, ignore_index)
    chosen = _backend.resolve("confusion_matrix", target, backend)
    if chosen == "reference":
        return reference.confusion_matrix(pred_or_logits, target, num_classes, ignore_index)
    fn = torch.ops.marsops.confusion_matrix_triton if chosen == "triton" else torch.ops.marsops.confusion_matrix
    with _checks.label_errors_as_value_errors():
        return fn(pred_or_logits, target, num_classes, ignore_index)


def _check_inputs(pred_or_logits, target, num_classes, ignore_index):
    """confusion_matrix's argument checks; returns (num_classes, ignore_index) as ints."""
    op = "confusion_matrix"
    _checks.check_tensor("pred_or_logits", pred_or_logits, op)
    _checks.check_tensor("target", target, op)
    _checks.check_integer("target", target, op)
    num_classes = _checks.as_int64("num_classes", num_classes, op)
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"marsops.confusion_matrix: num_classes must be in [1, {MAX_CLASSES}] (the int64 "
                         f"(C, C) matrix holds C * C < 2**31 counts), got {num_classes!r}")
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
    return num_classes, ignore_index


@torch.library.custom_op("marsops::confusion_matrix_triton", mutates_args=())
def _confusion_matrix_triton(input: Tensor, target: Tensor, num_classes: int, ignore_index: Optional[int]) -> Tensor:
    from .triton.confusion import confusion_matrix as launch

    _triton.require(target.device.type, "confusion_matrix")
    N = target.shape[0]
    P = target[0].numel() if N else 0
    from_logits = input.is_floating_point()
    class_last = from_logits and _checks.is_class_last(input)  # read in place; the kernel takes the strides
    x = input if class_last else input.contiguous().view((N, num_classes, P) if from_logits else (N, P))
    with _triton.on_device_of(target):
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
    """Scores from a confusion matrix (TP = diag, FP = column - diag, FN = row - diag); per-class
    tensors are float64 with NaN where undefined, and the means leave NaN classes out.

    The empty-class rule: a class absent from both truth and prediction has no IoU, Dice or F-beta
    (0/0, NaN) and does not enter the means; absent from the truth only, it scores 0."""

    iou: Tensor  # (C,) TP / (TP + FP + FN)
    miou: Tensor  # mean of iou over the chosen classes
    precision: Tensor  # (C,) TP / (TP + FP): NaN where nothing was predicted as the class
    recall: Tensor  # (C,) TP / (TP + FN): NaN where the class is absent from the truth
    pixel_accuracy: Tensor  # trace / total counted
    dice: Tensor = None  # (C,) = F1: 2 TP / (2 TP + FP + FN)
    mdice: Tensor = None  # mean of dice over the chosen classes
    matrix: Optional[Tensor] = None  # the (C, C) counts scored
    classes: Optional[Sequence[int]] = None  # the classes the means run over (None: all)

    def fbeta(self, beta: float) -> Tensor:
        """(C,) F-beta = (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP): recall weighs beta times
        precision (beta = 1: Dice / F1). Data-set counts (also in per-image mode)."""
        beta = _checks.as_float("beta", beta, "IoUResult.fbeta")
        if not beta > 0:
            raise ValueError(f"IoUResult.fbeta: beta must be > 0, got {beta}")
        m = self.matrix.double()
        diag, true, pred = m.diagonal(), m.sum(1), m.sum(0)
        b2 = beta * beta  # inf past 1e154, whose limit is the recall
        # (1 + b2) TP / (b2 (TP + FN) + TP + FP), divided through by 1 + b2: no overflow for any beta.
        return diag / (true / (1 + 1 / b2) + pred / (1 + b2))

    def mean_fbeta(self, beta: float) -> Tensor:
        """fbeta averaged over the chosen classes, NaN ones left out."""
        return _class_mean(self.fbeta(beta), self.classes)


def _class_mean(per_class: Tensor, classes: Optional[Sequence[int]]) -> Tensor:
    return (per_class if classes is None else per_class[list(classes)]).nanmean()


def scores(matrix: Tensor, classes: Optional[Sequence[int]] = None) -> IoUResult:
    """IoU, Dice (F1), precision, recall and pixel accuracy from an int64 (C, C) confusion matrix
    (F-beta: IoUResult.fbeta). The result holds a copy of the counts: later updates of a metric do
    not change it."""
    _checks.check_tensor("matrix", matrix, "scores")
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"marsops.scores: matrix must be a square (C, C) confusion matrix, got shape "
                         f"{tuple(matrix.shape)}")
    if classes is not None:
        classes = _checks.as_classes(classes, matrix.shape[0], "scores")
    matrix = matrix.clone()
    m = matrix.double()
    diag, true, pred = m.diagonal(), m.sum(1), m.sum(0)
    iou = diag / (true + pred - diag)  # 0/0 = NaN for a class with empty union
    dice = 2 * diag / (true + pred)
    return IoUResult(iou=iou, miou=_class_mean(iou, classes), precision=diag / pred, recall=diag / true,
                     pixel_accuracy=diag.sum() / m.sum(), dice=dice, mdice=_class_mean(dice, classes), matrix=matrix,
                     classes=classes)


def per_image_counts(pred_or_logits: Tensor, target: Tensor, num_classes: int,
                     ignore_index: Optional[int] = None) -> Tensor:
    """int64 (N, C, C) confusion matrices, one per image (argmax over dim 1 of logits, or labels),
    from torch ops on the device: no host synchronisation, exact. Labels are checked like
    confusion_matrix's (a ValueError, on CUDA a device-side assertion)."""
    pred = pred_or_logits.argmax(1) if pred_or_logits.is_floating_point() else pred_or_logits
    N, C = target.shape[0], num_classes
    if target.numel() == 0:  # no image, or images without pixels: nothing to count
        return torch.zeros(N, C, C, dtype=torch.int64, device=target.device)
    t, p = target.reshape(N, -1).long(), pred.reshape(N, -1).long()
    keep = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    ok_t = (~keep | ((t >= 0) & (t < C))).all()
    ok_p = (~keep | ((p >= 0) & (p < C))).all()
    _checks.assert_ok(ok_t, "StreamingIoU", "target contains a label outside [0, num_classes) and not ignore_index")
    _checks.assert_ok(ok_p, "StreamingIoU", "predictions contain a label outside [0, num_classes)")
    image = torch.arange(N, device=t.device).unsqueeze(1)
    # Ignored (and invalid) pixels go to one extra bin past the end, dropped below.
    bins = torch.where(keep & (t >= 0) & (t < C) & (p >= 0) & (p < C), (image * C + t) * C + p, N * C * C)
    counts = torch.zeros(N * C * C + 1, dtype=torch.int64, device=t.device)
    counts.index_add_(0, bins.flatten(), torch.ones_like(bins.flatten()))
    return counts[:-1].view(N, C, C)


def _check_state_options(where: str, state_dict, expected: dict, tensors: Sequence[str]) -> dict:
    """The options of a saved metric state, checked against this metric's (`expected`): every key
    of expected and `tensors` present, each option equal; else one ValueError saying which differ."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"{where}: expected a dict from state_dict(), got {type(state_dict).__name__}")
    missing = [k for k in (*expected, *tensors) if k not in state_dict]
    if missing:
        raise ValueError(f"{where}: not a metric state of this kind (missing {missing})")
    saved = {k: state_dict[k] for k in expected}
    if saved.get("classes") is not None:
        saved["classes"] = tuple(saved["classes"])
    differ = [f"{k} {saved[k]!r} (this metric: {v!r})" for k, v in expected.items() if saved[k] != v]
    if differ:
        raise ValueError(f"{where}: the state was counted with {'; '.join(differ)}: it cannot be loaded into this "
                         "metric; create the metric with the saved options")
    return saved


def _check_state_tensor(where: str, state_dict, key: str, shape, dtype) -> Tensor:
    """state_dict[key], which must be a tensor of `shape` and `dtype`."""
    t = state_dict[key]
    if not isinstance(t, Tensor) or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{where}: {key} must be a {dtype} tensor of shape {tuple(shape)}, got {got}")
    return t


class StreamingIoU:
    """Per-class IoU and Dice accumulated over batches; the (C, C) counts stay on the inputs' device.

    >>> metric = StreamingIoU(5, classes=[1, 2, 3, 4])   # the report's score: mean over classes 1..4
    >>> metric.update(logits, masks)                      # any number of batches, no host sync
    >>> metric.compute().miou.item()

    By default IoU and Dice are computed over the whole data set (summed counts). A class whose
    union is empty gets NaN and is left out of the mean. The means run over `classes`; by default
    every class but an ignore_index that is itself a class (it has no truth pixels, so its score
    would only count false positives), as torchmetrics does.

    per_image=True: iou and dice are instead the mean over images of each image's per-class
    scores, an image counting for class c only where c appears in its truth or its prediction (the
    same empty-class rule, per image); miou / mdice average those over the chosen classes.
    Precision, recall, pixel accuracy and fbeta stay data-set scores. The per-image counts come
    from torch ops (argmax, index_add), not the fused kernels, and the fused updates
    (update_flip4, update_d4, focal_loss(confusion=...)) are refused in this mode.

    Under torch.distributed, each process counts its own batches (`local`); `sync()` sums them
    over the processes into a separate copy that `matrix` and `compute()` then report, until the
    next update. Calling `sync()` again recomputes that sum from the local counts, so it never
    counts twice.
    """

    def __init__(self, num_classes: int, classes: Optional[Sequence[int]] = None, ignore_index: Optional[int] = None,
                 device: Optional[Union[str, torch.device]] = None, backend: str = "auto", per_image: bool = False):
        op = "StreamingIoU"
        num_classes = _checks.as_int64("num_classes", num_classes, op)
        if num_classes < 1:
            raise ValueError(f"marsops.StreamingIoU: num_classes must be a positive int, got {num_classes}")
        if classes is not None:
            classes = _checks.as_classes(classes, num_classes, op)
        if ignore_index is not None:
            ignore_index = _checks.as_int64("ignore_index", ignore_index, op)
            if classes is None and 0 <= ignore_index < num_classes and num_classes > 1:
                classes = tuple(c for c in range(num_classes) if c != ignore_index)
        if backend != "auto" and backend not in _backend.BACKENDS:
            raise ValueError(f"marsops.StreamingIoU: unknown backend {backend!r}; choose one of "
                             f"{_backend.BACKENDS} or 'auto'")
        self.num_classes, self.classes, self.ignore_index, self.backend = num_classes, classes, ignore_index, backend
        self.per_image = _checks.as_bool("per_image", per_image, op)
        self.local = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        # per_image: float64 (3, C) sums over images of [IoU, Dice, 1] where defined
        self.local_images = torch.zeros(3, num_classes, dtype=torch.float64, device=device)
        self._synced: Optional[Tensor] = None  # the all-reduced counts, valid until the local ones change
        self._synced_images: Optional[Tensor] = None

    @property
    def matrix(self) -> Tensor:
        """The counts compute() scores: summed over processes after sync(), else this process's."""
        return self._synced if self._synced is not None else self.local

    def update(self, pred_or_logits: Tensor, target: Tensor) -> None:
        _checks.refuse_vmap("StreamingIoU", "update", pred_or_logits, target)
        if not self.per_image:
            m = confusion_matrix(pred_or_logits, target, self.num_classes, self.ignore_index, self.backend)
            self._to_device(m.device)
            self.local += m
            self._synced = None
            return
        _check_inputs(pred_or_logits, target, self.num_classes, self.ignore_index)
        per = per_image_counts(pred_or_logits.detach(), target, self.num_classes, self.ignore_index).double()
        self._to_device(per.device)
        diag, true, pred = per.diagonal(dim1=1, dim2=2), per.sum(2), per.sum(1)  # (N, C) each
        union = true + pred - diag
        present = union > 0
        safe = torch.where(present, union, torch.ones_like(union))
        iou = torch.where(present, diag / safe, torch.zeros_like(union))
        dice = torch.where(present, 2 * diag / (safe + diag), torch.zeros_like(union))
        self.local_images += torch.stack([iou.sum(0), dice.sum(0), present.double().sum(0)])
        self.local += per.sum(0).long()
        self._synced = self._synced_images = None

    def update_flip4(self, outputs: Tensor, target: Tensor, softmax: bool = True,
                     dims: Sequence[int] = (-2, -1)) -> None:
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

    def _refuse_per_image(self, what: str) -> None:
        if self.per_image:
            raise ValueError(f"StreamingIoU: {what} counts a batch as a whole; in per_image mode use update() (e.g. "
                             "with marsops.flip4_argmax's predictions)")

    def _update_views(self, outputs, target, softmax, views, volume) -> None:
        from .augment import views_argmax_op

        self._refuse_per_image("the fused test-time-augmentation update")
        _checks.refuse_vmap("StreamingIoU", "update_flip4 / update_d4", outputs, target)
        if outputs.dim() >= 2 and outputs.shape[1] != self.num_classes:
            raise ValueError(f"StreamingIoU: outputs have {outputs.shape[1]} classes, the metric "
                             f"{self.num_classes}")
        _, counts = views_argmax_op(outputs, target, self.ignore_index, softmax, False, views, volume, self.backend)
        self._to_device(counts.device)
        self.local += counts
        self._synced = None

    def counts_for(self, num_classes: int, ignore_index: int, device: Union[str, torch.device]) -> Tensor:
        """The local counts, for another op (focal_loss(confusion=...)) to add a pass's counts to."""
        self._refuse_per_image("focal_loss(confusion=...)")
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
            self.local_images = self.local_images.to(device)

    def compute(self) -> IoUResult:
        result = scores(self.matrix, self.classes)
        if self.per_image:
            sums = self._synced_images if self._synced_images is not None else self.local_images
            iou_sum, dice_sum, images = sums
            result.iou, result.dice = iou_sum / images, dice_sum / images  # 0/0: NaN, no image had the class
            result.miou, result.mdice = _class_mean(result.iou, self.classes), _class_mean(result.dice, self.classes)
        return result

    def reset(self) -> None:
        self.local.zero_()
        self.local_images.zero_()
        self._synced = self._synced_images = None

    def merge(self, other: "StreamingIoU") -> "StreamingIoU":
        """Adds another metric's local counts to this one's."""
        if (other.num_classes != self.num_classes or other.ignore_index != self.ignore_index
                or other.per_image != self.per_image):
            raise ValueError(f"StreamingIoU.merge: {other.num_classes} classes ignoring {other.ignore_index} "
                             f"(per_image={other.per_image}) vs {self.num_classes} classes ignoring "
                             f"{self.ignore_index} (per_image={self.per_image})")
        self.local += other.local.to(self.local.device)
        self.local_images += other.local_images.to(self.local_images.device)
        self._synced = self._synced_images = None
        return self

    def state_dict(self) -> dict:
        """The metric's state, in torch's conventions (as nn.Module.state_dict and
        Optimizer.state_dict): a dict of its counts, as tensors (references, not copies), and the
        options they were counted under (checked by load_state_dict). The counts are this
        process's own (`local`), not a sync()'s sum. torch.save-able and loadable with
        torch.load(weights_only=True)::

            torch.save({"model": model.state_dict(), "metric": metric.state_dict()}, path)
            metric.load_state_dict(torch.load(path, weights_only=True)["metric"])
        """
        return {"num_classes": self.num_classes, "classes": None if self.classes is None else list(self.classes),
                "ignore_index": self.ignore_index, "per_image": self.per_image,
                "matrix": self.local, "image_sums": self.local_images}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores counts saved by state_dict(), copying them onto this metric's device (into its
        own tensors, so a captured CUDA graph keeps counting into them); compute() then gives
        exactly what the saved metric gave. A state of another class count, class list,
        ignore_index or per_image mode is refused with a ValueError, and the metric is left as it
        was."""
        where = "StreamingIoU.load_state_dict"
        _check_state_options(where, state_dict, dict(num_classes=self.num_classes, classes=self.classes,
                                                    ignore_index=self.ignore_index, per_image=self.per_image),
                            ("matrix", "image_sums"))
        C = self.num_classes
        matrix = _check_state_tensor(where, state_dict, "matrix", (C, C), torch.int64)
        images = _check_state_tensor(where, state_dict, "image_sums", (3, C), torch.float64)
        self.local.copy_(matrix)
        self.local_images.copy_(images)
        self._synced = self._synced_images = None

    def sync(self, group: Optional["torch.distributed.ProcessGroup"] = None) -> "StreamingIoU":
        """Sums the local counts of every process of a torch.distributed group (a collective: every
        process must call it). Idempotent: the sum always starts again from the local counts."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            synced = self.local.clone()
            dist.all_reduce(synced, op=dist.ReduceOp.SUM, group=group)
            self._synced = synced
            if self.per_image:
                images = self.local_images.clone()
                dist.all_reduce(images, op=dist.ReduceOp.SUM, group=group)
                self._synced_images = images
        return self
