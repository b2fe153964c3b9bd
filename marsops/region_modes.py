"""The region losses (Dice, Jaccard, Tversky, DiceFocal, DiceCE) outside the fused multiclass
mean: binary and multi-label masks (sigmoid), one-hot and soft labels, probabilities
(from_logits=False) and the reductions "sum" and "none" (per-class losses). The per-class sums
come from one differentiable op (marsops/dense_region.py, fused kernels on every backend); the
loss is formed from them with tensor ops (reference.reduce_region_losses), as the reference does."""
import torch
import torch.nn.functional as F

from . import _checks, backend as _backend, dense_region, reference


def check_options(op, num_classes, logits, target, weight, focal_weight, focal_name, smooth, gamma, region_lambda,
                  focal_lambda, label_smoothing, per_image, ignore_index, lambda_names):
    """Checks the class weights ((C,) floats, finite and >= 0) and every scalar option (float ones
    finite and >= 0, label_smoothing at most 1), one clear error naming any bad one; returns the
    scalars as (smooth, gamma, region_lambda, focal_lambda, label_smoothing, per_image, ignore_index)."""
    for name, w in (("weight", weight), (focal_name, focal_weight)):
        if w is not None:
            _checks.check_tensor(name, w, op)
            _checks.check_float(name, w, op)
            if w.shape != (num_classes,):
                raise ValueError(f"marsops.{op}: {name} must have shape ({num_classes},), got {tuple(w.shape)}")
    _checks.check_same_device(op, logits=logits, target=target, weight=weight, focal_weight=focal_weight)
    smooth = _checks.as_nonnegative("smooth", smooth, op)
    gamma = _checks.as_nonnegative("gamma", gamma, op)
    region_lambda = _checks.as_nonnegative(lambda_names[0], region_lambda, op)
    focal_lambda = _checks.as_nonnegative(lambda_names[1], focal_lambda, op)
    label_smoothing = _checks.as_float("label_smoothing", label_smoothing, op)
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"marsops.{op}: label_smoothing must be in [0, 1], got {label_smoothing}")
    per_image = _checks.as_bool("per_image", per_image, op)
    ignore_index = _checks.as_int64("ignore_index", ignore_index, op)
    if weight is not None:
        # A weighted mean needs weights >= 0 (a device-side check on GPUs and in compiled graphs).
        _checks.assert_ok(((weight >= 0) & (weight < float("inf"))).all(), op,
                          "weight must be finite and >= 0 (the class weights of a weighted mean)")
    return smooth, gamma, region_lambda, focal_lambda, label_smoothing, per_image, ignore_index


def _inputs(op, logits, target, mode):
    """(x, target): x as ``(N, C, *)``, the target dense ``(N, C, *)`` or a class map ``(N, *)``,
    after the shape and dtype checks of the mode."""
    _checks.check_tensor("logits", logits, op)
    _checks.check_float("logits", logits, op)
    if target.is_complex() or not (target.is_floating_point() or target.dtype == torch.bool
                                   or target.dtype in _checks.INTEGER_DTYPES
                                   or target.dtype in (torch.uint16, torch.uint32, torch.uint64)):
        raise TypeError(f"marsops.{op}: target must be a float, integer or bool tensor, got {target.dtype}")
    if mode == "binary":
        if logits.dim() < 1:
            raise ValueError(f"marsops.{op}: binary logits must be (N, 1, *) or (N, *), got a scalar")
        x = logits if logits.dim() >= 2 and logits.shape[1] == 1 else logits.unsqueeze(1)
        if target.shape == logits.shape:
            return x, target if x is logits else target.unsqueeze(1)
        if x is logits and target.shape == logits.shape[:1] + logits.shape[2:]:
            return x, target.unsqueeze(1)
        raise ValueError(f"marsops.{op}: in binary mode the target must have the logits' shape "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}")
    if logits.dim() < 2 or logits.shape[1] < 1:
        raise ValueError(f"marsops.{op}: logits must be (N, C, *spatial) with C >= 1, got shape {tuple(logits.shape)}")
    if target.shape == logits.shape:
        return logits, target
    class_map = logits.shape[:1] + logits.shape[2:]
    if mode == "multiclass" and target.shape == class_map:
        if target.is_floating_point() or target.dtype == torch.bool:
            raise TypeError(f"marsops.{op}: a class map target (N, *) must be integer, got {target.dtype}; soft "
                            "labels are (N, C, *)")
        return logits, target
    expected = f"{tuple(logits.shape)}" + (f" or a class map {tuple(class_map)}" if mode == "multiclass" else "")
    raise ValueError(f"marsops.{op}: target shape {tuple(target.shape)} does not match the logits shape; expected "
                     f"{expected}")


def region_loss(op, logits, target, coeffs, weight, classes, smooth, ignore_index, per_image, backend, mode,
                from_logits, reduction, region_lambda, focal_lambda, gamma, focal_weight, focal_reduction,
                label_smoothing, focal_name, lambda_names):
    """A region loss (+ its focal / cross-entropy term) in any mode and reduction (see
    marsops.dice_loss); the arguments are dice_loss's and _region_loss's."""
    x, t = _inputs(op, logits, target, mode)
    num_classes = x.shape[1]
    smooth, gamma, region_lambda, focal_lambda, label_smoothing, per_image, ignore_index = check_options(
        op, num_classes, logits, target, weight, focal_weight, focal_name, smooth, gamma, region_lambda,
        focal_lambda, label_smoothing, per_image, ignore_index, lambda_names)
    chosen_classes = None if classes is None else _checks.as_classes(classes, num_classes, op)
    sums = bool(focal_lambda) and op in ("dice_focal_loss", "dice_ce_loss")
    if sums:  # refused before any kernel runs
        if not from_logits:
            raise ValueError(f"marsops.{op}: the {lambda_names[1][7:]} term needs logits; from_logits=False is "
                             "supported by dice_loss, jaccard_loss and tversky_loss")
        if reduction != "mean":
            raise ValueError(f"marsops.{op}: reduction must be 'mean' (the two terms have different shapes); "
                             f"got {reduction!r}")
        if mode != "multiclass" and label_smoothing:
            raise ValueError(f"marsops.{op}: label_smoothing applies to multiclass mode; smooth a binary target "
                             "yourself (soft labels are accepted)")
        if mode == "multiclass" and op == "dice_focal_loss":
            raise ValueError(f"marsops.{op}: in multiclass mode the focal term takes a class map (N, *); for "
                             "one-hot or soft labels use dice_ce_loss")
    activation = (dense_region.SOFTMAX if mode == "multiclass" else dense_region.SIGMOID) if from_logits \
        else dense_region.IDENTITY
    integer_target = not t.is_floating_point()
    chosen = _backend.resolve("dense_region_stats", x, backend)
    I, S, T = dense_region.dense_region_sums(x, t, activation, ignore_index if integer_target else None, per_image,
                                             chosen, op)
    class_weight = None if weight is None else weight.to(torch.float64)
    loss = region_lambda * reference.reduce_region_losses(I, S, T, coeffs, smooth, class_weight, chosen_classes,
                                                          reduction)
    if sums:
        loss = loss + focal_lambda * _second_term(op, logits, x, t, mode, gamma, focal_weight, integer_target,
                                                  ignore_index, label_smoothing, backend).to(loss.dtype)
    return loss.to(logits.dtype)


def _second_term(op, logits, x, t, mode, gamma, focal_weight, integer_target, ignore_index, label_smoothing,
                 backend):
    """DiceFocal's focal / DiceCE's cross-entropy term (mean) outside the fused multiclass path."""
    from .sigmoid_focal import sigmoid_focal_loss

    if mode != "multiclass":  # gamma 0, no alpha: binary cross-entropy; focal_weight as pos_weight
        # The fused kernels differentiate the logits only: a soft target that requires grad gets
        # this term from the reference (plain autograd).
        chosen = "reference" if t.requires_grad and torch.is_grad_enabled() else backend
        return sigmoid_focal_loss(x, t, alpha=None, gamma=gamma, pos_weight=focal_weight,
                                  ignore_index=ignore_index if integer_target else None, backend=chosen)
    if t.dim() == logits.dim() - 1:  # a class map with reduction "sum" / "none": refused above
        raise AssertionError("unreachable")
    if integer_target and t.dtype != torch.bool:
        raise ValueError(f"marsops.{op}: the cross-entropy term takes one-hot or soft labels as float or bool; got "
                         f"{t.dtype} (pass a class map (N, *) to ignore pixels)")
    # F.cross_entropy's mean with probability targets is over the pixels (not the weights); summed and
    # divided here so that an empty batch costs 0, as everywhere in marsops, not 0 / 0.
    pixels = logits.numel() // max(logits.shape[1], 1)
    return F.cross_entropy(logits, t.to(logits.dtype), weight=focal_weight, label_smoothing=label_smoothing,
                           reduction="sum") / max(pixels, 1)
