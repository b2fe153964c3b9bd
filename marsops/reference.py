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


def focal_loss(logits, target, weight=None, gamma=2.0, ignore_index=-100, reduction="mean"):
    """Softmax focal loss: -w[y] * (1 - p_y)^gamma * log p_y per element (see marsops.focal_loss)."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    valid = check_labels(target, x.shape[1], ignore_index, "focal_loss")
    t = torch.where(valid, target.long(), 0)
    # An ignored element never contributes, whatever its logits hold (NaN and inf included): its
    # logits are replaced before the softmax, so neither its loss nor its gradient sees them.
    x = torch.where(valid.unsqueeze(1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    logp = torch.log_softmax(x, dim=1).gather(1, t.unsqueeze(1)).squeeze(1)
    # 1 - p without cancellation; clamped so the gradient of q**gamma stays finite at p == 1.
    q = (-torch.expm1(logp)).clamp_min(torch.finfo(x.dtype).tiny)
    w = torch.ones_like(logp) if weight is None else weight.to(x.dtype)[t]
    w = torch.where(valid, w, torch.zeros_like(w))
    loss = -w * q**gamma * logp
    if reduction == "none":
        return loss.to(logits.dtype)
    total = loss.sum()
    if reduction == "sum":
        return total.to(logits.dtype)
    denom = valid.sum().to(x.dtype) if reduction == "mean" else w.sum()
    # Nothing counted (every pixel ignored, or only zero-weight classes): the loss is 0, not NaN.
    return torch.where(denom > 0, total / denom.clamp_min(torch.finfo(x.dtype).tiny), total * 0).to(logits.dtype)


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


def flip4(x):
    """(N, *, H, W) -> (4N, *, H, W): [as is; left-right; up-down; both], each a block of N."""
    return torch.cat([x, x.flip(-1), x.flip(-2), x.flip(-2, -1)])


def flip4_sum(y, scale):
    """The adjoint of flip4: scale * sum of the four blocks of y, each flipped back."""
    a, b, c, d = y.to(torch.promote_types(y.dtype, torch.float32)).chunk(4)
    return ((a + b.flip(-1) + c.flip(-2) + d.flip(-2, -1)) * scale).to(y.dtype)


def flip_by_flags(x, flags):
    """Per-sample flips: flags (N,) uint8, bit 0 = left-right, bit 1 = up-down."""
    lr = (flags & 1).bool().view(-1, *([1] * (x.dim() - 1)))
    ud = (flags & 2).bool().view(-1, *([1] * (x.dim() - 1)))
    x = torch.where(lr, x.flip(-1), x)
    return torch.where(ud, x.flip(-2), x)


def flip4_argmax(outputs, target, ignore_index, softmax, want_pred):
    """Flip TTA evaluated: argmax over classes of the four views of a flip4 batch, each flipped back
    and averaged (their softmax, or the logits), computed in fp32 as the kernels do. Returns
    (pred (N, *, H, W) int64 or empty, int64 (C, C) counts against target or empty)."""
    x = outputs.float()
    merged = flip4_sum(x.softmax(1) if softmax else x, 1.0)
    pred = merged.argmax(1)
    num_classes = outputs.shape[1]
    empty = torch.empty(0, dtype=torch.int64, device=outputs.device)
    counts = empty if target is None else confusion_matrix(pred, target, num_classes, ignore_index)
    return (pred if want_pred else empty), counts
