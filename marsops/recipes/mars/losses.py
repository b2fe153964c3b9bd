"""The training losses train.py's --loss can choose: one line each, name -> the marsops function
and its keyword arguments from the run's options and the recipe's class weights.

Every criterion is called as criterion(logits, target, confusion=metric). The focal loss counts
the confusion matrix in its own pass over the logits; every other loss leaves that to the metric
(one extra pass). The marsops function is looked up when the loss is chosen, so a loss this
build of marsops lacks is refused then, by name, and costs nothing otherwise.
"""
from typing import Callable, Dict, NamedTuple

import torch.nn.functional as F

import marsops


class Loss(NamedTuple):
    function: str  # the marsops function, or "cross_entropy" (PyTorch's)
    options: Callable  # (args, class weights) -> keyword arguments
    counts_confusion: bool = False  # takes confusion= and counts it in its own pass


def _smooth(args, default):
    return {"smooth": default if args.dice_smooth is None else args.dice_smooth}


def _region_weight(args, w):
    """The class weights of a region loss's weighted mean of per-class scores."""
    return w if args.region_weights == "recipe" else None


LOSSES: Dict[str, Loss] = {
    "focal": Loss("focal_loss", lambda a, w: dict(weight=w, gamma=a.gamma), counts_confusion=True),
    "ce": Loss("cross_entropy", lambda a, w: dict(weight=w)),
    "dice": Loss("dice_loss", lambda a, w: dict(weight=_region_weight(a, w), **_smooth(a, 1.0))),
    "jaccard": Loss("jaccard_loss", lambda a, w: dict(weight=_region_weight(a, w), **_smooth(a, 1.0))),
    "tversky": Loss("tversky_loss", lambda a, w: dict(alpha=a.tversky_alpha, beta=a.tversky_beta,
                                                      weight=_region_weight(a, w), **_smooth(a, 1.0))),
    "dice_focal": Loss("dice_focal_loss", lambda a, w: dict(weight=_region_weight(a, w), focal_weight=w, gamma=a.gamma,
                                                            **_smooth(a, 1.0))),
    "dice_ce": Loss("dice_ce_loss", lambda a, w: dict(weight=_region_weight(a, w), ce_weight=w, **_smooth(a, 1.0))),
    "generalized_dice": Loss("generalized_dice_loss", lambda a, w: dict(weight_type=a.gdl_weight_type,
                                                                        **_smooth(a, 1e-5))),
    "ohem_focal": Loss("ohem_focal_loss", lambda a, w: dict(weight=w, gamma=a.gamma, thresh=a.ohem_thresh,
                                                            min_kept=a.ohem_min_kept)),
    "lovasz": Loss("lovasz_softmax_loss", lambda a, w: dict(per_image=a.lovasz_per_image)),
}


def available(name: str) -> bool:
    """Whether this build of marsops has the loss's function."""
    function = LOSSES[name].function
    return function == "cross_entropy" or hasattr(marsops, function)


def build(args, weights) -> Callable:
    """criterion(logits, target, confusion=None) for args.loss, with the class weights `weights`."""
    loss = LOSSES[args.loss]
    if loss.function == "cross_entropy":
        fn, backend = F.cross_entropy, {}
    elif hasattr(marsops, loss.function):
        fn, backend = getattr(marsops, loss.function), {"backend": args.backend}
    else:
        raise ValueError(f"--loss {args.loss} needs marsops.{loss.function}, which this marsops "
                         f"({marsops.__version__}, {marsops.__file__}) does not have")
    kwargs = {**loss.options(args, weights), **backend}
    if loss.counts_confusion:
        def criterion(logits, target, confusion=None):
            return fn(logits, target, confusion=confusion, **kwargs)
    else:
        long_target = loss.function == "cross_entropy"  # F.cross_entropy takes int64 targets only

        def criterion(logits, target, confusion=None):
            if confusion is not None:
                confusion.update(logits.detach(), target)
            return fn(logits, target.long() if long_target else target, **kwargs)

    criterion.__name__ = criterion.__qualname__ = f"{args.loss}_criterion"
    return criterion
