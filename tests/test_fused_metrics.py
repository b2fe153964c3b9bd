"""One read of the logits: the focal loss with the confusion matrix counted in the same pass, and
flip test-time augmentation evaluated in one pass, on every backend against the separate ops,
the reference and oracles we did not write (numpy bincount, torch.argmax of flip4_merge)."""
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import marsops
from marsops import reference
from helpers import assert_close, assert_label_error, backend_ids, kernel_backends, numpy_confusion

FOCAL = [("reference", "cpu")] + kernel_backends("focal_loss_forward")
TTA = [("reference", "cpu")] + kernel_backends("views_argmax")


@st.composite
def loss_case(draw):
    n, c = draw(st.integers(0, 3)), draw(st.sampled_from([1, 2, 5, 19, 40, 70]))
    spatial = draw(st.sampled_from([(), (1,), (3, 5), (4, 9)]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = torch.randn((n, c) + spatial, generator=g)
    if draw(st.booleans()):
        logits = logits.round()  # ties: the first class wins
    target = torch.randint(0, c, (n,) + spatial, generator=g)
    target[torch.rand(target.shape, generator=g) < 0.3] = 255
    if draw(st.booleans()) and logits.numel():
        logits.view(-1)[0] = float("nan")  # NaN wins the argmax, as torch.argmax
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    return dict(logits=logits.to(dtype), target=target.to(draw(st.sampled_from([torch.int64, torch.uint8]))),
                reduction=draw(st.sampled_from(marsops.focal.REDUCTIONS)), gamma=draw(st.sampled_from([0.0, 0.5, 2.0])))


@pytest.mark.parametrize("backend,device", FOCAL, ids=backend_ids(FOCAL))
@given(case=loss_case())
def test_loss_with_confusion_equals_loss_then_confusion_matrix(backend, device, case):
    logits, target = case["logits"].to(device), case["target"].to(device)
    c = logits.shape[1]
    args = (None, case["gamma"], 255, case["reduction"])
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    cm = torch.full((c, c), 7, dtype=torch.int64, device=device)  # counts are added to what is there
    fused = marsops.focal_loss(x1, target, *args, backend=backend, confusion=cm)
    alone = marsops.focal_loss(x2, target, *args, backend=backend)
    assert torch.equal(fused, alone) or torch.allclose(fused, alone, equal_nan=True)
    fused.sum().backward()
    alone.sum().backward()
    assert torch.equal(x1.grad, x2.grad) or torch.allclose(x1.grad, x2.grad, equal_nan=True)
    expected = marsops.confusion_matrix(logits, target, c, 255, backend=backend) + 7
    assert torch.equal(cm, expected)
    oracle = numpy_confusion(logits.float().argmax(1).cpu(), target.cpu(), c, 255) + 7
    np.testing.assert_array_equal(cm.cpu().numpy(), oracle)


@pytest.mark.parametrize("backend,device", FOCAL, ids=backend_ids(FOCAL))
def test_loss_counts_into_a_streaming_iou(backend, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, 8, generator=g).to(device)
    t = torch.randint(0, 5, (3, 8, 8), generator=g).to(device)
    metric, separate = marsops.StreamingIoU(5, classes=[1, 2, 3, 4]), marsops.StreamingIoU(5, classes=[1, 2, 3, 4])
    for _ in range(2):
        marsops.focal_loss(x, t, gamma=0.5, backend=backend, confusion=metric)
        separate.update(x, t)
    assert metric.local.device.type == device and torch.equal(metric.local, separate.local)
    assert torch.equal(metric.compute().miou, separate.compute().miou)
    crit = marsops.FocalLoss(gamma=0.5, backend=backend)
    cm = torch.zeros(5, 5, dtype=torch.int64, device=device)
    crit(x, t, confusion=cm)
    assert torch.equal(cm, separate.local // 2)


@pytest.mark.parametrize("backend,device", FOCAL, ids=backend_ids(FOCAL))
def test_bad_label_still_raises_when_counting(backend, device):
    assert_label_error(device, f"x = torch.randn(2, 3, 4, device='{device}')\n"
                       f"t = torch.zeros(2, 4, dtype=torch.long, device='{device}')\nt[1, 2] = 3\n"
                       f"cm = torch.zeros(3, 3, dtype=torch.long, device='{device}')\n"
                       f"marsops.focal_loss(x, t, backend='{backend}', confusion=cm)", "outside")


@pytest.mark.parametrize("confusion,error,match", [
    (torch.zeros(4, 4, dtype=torch.int64), ValueError, r"int64 \(5, 5\)"),
    (torch.zeros(5, 5, dtype=torch.int32), ValueError, "int64"),
    (torch.zeros(5, 5, dtype=torch.int64, device="meta"), ValueError, "is on"),
    ([[0] * 5] * 5, TypeError, "StreamingIoU"),
    (marsops.StreamingIoU(4), ValueError, "classes"),
    (marsops.StreamingIoU(5, ignore_index=3), ValueError, "ignores label 3"),
])
def test_bad_confusion_arguments(confusion, error, match):
    with pytest.raises(error, match=match):
        marsops.focal_loss(torch.randn(2, 5, 3), torch.zeros(2, 3, dtype=torch.long), confusion=confusion)


def _opcheck_samples(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 4, generator=g).to(device)
    t = torch.randint(0, 5, (2, 3, 4), generator=g).to(device)
    for reduction in (0, 2):
        yield (x.clone().requires_grad_(), t, None, 0.5, -100, reduction, True, True, 0.0)
    yield (x.clone(), t, None, 2.0, 1, 3, False, True, 0.2)


@pytest.mark.parametrize("backend,device", FOCAL[1:], ids=backend_ids(FOCAL[1:]))
def test_opcheck_with_confusion(backend, device):
    op = torch.ops.marsops.focal_loss_forward_triton if backend == "triton" else torch.ops.marsops.focal_loss_forward
    for args in _opcheck_samples(device):
        torch.library.opcheck(op, args)


def test_whole_training_step_compiles_with_fullgraph():
    """No host synchronisation in a training step: model forward, the fused loss counting the
    confusion matrix, backward and an AdamW update compile as one graph (any host read would be
    a graph break), and match eager torch.optim.AdamW."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 1))
    eager_model = torch.nn.Sequential(*[m for m in model])  # the same modules, reset below
    initial = [p.detach().clone() for p in model.parameters()]
    crit = marsops.FocalLoss(torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0]), gamma=0.5, backend="cpu")
    params = list(model.parameters())
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    steps, cm, loss_sum = torch.zeros(()), torch.zeros(5, 5, dtype=torch.int64), torch.zeros(())
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-8, 1e-2

    def step(x, t):
        loss = crit(model(x), t, confusion=cm)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():  # AdamW, as torch.optim.AdamW computes it
            steps.add_(1)
            bc1, bc2 = 1 - b1**steps, 1 - b2**steps
            for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq):
                p.mul_(1 - lr * wd)
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.sub_(lr * (m / bc1) / ((v / bc2).sqrt() + eps))
            loss_sum.add_(loss.detach())
        return loss.detach()

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 1, 16, 32, generator=g), torch.randint(0, 5, (4, 16, 32), generator=g))
               for _ in range(3)]
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(step, fullgraph=True)
        losses = [compiled(x, t) for x, t in batches]
    after = [p.detach().clone() for p in model.parameters()]

    with torch.no_grad():
        for p, p0 in zip(eager_model.parameters(), initial):
            p.copy_(p0)
    opt = torch.optim.AdamW(eager_model.parameters(), lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    eager_cm = torch.zeros(5, 5, dtype=torch.int64)
    for (x, t), loss in zip(batches, losses):
        eager_loss = crit(eager_model(x), t, confusion=eager_cm)
        opt.zero_grad()
        eager_loss.backward()
        opt.step()
        assert_close(loss, eager_loss.detach())
    for a, b in zip(after, eager_model.parameters()):
        assert_close(a, b.detach())
    assert torch.equal(cm, eager_cm) and cm.sum() == 3 * 4 * 16 * 32
    assert_close(loss_sum, torch.stack(losses).sum())


# ---- flip test-time augmentation in one pass ------------------------------------------------------

@st.composite
def tta_case(draw):
    n, c = draw(st.integers(0, 3)), draw(st.sampled_from([1, 2, 5, 19, 70]))
    spatial = draw(st.sampled_from([(1, 1), (3, 5), (6, 7), (2, 4, 5), (2, 37)]))  # 37: SIMD blocks and a tail
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    outputs = torch.randn((4 * n, c) + spatial, generator=g) * draw(st.sampled_from([1.0, 10.0]))
    if draw(st.booleans()):
        outputs = outputs.round()  # exact ties after averaging: the first class wins
    target = torch.randint(0, c, (n,) + spatial, generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = -1
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    return outputs.to(dtype), target.to(draw(st.sampled_from([torch.int64, torch.int32])))


def merged_argmax(outputs, softmax):
    """The oracle: torch's softmax, each view flipped back with torch.flip, averaged, torch.argmax."""
    x = outputs.float()
    x = x.softmax(1) if softmax else x
    a, b, c, d = x.chunk(4)
    merged = (a + b.flip(-1) + c.flip(-2) + d.flip(-2, -1)) / 4
    top2 = merged.topk(min(2, merged.shape[1]), dim=1).values
    margin = (top2[:, 0] - top2[:, -1]) if merged.shape[1] > 1 else torch.ones_like(top2[:, 0])
    return merged.argmax(1), margin


@pytest.mark.parametrize("backend,device", TTA, ids=backend_ids(TTA))
@pytest.mark.parametrize("softmax", [True, False])
@pytest.mark.parametrize("c", [1, 2, 5, 19])
def test_flip4_argmax_of_nonfinite_outputs_follows_torch(backend, device, softmax, c):
    """NaN, +inf and all -inf views: a view whose max is not finite has an all-NaN softmax in torch,
    and a NaN average wins the argmax (whose first NaN is class 0 then)."""
    g = torch.Generator().manual_seed(c)
    outputs = torch.randn(4 * 3, c, 5, 37, generator=g)
    flat = outputs.view(-1)
    where = torch.randperm(flat.numel(), generator=g)[:60]
    flat[where[:20]], flat[where[20:40]], flat[where[40:]] = float("nan"), float("inf"), -float("inf")
    outputs[0, :, 0, :] = -float("inf")  # a whole row of one view at -inf in every class
    pred = marsops.flip4_argmax(outputs.to(device), softmax=softmax, backend=backend).cpu()
    expected, _ = merged_argmax(outputs, softmax)
    assert torch.equal(pred, expected)


@pytest.mark.parametrize("backend,device", TTA, ids=backend_ids(TTA))
@given(case=tta_case(), softmax=st.booleans())
def test_flip4_argmax_matches_torch(backend, device, case, softmax):
    outputs, target = case
    pred = marsops.flip4_argmax(outputs.to(device), softmax=softmax, backend=backend).cpu()
    expected, margin = merged_argmax(outputs, softmax)
    assert pred.dtype == torch.int64 and pred.shape == expected.shape
    # The kernels sum the views in flip4_merge's order; their softmax may round its last bit
    # differently from torch's, which can only move an argmax whose top two are that close.
    decided = (margin > 1e-5) | (not softmax)
    assert torch.equal(pred[decided], expected[decided])
    ref_pred, _ = reference.views_argmax(outputs, None, None, softmax, True, [0, 1, 2, 3])
    assert torch.equal(pred[decided], ref_pred[decided])
    metric = marsops.StreamingIoU(outputs.shape[1], ignore_index=-1, backend=backend)
    metric.update_flip4(outputs.to(device), target.to(device), softmax=softmax)
    counts = numpy_confusion(pred, target, outputs.shape[1], -1)
    np.testing.assert_array_equal(metric.local.cpu().numpy(), counts)


@pytest.mark.parametrize("backend,device", TTA, ids=backend_ids(TTA))
def test_flip4_argmax_undoes_flip4(backend, device):
    """The views of a real flip4 batch of one logits map agree: the TTA prediction is its argmax."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 6, 10, generator=g)
    views, _ = marsops.flip4(logits)
    for softmax in (True, False):
        pred = marsops.flip4_argmax(views.to(device), softmax=softmax, backend=backend)
        assert torch.equal(pred.cpu(), logits.argmax(1))


@pytest.mark.parametrize("backend,device", TTA, ids=backend_ids(TTA))
def test_flip4_argmax_bad_inputs(backend, device):
    with pytest.raises(ValueError, match="4-view batch"):
        marsops.flip4_argmax(torch.randn(6, 5, 4, 4, device=device), backend=backend)
    with pytest.raises(TypeError, match="floating"):
        marsops.flip4_argmax(torch.zeros(4, 5, 4, 4, dtype=torch.long, device=device), backend=backend)
    metric = marsops.StreamingIoU(5, backend=backend)
    with pytest.raises(ValueError, match="does not match"):
        metric.update_flip4(torch.randn(4, 5, 4, 4, device=device), torch.zeros(1, 4, 5, dtype=torch.long,
                                                                                   device=device))
    with pytest.raises(ValueError, match="classes"):
        metric.update_flip4(torch.randn(4, 3, 4, 4, device=device), torch.zeros(1, 4, 4, dtype=torch.long,
                                                                                   device=device))
    assert_label_error(device, f"metric = marsops.StreamingIoU(5, backend='{backend}')\n"
                       f"t = torch.zeros(1, 4, 4, dtype=torch.long, device='{device}')\nt[0, 1, 1] = 9\n"
                       f"metric.update_flip4(torch.randn(4, 5, 4, 4, device='{device}'), t)", "outside")


@pytest.mark.parametrize("backend,device", TTA, ids=backend_ids(TTA))
@pytest.mark.parametrize("softmax", [True, False])
def test_d4_and_volume_tta_and_channels_last_outputs(backend, device, softmax):
    """The dihedral views of squares and the 8 flips of volumes, evaluated in one pass; outputs in
    channels_last are read in place."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, 6, 6, generator=g)
    views, _ = marsops.d4(logits)
    expected = logits.argmax(1)
    for layout in (torch.contiguous_format, torch.channels_last):
        out = views.contiguous(memory_format=layout).to(device)
        assert torch.equal(marsops.d4_argmax(out, softmax=softmax, backend=backend).cpu(), expected)
    # distinct views against the merge's oracle
    noisy = torch.randn(8 * 2, 4, 5, 5, generator=g)
    oracle = marsops.d4_merge(noisy.softmax(1) if softmax else noisy, backend="reference").argmax(1)
    pred = marsops.d4_argmax(noisy.to(device).contiguous(memory_format=torch.channels_last), softmax=softmax,
                             backend=backend).cpu()
    assert (pred == oracle).float().mean() > 0.99  # the same up to near-ties of the softmax's last bit
    metric = marsops.StreamingIoU(4, backend=backend)
    target = torch.randint(0, 4, (2, 5, 5), generator=g)
    metric.update_d4(noisy.to(device), target.to(device), softmax=softmax)
    np.testing.assert_array_equal(metric.local.cpu().numpy(), numpy_confusion(pred, target, 4, -999))
    volume = torch.randn(2, 3, 4, 5, 6, generator=g)
    vol_views, _ = marsops.flip4(volume, dims=(-3, -2, -1))
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        got = marsops.flip4_argmax(vol_views.contiguous(memory_format=layout).to(device), softmax=softmax,
                                   dims=(-3, -2, -1), backend=backend)
        assert torch.equal(got.cpu(), volume.argmax(1))
