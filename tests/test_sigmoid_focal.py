"""Sigmoid focal loss: every kernel against the reference, against torchvision's
sigmoid_focal_loss and F.binary_cross_entropy_with_logits (oracles we did not write), gradcheck,
extreme and bad inputs, opcheck and torch.compile."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import marsops
from helpers import assert_close, assert_compiles_like_eager, assert_label_error, backend_ids, kernel_backends

BACKENDS = kernel_backends("sigmoid_focal_loss_forward")
ALL = [("reference", "cpu")] + BACKENDS


@st.composite
def sigmoid_case(draw):
    shape = draw(st.sampled_from([(5,), (2, 3), (2, 3, 7), (1, 4, 3, 5), (3, 1, 2, 9), (2, 2, 2, 3, 4)]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * draw(st.sampled_from([1.0, 6.0, 1e4]))
    kind = draw(st.sampled_from(["hard", "soft", "int", "uint8", "bool"]))
    ignore_index = None
    if kind == "soft":
        target = torch.rand(shape, generator=g, dtype=torch.float64)
        target[torch.rand(shape, generator=g) < 0.3] = 1.0
    elif kind == "hard":
        target = torch.randint(0, 2, shape, generator=g).double()
    elif kind == "bool":
        target = torch.randint(0, 2, shape, generator=g).bool()
    else:
        target = torch.randint(0, 2, shape, generator=g)
        if draw(st.booleans()):
            ignore_index = 255 if kind == "uint8" else draw(st.sampled_from([-100, 1]))
            target[torch.rand(shape, generator=g) < draw(st.sampled_from([0.3, 1.0]))] = ignore_index
        target = target.to(torch.uint8 if kind == "uint8" else torch.int64)
    if len(shape) >= 3 and draw(st.booleans()):  # the same values, non-contiguous
        logits = logits.movedim(1, -1).contiguous().movedim(-1, 1)
    pos_weight = None
    if draw(st.booleans()):
        pos_weight = torch.rand(shape[1] if len(shape) >= 2 and draw(st.booleans()) else 1, generator=g,
                                dtype=torch.float64) * 3
    return dict(logits=logits, target=target, alpha=draw(st.sampled_from([0.25, None, 0.9, 0.0])),
                gamma=draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.floats(0.0, 4.0))),
                pos_weight=pos_weight, ignore_index=ignore_index,
                reduction=draw(st.sampled_from(marsops.sigmoid_focal.REDUCTIONS)))


def run(case, backend, device, dtype, upstream_dtype=None):
    x = case["logits"].to(device=device, dtype=dtype, copy=True).requires_grad_()
    target = case["target"].to(device)
    if target.is_floating_point():
        target = target.to(dtype)
    pw = case["pos_weight"]
    loss = marsops.sigmoid_focal_loss(x, target, case["alpha"], case["gamma"],
                                      None if pw is None else pw.to(device=device, dtype=torch.float32),
                                      case["ignore_index"], case["reduction"], backend=backend)
    n = loss.numel()
    upstream = torch.linspace(-1, 2, n, dtype=torch.float64).to(upstream_dtype or loss.dtype).view(loss.shape)
    (grad,) = torch.autograd.grad(loss, x, upstream.to(device=device, dtype=loss.dtype))
    return loss, grad


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
@given(case=sigmoid_case(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
def test_matches_reference(backend, device, case, dtype):
    """Against the reference on the same rounded inputs in fp32 (fp64 for fp64): each rounds its
    outputs once, the kernel's gradient once more when scaled (helpers.TOLERANCE)."""
    if dtype == torch.float64 and backend != "cpu":
        dtype = torch.float32
    loss, grad = (t.cpu() for t in run(case, backend, device, dtype))  # compared with the reference on the CPU
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    rounded = dict(case, logits=case["logits"].to(dtype).to(compute))
    if rounded["target"].is_floating_point():
        rounded["target"] = rounded["target"].to(dtype).to(compute)
    ref_loss, ref_grad = run(rounded, "reference", "cpu", compute, upstream_dtype=dtype)
    assert loss.dtype == dtype and grad.dtype == dtype and loss.shape == ref_loss.shape
    ref_loss, ref_grad = ref_loss.to(dtype), ref_grad.to(dtype)
    assert torch.equal(torch.isfinite(loss), torch.isfinite(ref_loss))  # fp16 sums may overflow alike
    assert torch.isfinite(grad).all()
    assert_close(loss, ref_loss, dtype)
    assert_close(grad, ref_grad, dtype)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1, 0.5), (0.6, 0.0), (0.25, 3.3)])
def test_matches_torchvision(backend, device, reduction, alpha, gamma):
    ops = pytest.importorskip("torchvision.ops")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 6, 5, generator=g, dtype=torch.float64) * 3
    for target in (torch.randint(0, 2, x.shape, generator=g).double(), torch.rand(x.shape, generator=g).double()):
        ref_x = x.clone().requires_grad_()
        expected = ops.sigmoid_focal_loss(ref_x, target, alpha=alpha, gamma=gamma, reduction=reduction)
        expected.backward(torch.ones_like(expected))
        case = dict(logits=x.float(), target=target.float(), alpha=alpha, gamma=gamma, pos_weight=None,
                    ignore_index=None, reduction=reduction)
        loss, grad = run(case, backend, device, torch.float32)
        upstream = torch.linspace(-1, 2, loss.numel(), dtype=torch.float64).view(loss.shape)
        assert_close(loss, expected.float())
        assert_close(grad, (ref_x.grad * upstream).float())  # run() backpropagates `upstream`


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_gamma_zero_is_bce_with_logits(backend, device):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 4, generator=g) * 4
    t = torch.rand(x.shape, generator=g)
    pw = torch.tensor([0.5, 2.0, 3.0])
    got = marsops.sigmoid_focal_loss(x.to(device), t.to(device), None, 0.0, pw.to(device), backend=backend)
    expected = F.binary_cross_entropy_with_logits(x, t, pos_weight=pw.view(3, 1, 1))
    assert_close(got, expected)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradcheck_float64(reduction):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=g).requires_grad_()
    t = torch.randint(0, 2, (2, 3, 5), generator=g)
    t[0, 0, :2] = -100
    pw = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    for backend in ("reference", "cpu"):
        for gamma in (0.0, 0.5, 2.0, 1.7):
            fn = lambda x: marsops.sigmoid_focal_loss(x, t, 0.25, gamma, pw, -100, reduction,  # noqa: E731
                                                      backend=backend)
            assert torch.autograd.gradcheck(fn, (x,))


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_extreme_logits_stay_finite(backend, device, gamma):
    """|x| = 1e4 (p exactly 0 or 1 in fp32), and targets that agree or disagree with them."""
    x = torch.tensor([1e4, -1e4, 0.0, 88.0, -88.0, 1e4, -1e4], device=device)
    t = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 1.0], device=device)
    xr = x.cpu().double().requires_grad_()
    expected = marsops.sigmoid_focal_loss(xr, t.cpu().double(), gamma=gamma, reduction="sum", backend="reference")
    expected.backward()
    xk = x.clone().requires_grad_()
    loss = marsops.sigmoid_focal_loss(xk, t, gamma=gamma, reduction="sum", backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(xk.grad).all()
    assert_close(loss, expected.float())
    assert_close(xk.grad, xr.grad.float())


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_ignored_elements_count_nowhere(backend, device):
    """Ignored elements: no loss, no gradient, not in the mean, whatever their logits (NaN, inf)
    or their upstream gradient under reduction='none' hold."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, generator=g)
    t = torch.randint(0, 2, (2, 3, 8), generator=g)
    t[:, :, :2] = 255
    dirty = x.clone()
    dirty[0, 0, 0], dirty[1, 2, 1] = float("nan"), float("inf")
    kept = t != 255
    for reduction in ("mean", "none"):
        xd = dirty.to(device).requires_grad_()
        loss = marsops.sigmoid_focal_loss(xd, t.to(device), ignore_index=255, reduction=reduction, backend=backend)
        upstream = torch.ones_like(loss)
        if reduction == "none":
            upstream[~kept.to(device)] = float("nan")
        loss.backward(upstream)
        clean = marsops.sigmoid_focal_loss(x[kept], t[kept], reduction=reduction, backend="reference")
        assert_close(loss.cpu()[kept] if reduction == "none" else loss, clean)
        assert (xd.grad.cpu()[~kept] == 0).all() and torch.isfinite(xd.grad).all()
    everything = torch.full((2, 3), 255)
    assert float(marsops.sigmoid_focal_loss(torch.randn(2, 3, device=device), everything.to(device),
                                            ignore_index=255, backend=backend)) == 0.0


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@pytest.mark.parametrize("bad", ["2", "-1", "1.5", "nan", "-0.5"])
def test_bad_targets_raise(backend, device, bad):
    target = (f"torch.tensor([0, 1, {bad}, 0])" if bad in ("2", "-1")
              else f"torch.tensor([0.0, 1.0, float('{bad}'), 0.5])")
    assert_label_error(device, f"marsops.sigmoid_focal_loss(torch.randn(4, device='{device}'), "
                               f"{target}.to('{device}'), backend='{backend}')", r"outside (\[0, 1\]|\{0, 1\})")


@pytest.mark.parametrize("call,error,match", [
    (lambda: marsops.sigmoid_focal_loss(torch.randn(2, 3), torch.zeros(2, 4)), ValueError, "shape"),
    (lambda: marsops.sigmoid_focal_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)), TypeError,
     "floating"),
    (lambda: marsops.sigmoid_focal_loss(torch.randn(2, 3), torch.zeros(2, 3), ignore_index=1), ValueError,
     "integer targets"),
    (lambda: marsops.sigmoid_focal_loss(torch.randn(2, 3), torch.zeros(2, 3), pos_weight=torch.ones(2)), ValueError,
     "pos_weight"),
    (lambda: marsops.sigmoid_focal_loss(torch.randn(2, 3), torch.zeros(2, 3), alpha=1.5), ValueError, "alpha"),
    (lambda: marsops.sigmoid_focal_loss(torch.randn(2, 3), torch.zeros(2, 3), gamma=-1), ValueError, "gamma"),
    (lambda: marsops.sigmoid_focal_loss(torch.randn(2, 3), torch.zeros(2, 3), reduction="avg"), ValueError,
     "reduction"),
])
def test_bad_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_empty_and_module():
    x = torch.randn(0, 3, 4, requires_grad=True)
    loss = marsops.sigmoid_focal_loss(x, torch.zeros(0, 3, 4), backend="cpu")
    loss.backward()
    assert loss.item() == 0.0 and x.grad.shape == x.shape
    x = torch.randn(2, 3, 4, requires_grad=True)
    t = torch.randint(0, 2, (2, 3, 4))
    module = marsops.SigmoidFocalLoss(alpha=0.5, gamma=1.0, pos_weight=[1.0, 2.0, 3.0])
    assert torch.equal(module(x, t), marsops.sigmoid_focal_loss(x, t, 0.5, 1.0, torch.tensor([1.0, 2.0, 3.0])))
    assert "gamma=1.0" in repr(module)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_opcheck(backend, device):
    x = torch.randn(2, 3, 5, device=device, requires_grad=True)
    t = torch.randint(0, 2, (2, 3, 5), device=device)
    op = (torch.ops.marsops.sigmoid_focal_loss_forward_triton if backend == "triton"
          else torch.ops.marsops.sigmoid_focal_loss_forward)
    for reduction in (0, 2):
        torch.library.opcheck(op.default, (x, t, torch.ones(3, device=device), 0.25, 2.0, None, reduction, True))


def test_torch_compile_fullgraph():
    assert_compiles_like_eager(marsops.SigmoidFocalLoss(backend="cpu"), 3, torch.randint(0, 2, (2, 3, 8, 8)).float())
