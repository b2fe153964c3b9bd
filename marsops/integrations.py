"""Adapters for other libraries (optional dependencies, imported only from here).

TorchmetricsIoU: marsops' fused confusion matrix as a ``torchmetrics.Metric``, so Lightning and
torchmetrics users can drop it in (``self.log("val_miou", metric)``, MetricCollection, DDP sync
through torchmetrics' own state reduction)::

    from marsops.integrations import TorchmetricsIoU
    metric = TorchmetricsIoU(num_classes=5, classes=[1, 2, 3, 4])
    metric.update(logits, masks)
    metric.compute()            # mean IoU over the chosen classes (NaN classes left out)
    metric.scores()             # marsops.IoUResult: IoU, Dice, precision, recall, F-beta
"""
from typing import Optional, Sequence

import torch

from .metrics import IoUResult, _check_inputs, confusion_matrix, scores

try:
    from torchmetrics import Metric
except ImportError as exc:  # pragma: no cover - exercised where torchmetrics is missing
    raise ImportError("marsops.integrations needs torchmetrics: pip install torchmetrics") from exc


class TorchmetricsIoU(Metric):
    """Data-set mean IoU (or Dice) from marsops.confusion_matrix: argmax fused, exact int64
    counts, no host synchronisation in update(). ``score``: "iou" (default) or "dice"."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, classes: Optional[Sequence[int]] = None, ignore_index: Optional[int] = None,
                 score: str = "iou", backend: str = "auto", **kwargs):
        super().__init__(**kwargs)
        if score not in ("iou", "dice"):
            raise ValueError(f"TorchmetricsIoU: score must be 'iou' or 'dice', got {score!r}")
        from .metrics import StreamingIoU

        checked = StreamingIoU(num_classes, classes, ignore_index)  # the same argument checks
        self.num_classes, self.classes, self.ignore_index = checked.num_classes, checked.classes, checked.ignore_index
        self.score, self.backend = score, backend
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.int64),
                       dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds: logits ``(N, C, *)`` or predicted labels ``(N, *)``; target ``(N, *)``."""
        _check_inputs(preds, target, self.num_classes, self.ignore_index)
        self.confmat += confusion_matrix(preds.detach(), target, self.num_classes, self.ignore_index, self.backend)

    def scores(self) -> IoUResult:
        return scores(self.confmat, self.classes)

    def compute(self) -> torch.Tensor:
        result = self.scores()
        return result.miou if self.score == "iou" else result.mdice
