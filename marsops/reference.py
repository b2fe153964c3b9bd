"""Pure-PyTorch reference versions of every marsops op: readable, any device, differentiable
by autograd. They are the oracle of the tests and the fallback when nothing is compiled."""
import torch

REDUCTIONS = ("none", "sum", "mean", "weighted_mean")


def check_labels(target: torch.Tensor, num_classes: int, ignore_index, op: str) -> torch.Tensor:
    """Mask of the non-ignored labels; raises if one lies outside [0, num_classes).

    Labels are compared with ignore_index as int64 values: a uint8 label 156 is not
    ignore_index -100 (torch would wrap -100 into the target's dtype first)."""
    target = target.long()
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bad.any():
        raise ValueError(f"marsops.{op}: target contains label {int(target[bad][0])}, outside [0, {num_classes}) "
                         f"and not ignore_index ({ignore_index})")
    return valid


def focal_loss(logits, target, weight=None, gamma=2.0, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Softmax focal loss: -w[y] * (1 - p_y)^gamma * log p_y per element (see marsops.focal_loss);
    with label smoothing eps, (1 - eps) of that + eps / C * sum_c of -w[c] (1 - p_c)^gamma log p_c."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    valid = check_labels(target, x.shape[1], ignore_index, "focal_loss")
    t = torch.where(valid, target.long(), 0)
    # An ignored element never contributes, whatever its logits hold (NaN and inf included): its
    # logits are replaced before the softmax, so neither its loss nor its gradient sees them.
    x = torch.where(valid.unsqueeze(1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    all_logp = torch.log_softmax(x, dim=1)
    w_all = torch.ones(x.shape[1], dtype=x.dtype, device=x.device) if weight is None else weight.to(x.dtype)

    def focal(logp, w):  # 1 - p without cancellation; clamped so the gradient of q**gamma stays finite at p == 1
        q = (-torch.expm1(logp)).clamp_min(torch.finfo(x.dtype).tiny)
        return -w * q**gamma * logp

    w = torch.where(valid, w_all[t], torch.zeros((), dtype=x.dtype, device=x.device))
    loss = focal(all_logp.gather(1, t.unsqueeze(1)).squeeze(1), w)
    if label_smoothing:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        every_class = focal(all_logp, w_all.view(shape)).sum(1)
        loss = (1 - label_smoothing) * loss + label_smoothing / x.shape[1] * every_class
        loss = torch.where(valid, loss, torch.zeros((), dtype=x.dtype, device=x.device))
    if reduction == "none":
        return loss.to(logits.dtype)
    total = loss.sum()
    if reduction == "sum":
        return total.to(logits.dtype)
    denom = valid.sum().to(x.dtype) if reduction == "mean" else w.sum()
    # Nothing counted (every pixel ignored, or only zero-weight classes): the loss is 0, not NaN.
    return torch.where(denom > 0, total / denom.clamp_min(torch.finfo(x.dtype).tiny), total * 0).to(logits.dtype)


def sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0, pos_weight=None, ignore_index=None, reduction="mean"):
    """Sigmoid focal loss per element (see marsops.sigmoid_focal_loss): with p = sigmoid(x),
    ce = -(pos_weight t log p + (1 - t) log(1 - p)), p_t = p t + (1 - p)(1 - t),
    loss = alpha_t (1 - p_t)^gamma ce with alpha_t = alpha t + (1 - alpha)(1 - t) (1 when alpha is
    None); the mean runs over the non-ignored elements."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if target.is_floating_point():
        t = target.to(x.dtype)
        bad = ~((t >= 0) & (t <= 1))
        valid = torch.ones_like(t, dtype=torch.bool)
        if bad.any():
            raise ValueError(f"marsops.sigmoid_focal_loss: target contains a value outside [0, 1] (float targets are "
                             f"soft labels): {float(t[bad][0])}")
    else:
        labels = target.long()
        valid = torch.ones_like(labels, dtype=torch.bool) if ignore_index is None else labels != ignore_index
        bad = valid & (labels != 0) & (labels != 1)
        if bad.any():
            raise ValueError(f"marsops.sigmoid_focal_loss: target contains label {int(labels[bad][0])}, outside "
                             f"{{0, 1}} and not ignore_index ({ignore_index})")
        t = torch.where(valid, labels, 0).to(x.dtype)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    x = torch.where(valid, x, zero)  # ignored elements' logits (NaN, inf) reach neither loss nor gradient
    pw = 1.0 if pos_weight is None else pos_weight.to(x.dtype).view((-1,) + (1,) * (x.dim() - 2))
    ce = pw * t * torch.nn.functional.softplus(-x) + (1 - t) * torch.nn.functional.softplus(x)
    p = torch.sigmoid(x)
    q = t * torch.sigmoid(-x) + (1 - t) * p  # 1 - p_t without cancellation
    loss = ce if gamma == 0 else q.clamp_min(torch.finfo(x.dtype).tiny) ** gamma * ce
    if alpha is not None:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    loss = torch.where(valid, loss, zero)
    if reduction == "none":
        return loss.to(logits.dtype)
    if reduction == "sum":
        return loss.sum().to(logits.dtype)
    count = valid.sum().to(x.dtype)
    return torch.where(count > 0, loss.sum() / count.clamp_min(1), zero).to(logits.dtype)


def region_scores(I, S, T, coeffs, smooth):
    """Per-class scores (a I + smooth) / (b I + alpha S + beta T + smooth) from the sums of the
    intersection I, prediction mass S and target count T; 1 where the denominator is 0 (a class
    absent from prediction and target, with smooth = 0)."""
    a, b, alpha, beta = coeffs
    num, den = a * I + smooth, b * I + alpha * S + beta * T + smooth
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.ones_like(den))


def class_shares(w):
    """w / sum(w): the class weights of a weighted mean; all 0 when they sum to 0 (nothing scored)."""
    total = w.sum()
    return w / torch.where(total != 0, total, torch.ones_like(total))


def region_loss(logits, target, class_weight, coeffs, smooth=1.0, per_image=False, ignore_index=-100,
                region_lambda=1.0, focal_lambda=0.0, gamma=0.0, focal_weight=None, focal_reduction="mean",
                label_smoothing=0.0):
    """region_lambda * (1 - the class_weight-weighted mean of the per-class region scores) (the mean
    over images of that when per_image), + focal_lambda * focal_loss(...). The sums run over the
    non-ignored pixels of the batch (of each image when per_image), from the softmax of the logits."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    C = x.shape[1]
    valid = check_labels(target, C, ignore_index, "region_loss")
    t = torch.where(valid, target.long(), 0)
    x = torch.where(valid.unsqueeze(1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    keep = valid.unsqueeze(1).to(x.dtype)
    p = torch.softmax(x, dim=1) * keep
    onehot = torch.nn.functional.one_hot(t, C).movedim(-1, 1).to(x.dtype) * keep
    dims = tuple(d for d in range(x.dim()) if d != 1 and (d != 0 or not per_image))
    # (C,) or (N, C); with no axis to sum (per-image sums of (N, C) logits) nothing is summed:
    # torch's sum(()) would sum over every axis instead.
    I, S, T = ((v.sum(dims) if dims else v) for v in (p * onehot, p, onehot))
    w = class_weight.to(I.dtype)
    per_group = ((1 - region_scores(I, S, T, coeffs, smooth)) * class_shares(w)).sum(-1)
    groups = per_group.numel()  # 0 for an empty batch per image: nothing scored, 0
    loss = region_lambda * per_group.sum() / max(groups, 1)
    if focal_lambda:  # from the fp32 (fp64) logits: one rounding of the sum at the end
        loss = loss + focal_lambda * focal_loss(logits.to(x.dtype), target, focal_weight, gamma, ignore_index,
                                                focal_reduction,
                                                label_smoothing).to(loss.dtype)
    return loss.to(logits.dtype)


def confusion_matrix(input, target, num_classes, ignore_index=None):
    """int64 (C, C) counts, rows = true class, columns = predicted (argmax over dim 1 of logits)."""
    pred = input.argmax(1) if input.is_floating_point() else input
    valid = check_labels(target, num_classes, ignore_index, "confusion_matrix")
    pred, t = pred[valid].long(), target[valid].long()
    bad = (pred < 0) | (pred >= num_classes)
    if bad.any():
        raise ValueError(f"marsops.confusion_matrix: predictions contain label {int(pred[bad][0])}, "
                         f"outside [0, {num_classes})")
    return torch.bincount(t * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)


def apply_view(x, code):
    """x (..., [D,] H, W) under view `code` (csrc/views.h): transposed (bit 3), then its W (bit 0), H
    (bit 1) and D (bit 2) axes reversed."""
    if code & 8:
        x = x.transpose(-2, -1)
    dims = [d for d, bit in ((-3, 4), (-2, 2), (-1, 1)) if code & bit]
    if not dims:
        return x
    # Some torch builds have no flip for uint16/32/64; a flip only moves bits, so flip the signed view.
    signed = _SIGNED_TWIN.get(x.dtype)
    return x.view(signed).flip(dims).view(x.dtype) if signed is not None else x.flip(dims)


_SIGNED_TWIN = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


def inverse_view(code):
    """The view that undoes `code`: flips undo themselves; under a transpose H and W flips swap."""
    return code if not code & 8 else (code & 12) | ((code & 1) << 1) | ((code & 2) >> 1)


def flip_views(x, views, volume=False):
    """(N, ...) -> (K*N, ...): block k holds every sample under views[k]."""
    return torch.cat([apply_view(x, code) for code in views])


def flip_views_sum(y, views, volume=False, scale=1.0):
    """The adjoint of flip_views: scale * the sum of the K blocks of y, each mapped back."""
    blocks = y.to(torch.promote_types(y.dtype, torch.float32)).chunk(len(views))
    total = apply_view(blocks[0], inverse_view(views[0]))
    for block, code in zip(blocks[1:], views[1:]):
        total = total + apply_view(block, inverse_view(code))
    return (total * scale).to(y.dtype)


def flip_by_flags(x, flags, volume=False):
    """Per-sample views: flags (N,) uint8 view codes (bits a sample cannot use are ignored)."""
    square = x.shape[-1] == x.shape[-2]
    allowed = 1 | 2 | (4 if volume else 0) | (8 if square else 0)
    codes = (flags.to(torch.int64) & allowed).view(-1, *([1] * (x.dim() - 1)))
    out = x.clone()
    for code in range(1, 16):  # every possible view, selected per sample on the device (no host read)
        if code & allowed == code:
            out = torch.where(codes == code, apply_view(x, code), out)
    return out


def views_argmax(outputs, target, ignore_index, softmax, want_pred, views, volume=False):
    """Test-time augmentation evaluated: argmax over classes of the K views of a flip_views batch,
    each mapped back and averaged (their softmax, or the logits), computed in fp32 as the kernels
    do. Returns (pred (N, [D,] H, W) int64 or empty, int64 (C, C) counts against target or empty)."""
    x = outputs.float()
    merged = flip_views_sum(x.softmax(1) if softmax else x, views, volume)
    pred = merged.argmax(1)
    num_classes = outputs.shape[1]
    empty = torch.empty(0, dtype=torch.int64, device=outputs.device)
    counts = empty if target is None else confusion_matrix(pred, target, num_classes, ignore_index)
    return (pred if want_pred else empty), counts
