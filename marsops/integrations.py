"""Adapters for other libraries (optional dependencies, imported only from here).

TorchmetricsIoU: marsops' fused confusion matrix as a ``torchmetrics.Metric``, so Lightning and
torchmetrics users can drop it in (``self.log("val_miou", metric)``, MetricCollection, DDP sync
through torchmetrics' own state reduction)::

    from marsops.integrations import TorchmetricsIoU
    metric = TorchmetricsIoU(num_classes=5, classes=[1, 2, 3, 4])
    metric.update(logits, masks)
    metric.compute()            # mean IoU over the chosen classes (NaN classes left out)
    metric.scores()             # marsops.IoUResult: IoU, Dice, precision, recall, F-beta

Its counts are part of its state_dict (a persistent state, with the options they were counted
under as the module's extra state), so a Lightning checkpoint carries them; loading counts of
another class count, class list or ignore_index is a ValueError, as StreamingIoU.load_state_dict.
"""
from typing import Optional, Sequence

import torch

from .metrics import (IoUResult, _check_inputs, _check_state_options, _check_state_tensor, confusion_matrix,
                      scores)

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
        # persistent: the counts are in state_dict(), as StreamingIoU's are
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.int64),
                       dist_reduce_fx="sum", persistent=True)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds: logits ``(N, C, *)`` or predicted labels ``(N, *)``; target ``(N, *)``."""
        _check_inputs(preds, target, self.num_classes, self.ignore_index)
        self.confmat += confusion_matrix(preds.detach(), target, self.num_classes, self.ignore_index, self.backend)

    def scores(self) -> IoUResult:
        return scores(self.confmat, self.classes)

    def compute(self) -> torch.Tensor:
        result = self.scores()
        return result.miou if self.score == "iou" else result.mdice

    def _options(self) -> dict:
        return {"num_classes": self.num_classes, "classes": None if self.classes is None else list(self.classes),
                "ignore_index": self.ignore_index}

    def get_extra_state(self) -> dict:
        """The options the counts were counted under (nn.Module's extra state, in state_dict())."""
        return self._options()

    def set_extra_state(self, state) -> None:
        """Checked, with the counts, before anything is loaded (_load_from_state_dict)."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Checks the saved options and counts first (torchmetrics would set counts of any shape),
        so a mismatched state is refused and leaves the metric as it was; the counts are loaded onto
        this metric's device."""
        where, options, counts = "TorchmetricsIoU.load_state_dict", prefix + "_extra_state", prefix + "confmat"
        if options in state_dict:
            expected = dict(self._options(), classes=self.classes)
            _check_state_options(where, state_dict[options], expected, ())
        if counts in state_dict:
            C = self.num_classes
            state_dict[counts] = _check_state_tensor(where, state_dict, counts, (C, C), torch.int64).to(
                self.confmat.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
