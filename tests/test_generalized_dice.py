"""Generalized Dice loss: every kernel against the reference, MONAI's GeneralizedDiceLoss as the
oracle we did not write, a case worked out by hand, gradcheck, ignored / empty batches, bad
arguments, opcheck and torch.compile."""
import pytest
import torch
from hypothesis import given, strategies as st

import marsops
from marsops import reference
from marsops.generalized_dice import generalized_dice_coefficients
from helpers import assert_close, assert_compiles_like_eager, assert_label_error, backend_ids, kernel_backends

BACKENDS = kernel_backends("region_stats")
ALL = [("reference", "cpu")] + BACKENDS
WEIGHT_TYPES = ("square", "simple", "uniform")


@st.composite
def gdl_case(draw):
    """Random logits / target / options, corners on purpose: classes absent from the target, every
    pixel ignored, one class, 1-D to 3-D, class-last layouts, logits far apart."""
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 8))
    spatial = draw(st.sampled_from([(), (1,), (7,), (3, 5), (4, 9), (2, 3, 4), (5, 33)]))
    ignore_index = draw(st.sampled_from([-100, 0, 255]))
    target_dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.uint8]))
    scale = draw(st.sampled_from([1.0, 5.0, 1e4]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = torch.randn((n, c) + spatial, generator=g, dtype=torch.float64) * scale
    present = draw(st.integers(1, c))  # labels from the first `present` classes only: the rest are absent
    target = torch.randint(0, present, (n,) + spatial, generator=g)
    target[torch.rand(target.shape, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = ignore_index
    if target_dtype == torch.uint8 and ignore_index < 0:
        target[target == ignore_index] = 255
        ignore_index = 255
    if draw(st.booleans()):  # the same values, laid out class-last
        logits = logits.movedim(1, -1).contiguous().movedim(-1, 1)
    kw = dict(ignore_index=ignore_index, smooth=draw(st.sampled_from([0.0, 1e-5, 1.0])),
              weight_type=draw(st.sampled_from(WEIGHT_TYPES)))
    return logits, target.to(target_dtype), kw


def run(logits, target, kw, backend, device, dtype, upstream=0.75):
    x = logits.to(device=device, dtype=dtype, copy=True).requires_grad_()
    loss = marsops.generalized_dice_loss(x, target.to(device), backend=backend, **kw)
    (grad,) = torch.autograd.grad(loss, x, torch.tensor(upstream, dtype=loss.dtype, device=device))
    return loss, grad


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
@given(case=gdl_case(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
def test_matches_reference(backend, device, case, dtype):
    """The kernel against the reference on the same rounded inputs, computed in fp32 (fp64 for
    fp64), sums in fp64 in both: one rounding of the loss and of the saved gradient to dtype, one
    more of the gradient when scaled by the upstream gradient (helpers.TOLERANCE)."""
    logits, target, kw = case
    if dtype == torch.float64 and backend == "triton":
        dtype = torch.float32  # Triton computes in fp32 and rejects fp64
    loss, grad = run(logits, target, kw, backend, device, dtype)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    ref_loss, ref_grad = run(logits.to(dtype).to(compute), target, kw, "reference", "cpu", compute)
    assert loss.dtype == dtype and grad.dtype == dtype and loss.shape == ()
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert_close(loss, ref_loss.to(dtype), dtype)
    assert_close(grad, ref_grad.to(dtype), dtype)


@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
def test_gradcheck_float64(weight_type):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, dtype=torch.float64, generator=g).requires_grad_()
    target = torch.randint(0, 3, (2, 3, 5), generator=g)  # class 3 absent
    target[0, 0, :2] = -100
    for backend in ("reference", "cpu"):
        assert torch.autograd.gradcheck(
            lambda x: marsops.generalized_dice_loss(x, target, smooth=1e-3, weight_type=weight_type, backend=backend),
            (logits,))


# ---- MONAI, an oracle we did not write ---------------------------------------------------------

@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
@pytest.mark.parametrize("absent", [False, True])
def test_matches_monai(backend, device, weight_type, absent):
    """MONAI's GeneralizedDiceLoss(softmax=True, to_onehot_y=True, batch=True): loss and gradient
    (MONAI's weights are constants too: computed from the one-hot target). Absent: classes 1 and
    4 never in the target (infinite weights, replaced by the largest finite one). MONAI rounds the
    weights to fp32 (a 1e-7 relative change): compared at fp32 tolerance."""
    monai = pytest.importorskip("monai.losses")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 6, 7, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 5, (3, 6, 7), generator=g)
    if absent:
        target[target == 1] = 0
        target[target == 4] = 2
    for smooth in (1e-5, 0.5):
        module = monai.GeneralizedDiceLoss(softmax=True, to_onehot_y=True, batch=True, smooth_nr=smooth,
                                           smooth_dr=smooth, w_type=weight_type)
        x = logits.clone().requires_grad_()
        expected = module(x, target.unsqueeze(1))
        expected.backward()
        loss, grad = run(logits.float(), target, dict(smooth=smooth, weight_type=weight_type), backend, device,
                         torch.float32, 1.0)
        assert_close(loss, expected.detach().float())
        assert_close(grad, x.grad.float())


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_ignored_pixels_match_monai_on_masked_inputs(backend, device):
    """MONAI has no ignore_index: its formula on the softmax and one-hot target with the ignored
    pixels zeroed (softmax=False) is what ignoring them means."""
    monai = pytest.importorskip("monai.losses")
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 5, 9, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 5, 9), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.3] = 255
    keep = (target != 255).unsqueeze(1).double()
    x = logits.clone().requires_grad_()
    onehot = torch.nn.functional.one_hot(torch.where(target == 255, 0, target), 4).movedim(-1, 1).double() * keep
    expected = monai.GeneralizedDiceLoss(batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(torch.softmax(x, 1) * keep,
                                                                                     onehot)
    expected.backward()
    loss, grad = run(logits.float(), target, dict(ignore_index=255), backend, device, torch.float32, 1.0)
    assert_close(loss, expected.detach().float())
    assert_close(grad, x.grad.float())


# ---- by hand -----------------------------------------------------------------------------------

def test_small_case_by_hand():
    """Three pixels, three classes, class 2 absent. p = (0.7, 0.2, 0.1), (0.5, 0.3, 0.2),
    (0.2, 0.6, 0.2); labels 0, 0, 1. T = (2, 1, 0); I = (1.2, 0.6, 0); S = (1.4, 1.1, 0.5).
    square: w = (1/4, 1, inf -> 1); N = 2 (0.3 + 0.6) = 1.8; D = 0.25 * 3.4 + 2.1 + 0.5 = 3.45.
    simple: w = (1/2, 1, 1); N = 2 (0.6 + 0.6) = 2.4; D = 1.7 + 2.1 + 0.5 = 4.3.
    uniform: N = 2 * 1.8 = 3.6; D = 3.4 + 2.1 + 0.5 = 6."""
    p = torch.tensor([[0.7, 0.5, 0.2], [0.2, 0.3, 0.6], [0.1, 0.2, 0.2]], dtype=torch.float64)
    x = torch.log(p).unsqueeze(0)  # (1, 3 classes, 3 pixels)
    t = torch.tensor([[0, 0, 1]])
    expected = {"square": 1 - 1.8 / 3.45, "simple": 1 - 2.4 / 4.3, "uniform": 1 - 3.6 / 6}
    for weight_type, value in expected.items():
        for backend in ("reference", "cpu"):
            got = marsops.generalized_dice_loss(x, t, smooth=0.0, weight_type=weight_type, backend=backend)
            assert float(got) == pytest.approx(value, rel=1e-12), (weight_type, backend)
    # the coefficients: dL/dI = -2 w / D (0 for the absent class), dL/dS = N w / D^2
    stats = torch.tensor([[[1.2, 1.4, 2.0], [0.6, 1.1, 1.0], [0.0, 0.5, 0.0]]], dtype=torch.float64)
    loss, coef_i, coef_s, _ = generalized_dice_coefficients(stats, 0.0, "square")
    w = torch.tensor([0.25, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(coef_i[0], torch.tensor([-0.5 / 3.45, -2 / 3.45, 0.0], dtype=torch.float64))
    torch.testing.assert_close(coef_s[0], 1.8 * w / 3.45**2)
    assert float(loss) == pytest.approx(1 - 1.8 / 3.45, rel=1e-12)


def test_weights_are_constants():
    """The weights come from the target alone and carry no gradient: the gradient is autograd's
    through the formula with w = 1/T^2 detached."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (2, 8), generator=g)
    I, S, T = reference.region_sums(x, t)
    w = (1 / T**2).detach()
    by_formula = 1 - (2 * (w * I).sum() + 1e-5) / ((w * (S + T)).sum() + 1e-5)
    (expected,) = torch.autograd.grad(by_formula, x)
    for backend in ("reference", "cpu"):
        (grad,) = torch.autograd.grad(marsops.generalized_dice_loss(x, t, backend=backend), x)
        torch.testing.assert_close(grad, expected)


# ---- ignore_index, empty batches, bad input ----------------------------------------------------

@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_ignored_pixels_are_left_out(backend, device):
    """Ignoring pixels is dropping them (the loss of the kept columns), whatever their logits hold."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 16, generator=g)
    t = torch.randint(0, 5, (2, 16), generator=g)
    t[:, :3] = -100
    dirty = x.clone()
    dirty[0, :, 0], dirty[1, 2, 1], dirty[1, :, 2] = float("nan"), float("inf"), -float("inf")
    loss, grad = run(dirty, t, {}, backend, device, torch.float32)
    kept_loss, kept_grad = run(x[:, :, 3:], t[:, 3:], {}, backend, device, torch.float32)
    assert_close(loss, kept_loss)
    assert (grad[:, :, :3] == 0).all()
    assert_close(grad[:, :, 3:], kept_grad)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_all_ignored_and_empty_batches_cost_nothing(backend, device):
    for shape in ((2, 3, 4), (0, 3, 4)):
        for smooth in (0.0, 1e-5):
            x = torch.randn(shape, device=device, requires_grad=True)
            target = torch.full((shape[0], shape[2]), -100, device=device)
            loss = marsops.generalized_dice_loss(x, target, smooth=smooth, backend=backend)
            loss.backward()
            assert loss.item() == 0.0 and (x.grad == 0).all()


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_labels_out_of_range_raise(backend, device):
    assert_label_error(device, f"marsops.generalized_dice_loss(torch.randn(2, 3, 4, device='{device}'), "
                               f"torch.tensor([[0, 1, 2, 3], [0, 0, 0, 0]], device='{device}'), backend='{backend}')",
                       "outside")


X, Y = torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long)


@pytest.mark.parametrize("call_,error,match", [
    (lambda: marsops.generalized_dice_loss(X, Y, weight_type="log"), ValueError, "weight_type"),
    (lambda: marsops.generalized_dice_loss(X, Y, weight_type=None), ValueError, "weight_type"),
    (lambda: marsops.generalized_dice_loss(X, Y, smooth=-1e-5), ValueError, "smooth"),
    (lambda: marsops.generalized_dice_loss(X, Y, smooth=float("nan")), ValueError, "smooth"),
    (lambda: marsops.generalized_dice_loss(X, Y, smooth=float("inf")), ValueError, "smooth"),
    (lambda: marsops.generalized_dice_loss(X, torch.zeros(2, 5, dtype=torch.long)), ValueError, "shape"),
    (lambda: marsops.generalized_dice_loss(X, torch.zeros(2, 4)), TypeError, "integer"),
    (lambda: marsops.generalized_dice_loss(Y.view(2, 1, 4), Y), TypeError, "floating"),
    (lambda: marsops.generalized_dice_loss(X, Y, backend="gpu"), ValueError, "backend"),
    (lambda: marsops.GeneralizedDiceLoss(weight_type="squared"), ValueError, "weight_type"),
    (lambda: marsops.GeneralizedDiceLoss(smooth=-1), ValueError, "smooth"),
])
def test_bad_arguments_raise_clear_errors(call_, error, match):
    with pytest.raises(error, match=match):
        call_()


def test_fp64_rejected_by_triton_and_double_backward_refused():
    if any(b == "triton" for b, _ in BACKENDS):
        device = next(d for b, d in BACKENDS if b == "triton")
        with pytest.raises(TypeError, match="fp32"):
            marsops.generalized_dice_loss(torch.randn(2, 3, 4, dtype=torch.float64, device=device),
                                          torch.zeros(2, 4, dtype=torch.long, device=device), backend="triton")
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (2, 4))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(marsops.generalized_dice_loss(x, t, backend="cpu"), x, create_graph=True)
    (g,) = torch.autograd.grad(marsops.generalized_dice_loss(x, t, backend="reference"), x, create_graph=True)
    g.sum().backward()  # the reference is plain autograd


def test_module_and_exports():
    x = torch.randn(2, 3, 5, requires_grad=True)
    t = torch.randint(0, 3, (2, 5))
    module = marsops.GeneralizedDiceLoss(smooth=0.5, weight_type="simple", ignore_index=2)
    assert torch.equal(module(x, t), marsops.generalized_dice_loss(x, t, 0.5, "simple", 2))
    assert "weight_type='simple'" in repr(module)
    assert {"GeneralizedDiceLoss", "generalized_dice_loss"} <= set(marsops.__all__)


# ---- the op under torch's checks ---------------------------------------------------------------

@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_opcheck(backend, device):
    x = torch.randn(2, 4, 3, 5, device=device, requires_grad=True)
    t = torch.randint(0, 3, (2, 3, 5), device=device)
    for weight_type in WEIGHT_TYPES:
        args = (x, t, 1e-5, weight_type, -100, True, backend)
        torch.library.opcheck(torch.ops.marsops.generalized_dice_loss.default, args)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_large_images_stay_finite(backend, device, dtype):
    """2^16 pixels per class sum: half precision sums would lose the addends; the kernels sum in
    fp32 blocks and fp64 totals, and 1/T^2 (about 1e-9) is taken in fp64."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 4, 128, 128, generator=g) * 8).to(dtype)
    t = torch.randint(0, 4, (2, 128, 128), generator=g)
    loss, grad = run(x, t, {}, backend, device, dtype)
    ref_loss, ref_grad = run(x.double(), t, {}, "reference", "cpu", torch.float64)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert_close(loss, ref_loss.to(dtype), dtype)
    assert_close(grad, ref_grad.to(dtype), dtype)


def test_torch_compile_fullgraph():
    assert_compiles_like_eager(marsops.GeneralizedDiceLoss(backend="cpu"), 4, torch.randint(0, 4, (2, 8, 8)))
