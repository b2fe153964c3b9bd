"""One case, every backend: a drawn focal-loss + confusion-matrix case runs through the reference
and every kernel that can run here, over the corners where backends used to disagree: NaN / inf
logits at ignored and counted pixels, every integer target dtype with ignore_index inside and
outside its range, empty and size-1 dimensions, channels_last / sliced / expanded / class-minor
inputs, and the autograd modes (no_grad, retain_graph, create_graph, learnable weights).

Each backend must give the reference's result, or the one documented error for that mode."""
import pytest
import torch
from hypothesis import given, strategies as st

import marsops
from helpers import assert_close, backend_ids, computes_fp64, kernel_backends

FOCAL = [("reference", "cpu")] + kernel_backends("focal_loss_forward")
TARGET_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
MODES = ["plain", "no_grad", "retain_graph", "create_graph", "weight_requires_grad"]


def representable(value, dtype):
    info = torch.iinfo(dtype)
    return info.min <= value <= info.max


@st.composite
def case(draw):
    n = draw(st.sampled_from([0, 1, 2, 3]))
    c = draw(st.integers(1, 7))
    spatial = draw(st.sampled_from([(), (0,), (1,), (1, 1), (5,), (2, 5), (3, 4), (2, 1, 3)]))
    target_dtype = draw(st.sampled_from(TARGET_DTYPES))
    ignore_index = draw(st.sampled_from([-100, -1, 0, 127, 255, 300, c - 1]))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "sliced", "expanded", "class_minor"]))
    if layout == "channels_last" and len(spatial) != 2:
        layout = "contiguous"
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    shape = (n, c) + spatial
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * draw(st.sampled_from([1.0, 30.0]))
    target = torch.randint(0, c, (n,) + spatial, generator=g)
    ignored = torch.rand(target.shape, generator=g) < draw(st.sampled_from([0.0, 0.4, 1.0]))
    if representable(ignore_index, target_dtype):
        target[ignored] = ignore_index
    else:
        ignored[:] = False  # the label cannot be stored: nothing is ignored
    # Non-finite logits where the pixel is ignored (must change nothing) ...
    specials = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=torch.float64)
    where = ignored.unsqueeze(1).expand(shape) & (torch.rand(shape, generator=g) < 0.5)
    logits[where] = specials[torch.randint(0, 3, (int(where.sum()),), generator=g)]
    # ... and, sometimes, at one counted pixel (the loss must then be non-finite as torch's is).
    counted = (~ignored).nonzero()
    poisoned = None
    if draw(st.booleans()) and len(counted):
        poisoned = tuple(counted[draw(st.integers(0, len(counted) - 1))].tolist())
        cls = draw(st.integers(0, c - 1))
        logits[poisoned[:1] + (cls,) + poisoned[1:]] = specials[draw(st.integers(0, 2))]
    weight = torch.rand(c, generator=g, dtype=torch.float64) * 2 if draw(st.booleans()) else None
    return dict(logits=logits, target=target.to(target_dtype), weight=weight, ignore_index=ignore_index,
                gamma=draw(st.sampled_from([0.0, 0.5, 2.0, 1.3])), reduction=draw(st.sampled_from(
                    marsops.focal.REDUCTIONS)), layout=layout, dtype=dtype, poisoned=poisoned, mode=draw(
                    st.sampled_from(MODES)))


def leaf_and_view(logits, layout):
    """The tensor autograd differentiates, and the logits view of it that the op receives."""
    if layout == "channels_last":
        leaf = logits.contiguous(memory_format=torch.channels_last)
        return leaf, lambda t: t
    if layout == "sliced":  # every other element of a twice-as-wide tensor along the last dim
        leaf = torch.stack([logits, torch.full_like(logits, 7.0)], dim=-1).flatten(-2)
        return leaf, lambda t: t[..., ::2]
    if layout == "expanded":  # one sample broadcast over the batch (stride 0)
        leaf = logits[:1].clone()
        n = logits.shape[0]
        return leaf, lambda t: t.expand((n,) + tuple(t.shape[1:]))
    if layout == "class_minor":
        leaf = logits.movedim(1, -1).contiguous()
        return leaf, lambda t: t.movedim(-1, 1)
    return logits, lambda t: t


def evaluate(case, backend, device, compute_dtype):
    """('ok', loss, grad wrt the leaf or None, confusion) or ('error', exception)."""
    dtype = compute_dtype
    logits = case["logits"].to(case["dtype"]).to(dtype)  # the same rounded values on every backend
    target = case["target"]
    if case["layout"] == "expanded":
        target = target[:1].expand_as(target) if target.shape[0] else target
    leaf, view = leaf_and_view(logits, case["layout"])
    leaf = leaf.to(device).requires_grad_()
    target = target.to(device)
    weight = None if case["weight"] is None else case["weight"].to(device=device, dtype=torch.float32)
    mode = case["mode"]
    if mode == "weight_requires_grad" and weight is None:
        weight = torch.ones(logits.shape[1], device=device)
    if mode == "weight_requires_grad":
        weight.requires_grad_()
    args = (weight, case["gamma"], case["ignore_index"], case["reduction"])
    try:
        confusion = marsops.confusion_matrix(view(leaf).detach(), target, logits.shape[1], case["ignore_index"],
                                             backend=backend)
        if mode == "no_grad":
            with torch.no_grad():
                return "ok", marsops.focal_loss(view(leaf), target, *args, backend=backend), None, confusion
        loss = marsops.focal_loss(view(leaf), target, *args, backend=backend)
        upstream = torch.linspace(-1, 2, loss.numel(), dtype=torch.float64).to(case["dtype"]).to(
            device=device, dtype=loss.dtype).view(loss.shape)
        if mode == "retain_graph":
            (g1,) = torch.autograd.grad(loss, leaf, upstream, retain_graph=True)
            (g2,) = torch.autograd.grad(loss, leaf, upstream, retain_graph=True)
            leaf.grad = None
            loss.backward(upstream, retain_graph=True)
            loss.backward(upstream)
            # Never the same memory twice, and each call the same gradient.
            assert g1.numel() == 0 or g1.data_ptr() != g2.data_ptr()
            torch.testing.assert_close(g1, g2, equal_nan=True, rtol=0, atol=0)
            torch.testing.assert_close(leaf.grad, g1 + g2, equal_nan=True)
            return "ok", loss, g1, confusion
        if mode == "weight_requires_grad":
            grad, weight_grad = torch.autograd.grad(loss, (leaf, weight), upstream)
            assert weight_grad.shape == weight.shape
            return "ok", loss, grad, confusion
        (grad,) = torch.autograd.grad(loss, leaf, upstream, create_graph=mode == "create_graph")
        if mode == "create_graph" and grad.requires_grad:
            grad.sum().backward()  # the second-order pass must work or have been refused
        return "ok", loss, grad, confusion
    except (RuntimeError, ValueError, TypeError) as exc:
        return "error", exc


EXPECTED_REFUSALS = {  # (mode or dtype, fused backend) -> what the refusal says
    "create_graph": "double backward",
    "weight_requires_grad": "weight requires grad",
    torch.float64: "fp32",
}


@pytest.mark.parametrize("backend,device", FOCAL[1:], ids=backend_ids(FOCAL[1:]))
@given(case=case())
def test_every_backend_agrees_with_the_reference(backend, device, case):
    compute = torch.float64 if case["dtype"] == torch.float64 else torch.float32
    expected = evaluate(case, "reference", "cpu", compute)
    assert expected[0] == "ok", f"the reference failed: {expected[1]!r}"
    _, ref_loss, ref_grad, ref_confusion = expected
    got = evaluate(case, backend, device, case["dtype"])
    if got[0] == "error":
        allowed = [EXPECTED_REFUSALS.get(case["mode"])]
        if case["dtype"] == torch.float64 and not computes_fp64(backend):
            allowed.append(EXPECTED_REFUSALS[torch.float64])
        assert any(a and a in str(got[1]) for a in allowed), f"{backend} raised where the reference did not: {got[1]!r}"
        return
    _, loss, grad, confusion = got
    assert torch.equal(confusion.cpu(), ref_confusion)
    dtype = case["dtype"]
    assert loss.dtype == dtype and loss.shape == ref_loss.shape
    ref_loss = ref_loss.detach().to(dtype)
    loss = loss.detach().cpu()
    assert torch.equal(torch.isnan(loss), torch.isnan(ref_loss)), (loss, ref_loss)
    assert torch.equal(torch.isinf(loss), torch.isinf(ref_loss)), (loss, ref_loss)
    finite = torch.isfinite(ref_loss)
    assert_close(loss[finite], ref_loss[finite], dtype)
    if grad is None:
        return
    grad, ref_grad = grad.cpu(), ref_grad.to(dtype)
    assert grad.shape == ref_grad.shape and grad.dtype == dtype
    # A counted pixel with a non-finite logit has a non-finite loss, as in torch; its own gradient
    # is not specified. Every other gradient must agree, ignored pixels' (exactly 0) included.
    keep = torch.ones_like(grad, dtype=torch.bool)
    if case["poisoned"] is not None:
        keep = torch.isfinite(ref_grad) & torch.isfinite(grad)
        if case["reduction"] != "none":
            keep &= torch.isfinite(ref_loss).all()  # an inf/NaN loss scales no meaningful gradient
    assert_close(grad[keep], ref_grad[keep], dtype)
