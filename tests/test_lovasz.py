"""The Lovász-Softmax loss: every kernel against the float64 reference (values and gradients),
against segmentation_models_pytorch's LovaszLoss (an oracle we did not write), a case worked out
by hand, tie-heavy inputs, bad inputs, opcheck and torch.compile.

Gradients at tied errors are ambiguous (any order of the ties is a valid subgradient), and two
errors closer than the kernels' fp32 rounding may be sorted either way, so gradients are compared
only where the reference's sorted errors are at least GAP apart; the loss is compared always."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import marsops
from marsops import reference
from helpers import assert_close, assert_compiles_like_eager, assert_label_error, backend_ids, kernel_backends

BACKENDS = kernel_backends("lovasz_softmax_forward")
DEVICE = dict(BACKENDS)  # the device each backend runs on here: Triton on the GPU where there is one
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
# The kernels' errors |fg - p| carry a few units of roundoff of the compute type (p in [0, 1]):
# about 1e-7 in fp32, 1e-16 in fp64. Errors further apart than this keep their order.
GAP = {torch.float32: 1e-5, torch.float64: 1e-12}


def on(backend, *tensors):
    """The tensors on the device the backend runs on (the reference: the CPU)."""
    moved = tuple(t.to(DEVICE.get(backend, "cpu")) for t in tensors)
    return moved if len(moved) > 1 else moved[0]


@st.composite
def lovasz_case(draw, max_c=7):
    """Continuous random logits (no tied errors) and a target, options drawn on purpose."""
    n = draw(st.sampled_from([0, 1, 1, 2, 3]))
    c = draw(st.integers(1, max_c))
    spatial = draw(st.sampled_from([(1, 1), (3, 5), (4, 9), (6, 7), (1, 1, 1), (2, 3, 4), (3, 2, 5)]))
    ignore_index = draw(st.sampled_from([-100, 0, 255]))
    target_dtype = draw(st.sampled_from(INTEGER_DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((n, c) + spatial, generator=g, dtype=torch.float64) * draw(st.sampled_from([1.0, 3.0]))
    target = torch.randint(0, c, (n,) + spatial, generator=g)
    target[torch.rand(target.shape, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = ignore_index
    if target_dtype in (torch.uint8, torch.int8) and ignore_index not in range(-128, 128) or \
            target_dtype == torch.uint8 and ignore_index < 0:
        target[target == ignore_index] = 7 if c <= 7 else 100  # a label no class uses
        ignore_index = 7 if c <= 7 else 100
    layout = draw(st.sampled_from(["contiguous", "class_last", "strided"]))
    if layout == "class_last":  # the same values, laid out class-last (channels_last and its 3-D form)
        logits = logits.movedim(1, -1).contiguous().movedim(-1, 1)
    elif layout == "strided":  # a non-contiguous view: every other element of a wider tensor
        wide = torch.zeros(logits.shape[:-1] + (2 * logits.shape[-1],), dtype=logits.dtype)
        wide[..., ::2] = logits
        logits = wide[..., ::2]
    classes = draw(st.sampled_from(["present", "all", "list"]))
    if classes == "list":
        classes = draw(st.lists(st.integers(0, c - 1), min_size=1, max_size=c, unique=True))
    kw = dict(ignore_index=ignore_index, per_image=draw(st.booleans()), classes=classes)
    return logits, target.to(target_dtype), kw


def run(logits, target, kw, backend, dtype, upstream=0.75):
    """The loss and the gradient of the logits, computed on the backend's device, on the CPU."""
    x = on(backend, logits).to(dtype=dtype, copy=True).requires_grad_()
    loss = marsops.lovasz_softmax_loss(x, on(backend, target), backend=backend, **kw)
    (grad,) = torch.autograd.grad(loss, x, torch.tensor(upstream, dtype=loss.dtype, device=loss.device))
    return loss.cpu(), grad.cpu()


def min_error_gap(logits, target, kw):
    """The smallest distance between two valid errors of one (group, class) row, in float64."""
    x = logits.double()
    N, C = x.shape[:2]
    if N == 0:
        return float("inf")
    valid = (target.long() != kw["ignore_index"]).reshape(N, -1)
    p = torch.softmax(x, 1).reshape(N, C, -1)
    y = target.long().reshape(N, -1)
    rows = []
    groups = [(p[i], y[i], valid[i]) for i in range(N)] if kw["per_image"] else \
        [(p.transpose(0, 1).reshape(C, -1), y.reshape(-1), valid.reshape(-1))]
    for pg, yg, vg in groups:
        for c in range(C):
            e = ((yg[vg] == c).double() - pg[c][vg]).abs()
            rows.append(e)
    gaps = [e.sort().values.diff().min().item() for e in rows if e.numel() > 1]
    return min(gaps, default=float("inf"))


def check_against_reference(backend, data):
    """The kernel against the reference on the same rounded inputs, the kernel computing in fp32
    (fp64 for fp64): each rounds its loss and saved gradient once to dtype, the gradient once more
    when scaled by the upstream gradient (helpers.TOLERANCE). Errors sum with Jaccard weights
    g >= 0 of sum <= 1, so the loss' error is at most that of one error, a few fp32 ulps; the
    gradient's, a few ulps of each weight g / classes / groups through the softmax."""
    logits, target, kw = data.draw(lovasz_case())
    dtypes = [torch.float32, torch.float16, torch.bfloat16] + ([torch.float64] if backend == "cpu" else [])
    dtype = data.draw(st.sampled_from(dtypes))
    loss, grad = run(logits, target, kw, backend, dtype)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    rounded = logits.to(dtype).to(compute)
    ref_loss, ref_grad = run(rounded, target, kw, "reference", compute)
    assert loss.dtype == dtype and grad.dtype == dtype and loss.shape == () and grad.shape == logits.shape
    assert_close(loss, ref_loss.to(dtype), dtype)
    if min_error_gap(rounded, target, kw) > GAP[compute]:
        assert_close(grad, ref_grad.to(dtype), dtype)


@pytest.mark.skipif(not any(b == "cpu" for b, d in BACKENDS), reason="the CPU kernels are not built")
@given(data=st.data())
def test_cpu_matches_reference(data):
    check_against_reference("cpu", data)


@pytest.mark.skipif(not any(b == "triton" for b, d in BACKENDS), reason="Triton cannot run here")
@given(data=st.data())
@settings(max_examples=10)  # the Triton interpreter is slow
def test_triton_matches_reference(data):
    check_against_reference("triton", data)


@pytest.mark.parametrize("backend", [b for b, d in BACKENDS], ids=backend_ids(BACKENDS))
@given(seed=st.integers(0, 2**31 - 1), per_image=st.booleans(), classes=st.sampled_from(["present", "all"]),
       kind=st.sampled_from(["saturated", "identical", "uniform"]))
@settings(max_examples=15)
def test_tied_errors_loss_only(backend, seed, per_image, classes, kind):
    """Tie-heavy inputs (saturated logits: errors exactly 0 or 1; identical pixels; equal logits):
    the loss does not depend on the order of ties."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = 2, 4, 3, 5
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[0, 0, 0] = -100
    if kind == "saturated":
        x = torch.randn(n, c, h, w, generator=g).sign() * 1e4
    elif kind == "identical":
        x = torch.randn(1, c, 1, 1, generator=g).expand(n, c, h, w).contiguous()
    else:
        x = torch.zeros(n, c, h, w)
    kw = dict(per_image=per_image, classes=classes)
    loss, grad = run(x, target, kw, backend, torch.float32)
    ref = reference.lovasz_softmax_loss(x.double(), target, per_image=per_image, classes=classes)
    assert_close(loss, ref.float(), torch.float32)
    assert torch.isfinite(grad).all()


def test_reference_by_hand():
    """Three pixels, two classes, p(class 0) = 0.9, 0.4, 0.2, labels 0, 0, 1. Class 0: errors 0.1,
    0.6, 0.2 sorted 0.6 (fg), 0.2 (bg), 0.1 (fg), Jaccard 1/2, 2/3, 1, so g = 1/2, 1/6, 1/3 and
    loss_0 = 0.3 + 0.2/6 + 0.1/3 = 11/30. Class 1: errors 0.1 (bg), 0.6 (bg), 0.2 (fg) sorted
    0.6 (bg), 0.2 (fg), 0.1 (bg), Jaccard 1/2, 1, 1, g = 1/2, 1/2, 0, loss_1 = 2/5."""
    p0 = torch.tensor([0.9, 0.4, 0.2], dtype=torch.float64)
    x = torch.log(torch.stack([p0, 1 - p0])).reshape(1, 2, 1, 3)
    t = torch.tensor([[[0, 0, 1]]])
    for backend in ["reference"] + [b for b, d in BACKENDS]:
        xb, tb = on(backend, x if backend != "triton" else x.float(), t)
        assert float(marsops.lovasz_softmax_loss(xb, tb, backend=backend)) == pytest.approx(23 / 60, rel=1e-6)
        assert float(marsops.lovasz_softmax_loss(xb, tb, classes=[1], backend=backend)) == pytest.approx(0.4, rel=1e-6)
        assert float(marsops.lovasz_softmax_loss(xb, tb, classes=[0], backend=backend)) == pytest.approx(11 / 30,
                                                                                                        rel=1e-6)


@pytest.mark.parametrize("backend", ["reference"] + [b for b, d in BACKENDS])
@pytest.mark.parametrize("per_image", [False, True])
def test_matches_smp(backend, per_image):
    """smp's LovaszLoss(mode="multiclass") is Berman's lovasz_softmax with classes="present". Where
    it differs (not compared): it raises for C = 1, returns an empty tensor when an image (with
    per_image) or the batch has no valid pixel, ignores nothing with ignore_index=None, and fails
    on float64 logits (its lovasz_grad casts to float32)."""
    smp = pytest.importorskip("segmentation_models_pytorch.losses")
    g = torch.Generator().manual_seed(11)
    for c, shape in ((2, (3, 6, 7)), (5, (2, 4, 9)), (7, (1, 5, 5))):
        x = torch.randn((shape[0], c) + shape[1:], generator=g)
        t = torch.randint(0, c, shape, generator=g)
        t[:, 0, :3] = 255
        ours, grad = run(x, t, dict(per_image=per_image, ignore_index=255), backend, torch.float32, upstream=1.0)
        xb = x.clone().requires_grad_()
        theirs = smp.LovaszLoss("multiclass", per_image=per_image, ignore_index=255)(xb, t)
        theirs.backward()
        assert_close(ours, theirs.detach(), torch.float32)
        assert_close(grad, xb.grad, torch.float32)


@pytest.mark.parametrize("backend", [b for b, d in BACKENDS], ids=backend_ids(BACKENDS))
def test_nothing_to_score_costs_nothing(backend):
    """No valid pixel, no image, or (per_image) an image with nothing to score: 0 with a zero
    gradient; such an image still counts in the per_image mean (Berman's convention)."""
    for shape, per_image in (((2, 3, 4, 4), False), ((2, 3, 4, 4), True), ((0, 3, 4, 4), False),
                             ((0, 3, 4, 4), True)):
        x = torch.randn(shape)
        t = torch.full((shape[0],) + shape[2:], -100)
        for classes in ("present", "all", [1]):
            loss, grad = run(x, t, dict(classes=classes, per_image=per_image), backend, torch.float32, upstream=1.0)
            assert float(loss) == 0 and not grad.any()
    x = torch.randn(2, 3, 4, 4)
    t = torch.randint(0, 3, (2, 4, 4))
    one, _ = run(x[:1], t[:1], dict(per_image=True), backend, torch.float32)
    t[1] = -100
    both, _ = run(x, t, dict(per_image=True), backend, torch.float32)
    assert_close(both, one / 2, torch.float32)


@pytest.mark.parametrize("backend", [b for b, d in BACKENDS], ids=backend_ids(BACKENDS))
def test_nan_and_inf_at_ignored_pixels_change_nothing(backend):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 4, 4, generator=g)
    t = torch.randint(0, 5, (2, 4, 4), generator=g)
    t[:, 0, :3] = -100
    dirty = x.clone()
    dirty[0, :, 0, 0], dirty[1, 2, 0, 1], dirty[1, :, 0, 2] = float("nan"), float("inf"), -float("inf")
    clean_loss, clean_grad = run(x, t, dict(), backend, torch.float32)
    loss, grad = run(dirty, t, dict(), backend, torch.float32)
    assert torch.equal(loss, clean_loss) and torch.equal(grad, clean_grad)


@pytest.mark.parametrize("backend", [b for b, d in BACKENDS], ids=backend_ids(BACKENDS))
def test_labels_out_of_range_raise(backend):
    device = DEVICE[backend]
    for bad in (3, -1, 200):
        code = (f"marsops.lovasz_softmax_loss(torch.randn(2, 3, 2, 2, device='{device}'), torch.tensor([[[0, 1], "
                f"[2, {bad}]], [[0, 0], [0, 0]]], device='{device}'), backend='{backend}')")
        assert_label_error(device, code, "outside")
    with pytest.raises(ValueError, match="outside"):
        reference.lovasz_softmax_loss(torch.randn(1, 3, 1, 2), torch.tensor([[[0, 3]]]))


@pytest.mark.parametrize("call_,error,match", [
    (lambda: marsops.lovasz_softmax_loss(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long)),
     ValueError, "does not match"),
    (lambda: marsops.lovasz_softmax_loss(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4)), TypeError, "integer"),
    (lambda: marsops.lovasz_softmax_loss(torch.zeros(2, 3, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4,
                                         dtype=torch.long)), TypeError, "floating"),
    (lambda: marsops.lovasz_softmax_loss(torch.randn(2, 3, 4, 4), [[0]]), TypeError, "torch.Tensor"),
    (lambda: marsops.lovasz_softmax_loss(torch.randn(2, 0, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)),
     ValueError, "C >= 1"),
    (lambda: marsops.lovasz_softmax_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long),
                                         classes="some"), ValueError, "'present', 'all'"),
    (lambda: marsops.lovasz_softmax_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), classes=[]),
     ValueError, "non-empty subset"),
    (lambda: marsops.lovasz_softmax_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), classes=[3]),
     ValueError, "non-empty subset"),
    (lambda: marsops.lovasz_softmax_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long),
                                         classes=[1, 1]), ValueError, "each class once"),
    (lambda: marsops.lovasz_softmax_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), classes=1),
     TypeError, "sequence of class indices"),
    (lambda: marsops.lovasz_softmax_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long),
                                         per_image="yes"), TypeError, "True or False"),
    (lambda: marsops.lovasz_softmax_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long),
                                         ignore_index=1.5), TypeError, "integer"),
    (lambda: marsops.lovasz_softmax_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long),
                                         backend="gpu"), ValueError, "unknown backend"),
])
def test_bad_arguments_raise_clear_errors(call_, error, match):
    with pytest.raises(error, match=match):
        call_()


@pytest.mark.skipif(not any(b == "triton" for b, d in BACKENDS), reason="Triton cannot run here")
def test_triton_refuses_float64():
    with pytest.raises(TypeError, match="fp32"):
        marsops.lovasz_softmax_loss(*on("triton", torch.randn(2, 3, 4, dtype=torch.float64),
                                        torch.zeros(2, 4, dtype=torch.long)), backend="triton")


def test_module_and_exports():
    assert "lovasz_softmax_loss" in marsops.__all__ and "LovaszSoftmaxLoss" in marsops.__all__
    x = torch.randn(2, 3, 5, 5)
    t = torch.randint(0, 3, (2, 5, 5))
    module = marsops.LovaszSoftmaxLoss(classes=[0, 2], per_image=True, ignore_index=1)
    assert "per_image=True" in repr(module)
    assert torch.equal(module(x, t), marsops.lovasz_softmax_loss(x, t, classes=[0, 2], per_image=True,
                                                                 ignore_index=1))


def test_gradcheck_reference_float64():
    """The reference's autograd gradient is the Lovász subgradient: finite differences agree on
    tie-free inputs (the sort order does not change within the step)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=g).requires_grad_()
    t = torch.randint(0, 3, (2, 3, 4), generator=g)
    t[0, 0, :2] = -100
    for per_image in (False, True):
        torch.autograd.gradcheck(lambda x: reference.lovasz_softmax_loss(x, t, per_image=per_image), (x,))


@pytest.mark.parametrize("backend", [b for b, d in BACKENDS], ids=backend_ids(BACKENDS))
def test_opcheck(backend):
    x, t = on(backend, torch.randn(2, 4, 3, 5), torch.randint(0, 4, (2, 3, 5)))
    x.requires_grad_()
    for per_image, only_present in ((False, True), (True, False)):
        args = (x, t, [0, 1, 2, 3], only_present, per_image, -100, True, backend)
        torch.library.opcheck(torch.ops.marsops.lovasz_softmax_loss.default, args)


@pytest.mark.parametrize("backend", ["reference"] + [b for b, d in BACKENDS])
def test_torch_compile_fullgraph(backend):
    assert_compiles_like_eager(marsops.LovaszSoftmaxLoss(classes=[1, 2, 3], per_image=True, backend=backend), 4,
                               torch.randint(0, 4, (2, 8, 8)), device=DEVICE.get(backend, "cpu"))


@pytest.mark.parametrize("backend", [b for b, d in BACKENDS], ids=backend_ids(BACKENDS))
@pytest.mark.parametrize("per_image", [False, True])
def test_images_larger_than_a_chunk(backend, per_image):
    """Images of 2257 pixels, a batch of 6771: the CPU kernel's 4096-pixel chunks straddle images
    and its radix sort sees every digit vary. In fp64 (cpu) the errors of 2257 pixels lie far
    further apart than fp64's roundoff, so the gradients compare too; Triton computes in fp32,
    where such errors may fall within roundoff of each other: its loss compares."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(3, 5, 37, 61, generator=g, dtype=torch.float64)
    t = torch.randint(0, 5, (3, 37, 61), generator=g)
    t[1, :5] = -100
    t[2][t[2] == 3] = 1  # a class absent from one image
    dtype = torch.float64 if backend == "cpu" else torch.float32
    for classes in ("present", "all"):
        kw = dict(per_image=per_image, classes=classes)
        loss, grad = run(x, t, kw, backend, dtype)
        ref_loss, ref_grad = run(x, t, kw, "reference", torch.float64)
        assert_close(loss, ref_loss.to(dtype), dtype)
        if dtype == torch.float64:
            assert min_error_gap(x, t, dict(kw, ignore_index=-100)) > GAP[torch.float64]
            assert_close(grad, ref_grad, dtype)


@pytest.mark.skipif(not any(b == "cpu" for b, d in BACKENDS), reason="the CPU kernels are not built")
def test_cpu_results_do_not_depend_on_the_thread_count():
    g = torch.Generator().manual_seed(13)
    x = torch.randn(4, 3, 50, 90, generator=g)
    t = torch.randint(0, 3, (4, 50, 90), generator=g)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            results.append([run(x, t, dict(per_image=p), "cpu", torch.float32) for p in (False, True)])
    finally:
        torch.set_num_threads(threads)
    for (l1, g1), (l2, g2) in zip(*results):
        assert torch.equal(l1, l2) and torch.equal(g1, g2)


def test_numpy_classes_and_the_triton_class_limit():
    """Review: a numpy array of classes compared elementwise with "present"; Triton's one-tile kernels
    cannot compile past 65536 classes, so more than 1024 are refused there."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 5, 6, generator=g), torch.randint(0, 4, (2, 5, 6), generator=g)
    for b, _ in BACKENDS:
        torch.testing.assert_close(marsops.lovasz_softmax_loss(*on(b, x, t), classes=np.array([1, 2]), backend=b).cpu(),
                                   marsops.lovasz_softmax_loss(x, t, classes=[1, 2], backend="reference"),
                                   rtol=1e-5, atol=1e-6)
    if any(b == "triton" for b, _ in BACKENDS):
        with pytest.raises(ValueError, match="up to 1024 classes"):
            marsops.lovasz_softmax_loss(*on("triton", torch.randn(1, 1025, 2), torch.zeros(1, 2, dtype=torch.long)),
                                        backend="triton")
