"""marsops: fused CPU / CUDA / Triton kernels for semantic-segmentation training."""
from .backend import backends
from .focal import FocalLoss, focal_loss

__all__ = ["FocalLoss", "backends", "focal_loss"]
__version__ = "0.1.0"
