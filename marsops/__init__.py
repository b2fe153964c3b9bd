"""marsops: fused CPU / CUDA / Triton kernels for semantic-segmentation training."""
from ._version import __version__
from .augment import d4, d4_argmax, d4_merge, flip4, flip4_argmax, flip4_merge, random_flip
from .backend import backends, empty_cache
from .focal import FocalLoss, focal_loss
from .lovasz import LovaszSoftmaxLoss, lovasz_softmax_loss
from .losses import (DiceCELoss, DiceFocalLoss, DiceLoss, JaccardLoss, TverskyLoss, dice_ce_loss, dice_focal_loss,
                     dice_loss, jaccard_loss, tversky_loss)
from .ohem import OhemFocalLoss, ohem_focal_loss
from .sigmoid_focal import SigmoidFocalLoss, sigmoid_focal_loss
from .generalized_dice import GeneralizedDiceLoss, generalized_dice_loss
from .metrics import IoUResult, StreamingIoU, confusion_matrix, scores

__all__ = [
    "DiceCELoss", "DiceFocalLoss", "DiceLoss", "JaccardLoss", "TverskyLoss", "dice_ce_loss", "dice_focal_loss",
    "dice_loss", "jaccard_loss", "tversky_loss",
    "OhemFocalLoss", "ohem_focal_loss",
    "SigmoidFocalLoss", "sigmoid_focal_loss",
    "LovaszSoftmaxLoss", "lovasz_softmax_loss",
    "FocalLoss", "IoUResult", "StreamingIoU", "backends", "confusion_matrix", "d4", "d4_argmax", "d4_merge",
    "GeneralizedDiceLoss", "generalized_dice_loss",
    "empty_cache", "flip4", "flip4_argmax", "flip4_merge", "focal_loss", "random_flip", "scores",
]
