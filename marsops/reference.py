"""Pure-PyTorch reference versions of every marsops op: readable, any device, differentiable
by autograd. They are the oracle of the tests and the fallback when nothing is compiled."""
import math

import torch

from . import _checks

REDUCTIONS = ("none", "sum", "mean", "weighted_mean")


def refuse(bad: torch.Tensor, message: str, values=None, name="label") -> None:
    """Raises ValueError(message, naming the first of `values` where `bad` is set) if any of `bad`
    is set. Under torch.compile, where a branch on a tensor's values cannot be traced, it is a
    torch._assert_async check with the message instead (a RuntimeError when the compiled code
    runs); under torch.func.vmap it checks every sample at once."""
    if torch.compiler.is_compiling():
        torch._assert_async(~bad.any(), message)
        return
    if not _checks.unbatched(bad).any():
        return
    found = ""
    if values is not None:  # both with the vmap batching of either (when vmapped)
        shown = _checks.unbatched(torch.where(bad, values, torch.zeros_like(values)))
        where = _checks.unbatched(bad & torch.ones_like(values, dtype=torch.bool))
        found = f" (found {name + ' ' if name else ''}{shown[where][0].item()})"
    raise ValueError(message + found)


def check_labels(target: torch.Tensor, num_classes: int, ignore_index, op: str) -> torch.Tensor:
    """Mask of the non-ignored labels; raises if one lies outside [0, num_classes).

    Labels are compared with ignore_index as int64 values: a uint8 label 156 is not
    ignore_index -100 (torch would wrap -100 into the target's dtype first)."""
    target = target.long()
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    refuse(bad, f"marsops.{op}: target contains a label outside [0, {num_classes}) that is not ignore_index "
                f"({ignore_index})", target)
    return valid


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)) to the dtype's accuracy everywhere (F.softplus returns x itself past its
    threshold of 20, off by exp(-x), about 2e-9 at 20: more than fp64 tests allow), with autograd's
    derivative sigmoid(x) everywhere, x = 0 included (abs and clamp have none there), and no
    exponential of a positive number."""
    positive = x > 0
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(positive, x, zero) + torch.log1p(torch.exp(torch.where(positive, -x, x)))


def focal_loss(logits, target, weight=None, gamma=2.0, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Softmax focal loss: -w[y] * (1 - p_y)^gamma * log p_y per element (see marsops.focal_loss);
    with label smoothing eps, (1 - eps) of that + eps / C * sum_c of -w[c] (1 - p_c)^gamma log p_c.
    Sums run in float64."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    valid = check_labels(target, x.shape[1], ignore_index, "focal_loss")
    t = torch.where(valid, target.long(), 0)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    # An ignored element never contributes, whatever its logits hold (NaN and inf included): its
    # logits are replaced before the softmax, so neither its loss nor its gradient sees them.
    x = torch.where(valid.unsqueeze(1), x, zero)
    all_logp = torch.log_softmax(x, dim=1)
    # -log p = (m - x) + log s, m the largest logit: for the focal terms of logits so far apart that
    # m - x overflows (where log_softmax says -inf).
    m = x.detach().amax(1, keepdim=True)
    log_s = torch.log(torch.exp(x - m).sum(1, keepdim=True))
    w_all = torch.ones(x.shape[1], dtype=x.dtype, device=x.device) if weight is None else weight.to(x.dtype)

    def focal(logp, xc, m, log_s, w):
        # 1 - p without cancellation; clamped so the gradient of q**gamma stays finite at p == 1
        q = (-torch.expm1(logp)).clamp_min(torch.finfo(x.dtype).tiny)
        # Finite logits more than the dtype's largest value apart (m > 0 > x): w q^gamma (-log p) as
        # w q^gamma m - w q^gamma x + w q^gamma log s, infinite only where the loss itself leaves
        # the dtype's range and 0 for a zero weight (not 0 * inf).
        over = torch.isneginf(logp) & torch.isfinite(xc)
        # Where p underflows to 0 (always where log p is -inf), dq / dlog p = -p is exactly 0: q is
        # taken as a constant there, whose factor -log p (up to inf) would give 0 * inf.
        a = w * torch.where(torch.exp(logp) == 0, q.detach(), q) ** gamma
        direct = -a * torch.where(over, zero, logp)
        split = a * torch.where(over, m, zero) - a * torch.where(over, xc, zero) + a * torch.where(over, log_s, zero)
        return torch.where(over, split, direct)

    w = torch.where(valid, w_all[t], zero)
    label = t.unsqueeze(1)
    loss = focal(all_logp.gather(1, label), x.gather(1, label), m, log_s, w.unsqueeze(1)).squeeze(1)
    if label_smoothing:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        every_class = focal(all_logp, x, m, log_s, w_all.view(shape)).sum(1)
        loss = (1 - label_smoothing) * loss + label_smoothing / x.shape[1] * every_class
        loss = torch.where(valid, loss, zero)
    if reduction == "none":
        return loss.to(logits.dtype)
    total = loss.sum(dtype=torch.float64)  # finite wherever the sum is, whatever the partial sums
    if reduction == "sum":
        return total.to(logits.dtype)
    denom = valid.sum().double() if reduction == "mean" else w.sum(dtype=torch.float64)
    # Nothing counted (every pixel ignored, or weights summing to 0): the loss is 0, not NaN. Any other
    # denominator divides, as in F.cross_entropy: negative weight sums, and NaN weights (a NaN loss).
    counted = denom != 0
    return torch.where(counted, total / torch.where(counted, denom, torch.ones_like(denom)), total * 0).to(logits.dtype)


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
        refuse(bad, "marsops.sigmoid_focal_loss: target contains a value outside [0, 1] (float targets are soft "
                    "labels)", t, name="")
    else:
        labels = target.long()
        valid = torch.ones_like(labels, dtype=torch.bool) if ignore_index is None else labels != ignore_index
        bad = valid & (labels != 0) & (labels != 1)
        refuse(bad, f"marsops.sigmoid_focal_loss: target contains a label outside {{0, 1}} that is not ignore_index "
                    f"({ignore_index})", labels)
        t = torch.where(valid, labels, 0).to(x.dtype)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    x = torch.where(valid, x, zero)  # ignored elements' logits (NaN, inf) reach neither loss nor gradient
    if pos_weight is None:
        pw = 1.0
    elif x.dim() < 2:  # no class dimension: one value
        pw = pos_weight.to(x.dtype).reshape(())
    else:
        pw = pos_weight.to(x.dtype).view((-1,) + (1,) * (x.dim() - 2))
    p = torch.sigmoid(x)
    q = t * torch.sigmoid(-x) + (1 - t) * p  # 1 - p_t without cancellation
    # Where the sigmoid saturates (p (1 - p) is 0 in the dtype), so does q: its derivative is 0 there,
    # and it gets none (0 times a loss factor near the dtype's limit could be 0 * inf).
    q = torch.where(p * (1 - p) == 0, q.detach(), q)
    k = 1.0 if gamma == 0 else q.clamp_min(torch.finfo(x.dtype).tiny) ** gamma
    if alpha is not None:
        k = (alpha * t + (1 - alpha) * (1 - t)) * k
    # k (pw t softplus(-x) + (1 - t) softplus(x)), the factors multiplied first: a product leaves the
    # dtype's range only where the loss does, and a zero factor gives 0, never 0 * inf.
    loss = (k * pw * t) * softplus(-x) + (k * (1 - t)) * softplus(x)
    loss = torch.where(valid, loss, zero)
    if reduction == "none":
        return loss.to(logits.dtype)
    total = loss.sum(dtype=torch.float64)  # finite wherever the sum is, whatever the partial sums
    if reduction == "sum":
        return total.to(logits.dtype)
    count = valid.sum().double()
    return torch.where(count > 0, total / count.clamp_min(1), total * 0).to(logits.dtype)


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


def region_sums(logits, target, ignore_index=-100, per_image=False, op="region_loss"):
    """Float64 per-class sums over the non-ignored pixels of the batch ((C,) each; (N, C) per image):
    I = sum p [y = c], S = sum p, T = sum [y = c], with p = softmax(logits) (fp32 for fp16 / bf16)."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    C = x.shape[1]
    valid = check_labels(target, C, ignore_index, op)
    t = torch.where(valid, target.long(), 0)
    x = torch.where(valid.unsqueeze(1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    keep = valid.unsqueeze(1).double()
    p = torch.softmax(x, dim=1).double() * keep
    classes = torch.arange(C, device=t.device).view((1, C) + (1,) * (t.dim() - 1))
    onehot = (t.unsqueeze(1) == classes).double() * keep  # one_hot's range check would stop torch.func.vmap
    dims = tuple(d for d in range(x.dim()) if d != 1 and (d != 0 or not per_image))
    # (C,) or (N, C); with no axis to sum (per-image sums of (N, C) logits) nothing is summed:
    # torch's sum(()) would sum over every axis instead.
    return tuple((v.sum(dims) if dims else v) for v in (p * onehot, p, onehot))


IDENTITY, SIGMOID, SOFTMAX = 0, 1, 2  # how dense_region_sums turns x into q


def dense_targets(target, like, ignore_index, op):
    """(t, v): float64 targets and the validity mask, of like's shape ``(N, C, *)``, from a class map
    ``(N, *)`` (a pixel equal to ignore_index: all its classes invalid), an integer / bool mask (0 / 1,
    or ignore_index: that element invalid) or float soft labels in [0, 1]."""
    if target.dim() == like.dim() - 1:  # a class map
        valid = check_labels(target, like.shape[1], ignore_index, op)
        classes = torch.arange(like.shape[1], device=target.device).view((1, -1) + (1,) * (target.dim() - 1))
        v = valid.unsqueeze(1).expand(like.shape)
        return ((target.long().unsqueeze(1) == classes) & v).double(), v
    if target.is_floating_point():
        refuse(~((target >= 0) & (target <= 1)), f"marsops.{op}: target contains values outside [0, 1] (soft labels "
                                                 "are probabilities)", target, name="")
        return target.double(), torch.ones_like(target, dtype=torch.bool)
    k = target.long()
    v = torch.ones_like(k, dtype=torch.bool) if ignore_index is None else k != ignore_index
    refuse(v & (k != 0) & (k != 1), f"marsops.{op}: target contains values outside {{0, 1}} that are not "
                                    f"ignore_index ({ignore_index})", k, name="")
    return (v & (k == 1)).double(), v


def dense_region_sums(x, target, activation, ignore_index=None, per_image=False, op="dice_loss"):
    """Float64 per-class sums ((C,) each, (N, C) per image) of q = activation(x) (IDENTITY: x holds
    probabilities, SIGMOID, SOFTMAX over dim 1; computed in fp32 for fp16 / bf16) against target t
    over the valid elements v (dense_targets): I = sum v q t, S = sum v q, T = sum v t."""
    t, v = dense_targets(target, x, ignore_index, op)
    xc = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    zero = torch.zeros((), dtype=xc.dtype, device=xc.device)
    if activation == SOFTMAX:  # a pixel with no valid element may hold anything: 0s, not its NaNs
        q = torch.softmax(torch.where(v.any(1, keepdim=True), xc, zero), dim=1)
    else:
        xv = torch.where(v, xc, zero)  # invalid elements may hold NaN or inf
        if activation == IDENTITY:
            refuse(~((xv >= 0) & (xv <= 1)), f"marsops.{op}: with from_logits=False the input holds probabilities, "
                                             "but it contains values outside [0, 1]", xv, name="")
        q = xv if activation == IDENTITY else torch.sigmoid(xv)
    q = torch.where(v, q.double(), torch.zeros((), dtype=torch.float64, device=q.device))
    dims = tuple(d for d in range(x.dim()) if d != 1 and (d != 0 or not per_image))
    return tuple((s.sum(dims) if dims else s) for s in (q * t, q, t))


def reduce_region_losses(I, S, T, coeffs, smooth, weight=None, classes=None, reduction="mean"):
    """The per-class losses 1 - score ((C,) or (N, C) from per-image sums) of the scored classes
    (classes: their indices, None: all), each times its weight (None: 1), as reduction asks:
    "none" those, "sum" their sum, "mean" the weighted mean over the classes (0 when the weights
    sum to 0), averaged over the images."""
    losses = 1 - region_scores(I, S, T, coeffs, smooth)
    w = torch.ones(losses.shape[-1], dtype=losses.dtype, device=losses.device) if weight is None else \
        weight.to(losses.dtype)
    if classes is not None:
        index = torch.tensor(list(classes), dtype=torch.long, device=losses.device)
        losses, w = losses.index_select(-1, index), w.index_select(0, index)
    if reduction == "none":
        return losses * w
    if reduction == "sum":
        return (losses * w).sum()
    per_group = (losses * class_shares(w)).sum(-1)
    return per_group.sum() / max(per_group.numel(), 1)


def region_loss(logits, target, class_weight, coeffs, smooth=1.0, per_image=False, ignore_index=-100,
                region_lambda=1.0, focal_lambda=0.0, gamma=0.0, focal_weight=None, focal_reduction="mean",
                label_smoothing=0.0):
    """region_lambda * (1 - the class_weight-weighted mean of the per-class region scores) (the mean
    over images of that when per_image), + focal_lambda * focal_loss(...). The sums run over the
    non-ignored pixels of the batch (of each image when per_image), from the softmax of the logits
    (computed in fp32 for fp16 / bf16), in float64 as the kernels sum: a tiny class mass, whose
    1 / mass overflows fp32, then cannot turn the gradient into inf * 0 = NaN."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    I, S, T = region_sums(logits, target, ignore_index, per_image)
    w = class_weight.to(I.dtype)
    per_group = ((1 - region_scores(I, S, T, coeffs, smooth)) * class_shares(w)).sum(-1)
    groups = per_group.numel()  # 0 for an empty batch per image: nothing scored, 0
    loss = region_lambda * per_group.sum() / max(groups, 1)
    if focal_lambda:  # from the fp32 (fp64) logits: one rounding of the sum at the end
        loss = loss + focal_lambda * focal_loss(logits.to(x.dtype), target, focal_weight, gamma, ignore_index,
                                                focal_reduction,
                                                label_smoothing).to(loss.dtype)
    return loss.to(logits.dtype)


def generalized_dice_weights(T, weight_type):
    """Sudre et al.'s class weights from the target counts T (constants: no gradient): 1 / T^2
    ("square"), 1 / T ("simple") or 1 ("uniform"); the infinite weight of a class absent from the
    target becomes the largest finite one (0 if none is finite), as MONAI does."""
    T = T.detach()
    w = {"square": lambda: 1 / (T * T), "simple": lambda: 1 / T, "uniform": lambda: torch.ones_like(T)}[weight_type]()
    finite = torch.isfinite(w)
    largest = torch.where(finite, w, torch.zeros_like(w)).amax() if w.numel() else w.new_zeros(())
    return torch.where(finite, w, largest)


def generalized_dice_loss(logits, target, smooth=1e-5, weight_type="square", ignore_index=-100):
    """1 - (2 sum_c w_c I_c + smooth) / (sum_c w_c (S_c + T_c) + smooth) over the batch's sums
    (see marsops.generalized_dice_loss); 0 when both are 0 (nothing counted, smooth 0)."""
    I, S, T = region_sums(logits, target, ignore_index, False, "generalized_dice_loss")
    w = generalized_dice_weights(T, weight_type)
    num, den = 2 * (w * I).sum() + smooth, (w * (S + T)).sum() + smooth
    ok = den != 0
    return torch.where(ok, 1 - num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den)).to(logits.dtype)


def confusion_matrix(input, target, num_classes, ignore_index=None):
    """int64 (C, C) counts, rows = true class, columns = predicted (argmax over dim 1 of logits)."""
    pred = (input.argmax(1) if input.is_floating_point() else input).long()
    valid = check_labels(target, num_classes, ignore_index, "confusion_matrix")
    bad = valid & ((pred < 0) | (pred >= num_classes))
    refuse(bad, f"marsops.confusion_matrix: predictions contain a label outside [0, {num_classes})",
           pred)
    # Uncounted pixels go to one extra bin: no data-dependent shapes, so torch.compile traces it.
    bins = torch.where(valid, target.long() * num_classes + pred, num_classes**2).flatten()
    counts = torch.zeros(num_classes**2 + 1, dtype=torch.int64, device=bins.device)
    counts = counts.index_add(0, bins, torch.ones_like(bins))  # not in place: torch.func.vmap runs it too
    return counts[:-1].view(num_classes, num_classes)


def apply_view(x, code):
    """x (..., [D,] H, W) under view `code` (csrc/views.h): transposed (bit 3), then its W (bit 0), H
    (bit 1) and D (bit 2) axes reversed."""
    if code & 8:
        x = x.transpose(-2, -1)
    dims = [d for d, bit in ((-3, 4), (-2, 2), (-1, 1)) if code & bit]
    if not dims:
        return x
    bits = _BIT_TWIN.get(x.dtype)
    return x.view(bits).flip(dims).view(x.dtype) if bits is not None else x.flip(dims)


# Dtypes some torch builds cannot flip or select (uint16/32/64 on CPU, float8): a flip only moves
# bits, so these are flipped as the signed integer of their size.
_BIT_TWIN = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}
_BIT_TWIN.update({getattr(torch, name): torch.int8 for name in
                  ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, name)})


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
    bits = _BIT_TWIN.get(x.dtype)
    if bits is not None:
        return flip_by_flags(x.view(bits), flags, volume).view(x.dtype)
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


def ohem_threshold(lp, valid, thresh, min_kept):
    """log tau = max(log thresh, s[k]) of online hard example mining, in log space, from a full sort
    (the rule as mmsegmentation's OHEMPixelSampler states it): s = the valid lp = log p_t ascending
    (NaN last), k = min(min_kept, n - 1); log thresh when no pixel is valid or s[k] is NaN. A 0-dim
    float64 tensor, from tensor operations only (torch.compile and vmap trace it)."""
    log_thresh = torch.tensor(math.log(thresh) if thresh > 0 else -math.inf, dtype=torch.float64, device=lp.device)
    flat_lp, flat_valid = lp.reshape(-1).double(), valid.reshape(-1)
    order = flat_lp.sort(stable=True).indices  # ascending, NaN last
    order = order.gather(0, (~flat_valid).gather(0, order).to(torch.uint8).sort(stable=True).indices)  # valid first
    s = flat_lp.gather(0, order)
    n = flat_valid.sum()
    k = torch.minimum(n - 1, torch.tensor(min_kept, device=lp.device)).clamp_min(0)
    s_k = s.gather(0, k.reshape(1)).reshape(()) if s.numel() else log_thresh
    return torch.where((n > 0) & (s_k > log_thresh), s_k, log_thresh)


def ohem_focal_loss(logits, target, gamma=0.5, thresh=0.7, min_kept=100_000, weight=None, ignore_index=-100):
    """The mean of the focal term -w[y] (1 - p_t)^gamma log p_t over the pixels online hard example
    mining keeps: log p_t < log tau (or NaN), log tau = ohem_threshold(..., min_kept * N); 0 if none.
    The selection in float64 log space (a p_t that underflows to 0 would tie pixels the rule tells
    apart); the kept set is a constant of the gradient."""
    valid = check_labels(target, logits.shape[1], ignore_index, "ohem_focal_loss")
    t = torch.where(valid, target.long(), 0)
    lp = torch.log_softmax(logits.detach().double(), dim=1).gather(1, t.unsqueeze(1)).squeeze(1)
    log_tau = ohem_threshold(lp, valid, thresh, min_kept * logits.shape[0])
    kept = valid & ~(lp >= log_tau)
    kept_target = torch.where(kept, t, torch.full_like(t, -1))
    loss = focal_loss(logits.double(), kept_target, None if weight is None else weight.double(), gamma, -1, "mean")
    return loss.to(logits.dtype)


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Berman et al.'s gradient of the Lovász extension of the Jaccard loss along the last dim, for
    foreground flags sorted by decreasing error: with gts = sum fg, jac_k = 1 - (gts - cumsum(fg)_k)
    / (gts + cumsum(1 - fg)_k), the result is jac with jac[1:] -= jac[:-1]."""
    gts = fg_sorted.sum(-1, keepdim=True)
    jac = 1 - (gts - fg_sorted.cumsum(-1)) / (gts + (1 - fg_sorted).cumsum(-1))
    return torch.cat([jac[..., :1], jac[..., 1:] - jac[..., :-1]], -1)


def lovasz_softmax_loss(logits, target, classes="present", per_image=False, ignore_index=-100):
    """Berman et al. 2018's Lovász-Softmax loss (see marsops.lovasz_softmax_loss), in float64.

    Per group (the batch, or each image with per_image) and class c, over the non-ignored pixels:
    fg = [y = c], ``e = |fg - p_c|`` sorted descending, loss_c = dot(e_sorted, lovasz_grad(fg_sorted)).
    The group's loss is the mean over the classes scored ("present": those in the group's target,
    "all", or a list), 0 when none is; the loss is the mean over the groups. Autograd's gradient
    is the Lovász subgradient of the sort order found (ties kept in pixel order: a stable sort)."""
    x = logits.double()
    N, C = x.shape[:2]
    valid = check_labels(target, C, ignore_index, "lovasz_softmax_loss")
    # An ignored pixel never contributes, whatever its logits hold: replaced before the softmax.
    x = torch.where(valid.unsqueeze(1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    P = x[0, 0].numel() if N else 0
    p = torch.softmax(x, 1).reshape(N, C, P)
    y = torch.where(valid, target.long(), -1).reshape(N, P)
    v = valid.reshape(N, P)
    if not per_image:  # one group: every pixel of the batch, image after image
        p, y, v = p.transpose(0, 1).reshape(1, C, N * P), y.reshape(1, N * P), v.reshape(1, N * P)
    fg = (y.unsqueeze(1) == torch.arange(C, device=y.device).view(1, C, 1)).double()  # (groups, C, pixels)
    # Ignored pixels get the error -1: sorted after every valid one, they change no valid pixel's
    # term; their own terms are dropped below.
    errors = torch.where(v.unsqueeze(1), (fg - p).abs(), -torch.ones((), dtype=p.dtype, device=p.device))
    errors_sorted, perm = torch.sort(errors, stable=True, dim=-1, descending=True)
    kept = v.unsqueeze(1).expand_as(errors).gather(-1, perm)
    terms = errors_sorted * lovasz_grad(fg.gather(-1, perm))
    losses = torch.where(kept, terms, torch.zeros_like(terms)).sum(-1)  # (groups, C)
    scored = torch.ones_like(losses, dtype=torch.bool)
    if not isinstance(classes, str):
        scored = scored & torch.isin(torch.arange(C, device=y.device), torch.tensor(list(classes), device=y.device))
    elif classes == "present":
        scored = scored & (fg.sum(-1) > 0)
    count = scored.sum(-1)
    group_loss = torch.where(scored, losses, torch.zeros_like(losses)).sum(-1) / count.clamp_min(1)
    return (group_loss.sum() / max(group_loss.shape[0], 1)).to(logits.dtype)
