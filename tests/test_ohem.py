"""OHEM focal loss: every kernel's selection and loss against the float64 reference (allowing the
kept set to differ only within the rounding of p_t at tau), exact tie semantics, an oracle we did
not write (numpy's sort for the threshold, F.cross_entropy for the loss), bad inputs, compile."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import marsops
from marsops import ohem, reference
from helpers import assert_close, assert_compiles_like_eager, assert_label_error, backend_ids, kernel_backends

BACKENDS = kernel_backends("ohem_select")
ALL = [("reference", "cpu")] + BACKENDS
# lp = x_t - max - log(sum exp) in fp32 against float64: the sum of up to 12 exponentials within a
# few units of 2^-24 each (about 1.5e-6 absolute in its log), plus one rounding of x_t - max and of
# lp (2^-24 relative to |lp|). Pixels this close to log tau may fall either side of it.
def band(log_tau, fp64):
    return (1e-12 if fp64 else 1e-5) * (1 + abs(log_tau))


def lp64(logits, target, ignore_index):
    valid = target.long() != ignore_index
    t = torch.where(valid, target.long(), 0)
    lp = torch.log_softmax(logits.double(), 1).gather(1, t.unsqueeze(1)).squeeze(1)
    return lp, valid


@st.composite
def ohem_case(draw):
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 12))
    spatial = draw(st.sampled_from([(), (1,), (7,), (3, 5), (4, 9), (2, 3, 4), (5, 33)]))
    ignore_index = draw(st.sampled_from([-100, 0, 255]))
    target_dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.int16, torch.uint8]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = torch.randn((n, c) + spatial, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.5, 3.0, 8.0]))
    if draw(st.booleans()):  # repeated pixels: ties in p_t
        logits = logits[..., :1].expand_as(logits).clone() if spatial else logits
    target = torch.randint(0, c, (n,) + spatial, generator=g)
    target[torch.rand(target.shape, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = ignore_index
    if target_dtype == torch.uint8 and ignore_index < 0:
        target[target == ignore_index] = 255
        ignore_index = 255
    if draw(st.booleans()):
        logits = logits.movedim(1, -1).contiguous().movedim(-1, 1)
    kw = dict(ignore_index=ignore_index, thresh=draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])),
              min_kept=draw(st.sampled_from([0, 1, 3, 20, 100_000])), gamma=draw(st.sampled_from([0.0, 0.5, 2.0])))
    if draw(st.booleans()):
        kw["weight"] = torch.rand(c, generator=g, dtype=torch.float64) + 0.1
    return logits, target.to(target_dtype), kw


def kernel_run(backend, device, logits, target, kw, dtype):
    x = logits.to(device=device, dtype=dtype, copy=True).requires_grad_()
    w = kw.get("weight")
    w = None if w is None else w.to(device=device, dtype=torch.float32 if dtype != torch.float64 else dtype)
    loss = marsops.ohem_focal_loss(x, target.to(device), kw["gamma"], kw["thresh"], kw["min_kept"], w,
                                   kw["ignore_index"], backend=backend)
    (grad,) = torch.autograd.grad(loss, x, torch.tensor(0.75, dtype=loss.dtype, device=device))
    labels, stats = (torch.ops.marsops.ohem_select_triton if backend == "triton" else torch.ops.marsops.ohem_select)(
        x.detach(), target.to(device), kw["ignore_index"], kw["thresh"], kw["min_kept"] * x.shape[0])
    return loss, grad, labels.cpu(), stats.cpu(), w


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
@given(case=ohem_case(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
def test_matches_reference(backend, device, case, dtype):
    logits, target, kw = case
    if dtype == torch.float64 and backend == "triton":
        dtype = torch.float32
    loss, grad, labels, stats, w = kernel_run(backend, device, logits, target, kw, dtype)
    # The reference's rule in float64, on the same (rounded) logits.
    x64 = logits.to(dtype).double()
    lp, valid = lp64(x64, target, kw["ignore_index"])
    log_tau = reference.ohem_threshold(lp, valid, kw["thresh"], kw["min_kept"] * logits.shape[0]).item()
    kept = labels >= 0
    width = band(log_tau, dtype == torch.float64 and backend == "cpu")
    assert not (kept & ~valid).any()
    assert kept[valid & (lp < log_tau - width)].all(), "a pixel clearly below tau was dropped"
    assert not kept[valid & (lp > log_tau + width)].any(), "a pixel clearly above tau was kept"
    assert stats[0].item() == log_tau or abs(stats[0].item() - log_tau) <= width, (stats[0].item(), log_tau)
    assert stats[1].item() == kept.sum().item() and stats[2].item() == valid.sum().item()
    assert torch.equal(labels[kept].long(), target.long()[kept])
    # The loss and gradient: the focal term's mean over the kernel's own kept set.
    x = logits.to(dtype).double().requires_grad_()
    expected = reference.focal_loss(x, torch.where(kept, target.long(), -1), None if w is None else w.double().cpu(),
                                    kw["gamma"], -1, "mean")
    (expected_grad,) = torch.autograd.grad(expected, x, torch.tensor(0.75, dtype=torch.float64))
    assert_close(loss.cpu(), expected.to(dtype), dtype)
    assert_close(grad.cpu(), expected_grad.to(dtype), dtype)
    ambiguous = valid & ((lp - log_tau).abs() <= width)
    if not ambiguous.any():  # then the whole rule agrees with the reference's
        w_cpu = None if w is None else w.cpu()
        assert_close(loss.cpu(), marsops.ohem_focal_loss(x.detach(), target, backend="reference",
                                                         **{**kw, "weight": w_cpu}).to(dtype), dtype)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@pytest.mark.parametrize("channels_last", [False, True])
def test_ties_are_exact(backend, device, channels_last):
    """Two groups of identical pixels (37 and 29 of them: no SIMD width divides either), p_t = a
    < b: tau lands on a tie and the strict p_t < tau keeps all of a tie group or none of it."""
    va, vb = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, -1.0])  # p_t of class 1: a < b
    x = torch.cat([va.view(1, 3, 1).expand(1, 3, 37), vb.view(1, 3, 1).expand(1, 3, 29)], 2).unsqueeze(-1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(device)
    t = torch.ones(1, 66, 1, dtype=torch.long, device=device)
    for min_kept, thresh, expected in [(0, 0.0, 0), (36, 0.0, 0), (37, 0.0, 37), (65, 0.0, 37), (10**6, 0.0, 37),
                                       (0, 1.0, 66), (5, 0.99, 66)]:
        loss_kept = marsops.ohem_focal_loss(x, t, gamma=0.0, thresh=thresh, min_kept=min_kept, backend=backend)
        ce = F.cross_entropy(x.double(), t, reduction="none").view(-1)
        want = ce[:expected].mean() if expected else torch.zeros((), dtype=torch.float64)
        torch.testing.assert_close(loss_kept.double().cpu(), want.cpu(), rtol=1e-6, atol=1e-7)
        if backend != "reference":
            labels, stats = (torch.ops.marsops.ohem_select_triton if backend == "triton"
                             else torch.ops.marsops.ohem_select)(x, t, -100, thresh, min_kept)
            assert (labels >= 0).sum().item() == expected == stats[1].item()


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_cross_entropy_oracle_with_numpy_threshold(backend, device):
    """gamma = 0: F.cross_entropy over the pixels a numpy sort selects (mmsegmentation's rule)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, 16, 24, generator=g) * 3
    t = torch.randint(0, 6, (4, 16, 24), generator=g)
    t[:, :2] = 255
    for thresh, min_kept in [(0.7, 100), (0.3, 500), (0.05, 50), (0.9, 10**6)]:
        p = torch.softmax(x.double(), 1).gather(1, t.clamp(max=5).unsqueeze(1)).squeeze(1).numpy()
        valid = t.numpy() != 255
        s = np.sort(p[valid])
        tau = max(thresh, s[min(min_kept * 4, s.size - 1)])
        kept = torch.from_numpy(valid & (p < tau))
        want = F.cross_entropy(x.double(), torch.where(kept, t, 255), ignore_index=255)
        xd = x.to(device, copy=True).requires_grad_()
        got = marsops.ohem_focal_loss(xd, t.to(device), gamma=0.0, thresh=thresh, min_kept=min_kept,
                                      ignore_index=255, backend=backend)
        torch.testing.assert_close(got.double().cpu(), want, rtol=1e-5, atol=1e-6)
        x64 = x.double().requires_grad_()
        (want_grad,) = torch.autograd.grad(F.cross_entropy(x64, torch.where(kept, t, 255), ignore_index=255), x64)
        (grad,) = torch.autograd.grad(got, xd)
        torch.testing.assert_close(grad.double().cpu(), want_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_nothing_kept_empty_and_all_ignored(backend, device):
    cases = [(torch.randn(0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long)),
             (torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), -100)),
             (torch.full((1, 3, 2, 2), 5.0), torch.zeros(1, 2, 2, dtype=torch.long))]  # all tied: none kept
    for x, t in cases:
        x = x.to(device).requires_grad_()
        loss = marsops.ohem_focal_loss(x, t.to(device), thresh=0.0, min_kept=0, backend=backend)
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0 and not grad.any()


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_nan_logits(backend, device):
    """NaN at a counted pixel makes the loss NaN (never silently dropped); at an ignored one, nothing."""
    x = torch.randn(1, 3, 4, 5, device=device)
    t = torch.randint(0, 3, (1, 4, 5), device=device)
    x[0, :, 0, 0] = float("nan")
    assert torch.isnan(marsops.ohem_focal_loss(x, t, min_kept=2, backend=backend))
    t[0, 0, 0] = -100
    assert torch.isfinite(marsops.ohem_focal_loss(x, t, min_kept=2, backend=backend))


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_bad_input(backend, device):
    x, t = torch.randn(2, 3, 4, device=device), torch.randint(0, 3, (2, 4), device=device)
    # A label out of range: on a GPU a device-side assertion, run in a fresh process.
    assert_label_error(device, f"marsops.ohem_focal_loss(torch.randn(2, 3, 4, device='{device}'), torch.tensor("
                       f"[[0, 1, 2, 0], [1, 2, 3, 0]], device='{device}'), backend='{backend}')", "outside",
                       cpu_error=ValueError)
    with pytest.raises(ValueError, match="thresh"):
        marsops.ohem_focal_loss(x, t, thresh=1.5, backend=backend)
    with pytest.raises(ValueError, match="thresh"):
        marsops.ohem_focal_loss(x, t, thresh=float("nan"), backend=backend)
    with pytest.raises(ValueError, match="min_kept"):
        marsops.ohem_focal_loss(x, t, min_kept=-1, backend=backend)
    with pytest.raises(TypeError, match="min_kept"):
        marsops.ohem_focal_loss(x, t, min_kept=2.5, backend=backend)
    with pytest.raises(ValueError, match="shape"):
        marsops.ohem_focal_loss(x, t[:, :3], backend=backend)
    with pytest.raises(TypeError, match="integer"):
        marsops.ohem_focal_loss(x, t.float(), backend=backend)
    with pytest.raises(ValueError, match="gamma"):
        marsops.ohem_focal_loss(x, t, gamma=-1.0, backend=backend)
    with pytest.raises(ValueError, match="weight"):
        marsops.ohem_focal_loss(x, t, weight=torch.ones(4, device=device), backend=backend)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_confidently_wrong_pixels_stay_apart(backend, device, dtype):
    """Margins past ~87 (p_t underflows to 0 in fp32; fp16 logits reach them easily): in log space
    the hardest pixels stay distinct, so thresh 0 (pure top-k) keeps the k hardest, not none."""
    x = torch.zeros(1, 2, 10, dtype=dtype, device=device)
    x[0, 0] = -torch.arange(90.0, 100.0, dtype=dtype)
    t = torch.zeros(1, 10, dtype=torch.long, device=device)
    loss = marsops.ohem_focal_loss(x.requires_grad_(), t, gamma=0.0, thresh=0.0, min_kept=5, backend=backend)
    assert loss.item() == pytest.approx(97.0, rel=1e-3)  # the mean margin of the 5 hardest: 95..99
    (grad,) = torch.autograd.grad(loss, x)
    assert (grad[0, 0] != 0).sum().item() == 5 and (grad[0, 0, 5:] != 0).all()


@pytest.mark.parametrize("wrap", ["compile", "vmap"])
def test_reference_compiles_and_vmaps(wrap):
    x, t = torch.randn(3, 4, 5, 6), torch.randint(0, 4, (3, 5, 6))

    def f(a, b):
        return marsops.ohem_focal_loss(a, b, thresh=0.3, min_kept=7, backend="reference")

    if wrap == "compile":
        torch.testing.assert_close(torch.compile(f, fullgraph=True)(x, t), f(x, t))
    else:
        got = torch.func.vmap(f)(x.unsqueeze(1), t.unsqueeze(1))
        torch.testing.assert_close(got, torch.stack([f(x[i:i + 1], t[i:i + 1]) for i in range(3)]))


def test_triton_op_checks_its_arguments():
    if not any(b == "triton" for b, _ in BACKENDS):
        pytest.skip("no Triton here")
    device = dict(BACKENDS)["triton"]  # the GPU where there is one, else the CPU (interpreter)
    x, t = torch.randn(2, 3, 4, device=device), torch.randint(0, 3, (2, 4), device=device)
    op = torch.ops.marsops.ohem_select_triton
    with pytest.raises(ValueError, match="thresh"):
        op(x, t, -100, float("nan"), 0)
    with pytest.raises(ValueError, match="min_kept"):
        op(x, t, -100, 0.5, -5)
    with pytest.raises(ValueError, match="shape"):
        op(x, t[:, :3], -100, 0.5, 0)
    with pytest.raises(TypeError, match="fp32"):
        op(x.double(), t, -100, 0.5, 0)
    with pytest.raises(TypeError, match="integer"):
        op(x, t.float(), -100, 0.5, 0)


def test_fp64_rejected_by_triton():
    if not any(b == "triton" for b, _ in BACKENDS):
        pytest.skip("no Triton here")
    device = dict(BACKENDS)["triton"]
    with pytest.raises(TypeError, match="fp32"):
        marsops.ohem_focal_loss(torch.randn(2, 3, 4, dtype=torch.float64, device=device),
                                torch.zeros(2, 4, dtype=torch.long, device=device), backend="triton")


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_opcheck(backend, device):
    x = torch.randn(2, 4, 3, 5, device=device)
    t = torch.randint(0, 4, (2, 3, 5), device=device)
    op = torch.ops.marsops.ohem_select_triton if backend == "triton" else torch.ops.marsops.ohem_select
    torch.library.opcheck(op.default, (x, t, -100, 0.5, 7))


def test_module_and_compile():
    m = marsops.OhemFocalLoss(gamma=0.0, thresh=0.6, min_kept=16, weight=[1.0, 2.0, 0.5, 1.0], backend="cpu")
    assert "min_kept=16" in repr(m)
    x, t = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    torch.testing.assert_close(m(x, t), marsops.ohem_focal_loss(x, t, 0.0, 0.6, 16, m.weight, backend="reference"))
    assert_compiles_like_eager(m, 4, t)


def test_selection_is_a_pure_function_of_the_logits():
    """The cpu kernel's labels are the same under any thread count and layout (no sort order)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 33, 40, generator=g)
    t = torch.randint(0, 5, (3, 33, 40), generator=g)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            for layout in (torch.contiguous_format, torch.channels_last):
                outs.append(ohem.ohem_labels(x.contiguous(memory_format=layout), t, 0.2, 700, -100, "cpu"))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(o, outs[0]) for o in outs)
