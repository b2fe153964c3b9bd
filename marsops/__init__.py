"""marsops: fused CPU / CUDA / Triton kernels for semantic-segmentation training."""
from .backend import backends
from .focal import FocalLoss, focal_loss
from .metrics import IoUResult, StreamingIoU, confusion_matrix, scores

__all__ = ["FocalLoss", "IoUResult", "StreamingIoU", "backends", "confusion_matrix", "focal_loss", "scores"]
__version__ = "0.1.0"
