"""Focal loss: every kernel against the reference, against F.cross_entropy (an oracle we did not
write), gradcheck, extreme inputs, bad inputs, opcheck and torch.compile."""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import marsops
from marsops import reference
from helpers import (EMULATED_CUDA, HAS_GPU, assert_close, assert_label_error, backend_ids, computes_fp64,
                     kernel_backends, requires_gpu, run_under_cpu_capability)

BACKENDS = kernel_backends("focal_loss_forward")
REPORT_WEIGHTS = [0.0, 0.0359, 0.0523, 0.0663, 9.2720]


@st.composite
def focal_case(draw, max_pixels=300):
    """Random logits/target/weight and options, with the awkward corners drawn on purpose."""
    n = draw(st.integers(1, 4))
    c = draw(st.integers(2, 19))
    spatial = draw(st.sampled_from([(), (1,), (7,), (3, 5), (4, 9), (2, 3, 4), (5, 33)]))
    gamma = draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.floats(0.0, 5.0)))
    reduction = draw(st.sampled_from(marsops.focal.REDUCTIONS))
    ignore_index = draw(st.sampled_from([-100, 0, 255, c - 1]))
    use_weight = draw(st.booleans())
    scale = draw(st.sampled_from([1.0, 5.0, 1e4]))
    target_dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.uint8]))
    if target_dtype == torch.uint8 and ignore_index < 0:
        ignore_index = 255
    non_contiguous = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    shape = (n, c) + spatial
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if draw(st.booleans()):  # ties and one-hot-like rows
        logits[:, : c // 2] = logits[:, :1]
    target = torch.randint(0, c, (n,) + spatial, generator=g)
    drop = torch.rand(target.shape, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))
    target[drop] = ignore_index
    target = target.to(target_dtype)
    weight = torch.rand(c, generator=g, dtype=torch.float64) * 3 if use_weight else None
    if non_contiguous:  # the same values, laid out with a class-minor stride
        logits = logits.movedim(1, -1).contiguous().movedim(-1, 1)
    return dict(logits=logits, target=target, weight=weight, gamma=gamma, ignore_index=ignore_index,
                reduction=reduction, label_smoothing=draw(st.sampled_from([0.0, 0.0, 0.1, 0.6])))


def upstream_gradient(shape, dtype):
    """A varied upstream gradient, made in fp64 and rounded once to `dtype` (torch.linspace in fp16
    itself is off by up to 1 %: its steps accumulate in half precision)."""
    n = 1
    for d in shape:
        n *= d
    return torch.linspace(-1, 2, n, dtype=torch.float64).to(dtype).view(shape)


def run(case, backend, device, dtype, upstream_dtype=None):
    """Loss and d(loss)/d(logits) through the upstream gradient above, rounded to `upstream_dtype`
    (default: the loss's dtype), so a reference in higher precision sees the same values."""
    logits = case["logits"].to(device=device, dtype=dtype, copy=True).requires_grad_()
    target = case["target"].to(device)
    weight = None if case["weight"] is None else case["weight"].to(device=device, dtype=torch.float32)
    loss = marsops.focal_loss(logits, target, weight, case["gamma"], case["ignore_index"], case["reduction"],
                              backend=backend, label_smoothing=case.get("label_smoothing", 0.0))
    upstream = upstream_gradient(loss.shape, upstream_dtype or loss.dtype).to(device=device, dtype=loss.dtype)
    (grad,) = torch.autograd.grad(loss, logits, upstream)
    return loss, grad


def reference_run(case, dtype):
    """The reference on the same (rounded) inputs and upstream gradient, computed in fp32 (fp64 for
    fp64). A kernel's output then differs from it by its own fp32 arithmetic plus at most two
    roundings to `dtype` (the saved gradient, then its product with the upstream gradient) where
    the reference rounds once: helpers.TOLERANCE allows several units of roundoff per dtype."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    rounded = dict(case, logits=case["logits"].to(dtype).to(compute))
    return run(rounded, "reference", "cpu", compute, upstream_dtype=dtype)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
@given(case=focal_case(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
def test_matches_reference(backend, device, case, dtype):
    if dtype == torch.float64 and not computes_fp64(backend):
        dtype = torch.float32  # cuda / triton compute in fp32 and reject fp64 (tested below)
    loss, grad = (t.cpu() for t in run(case, backend, device, dtype))  # compared with the reference on the CPU
    ref_loss, ref_grad = reference_run(case, dtype)
    assert loss.dtype == dtype and grad.dtype == dtype and loss.shape == ref_loss.shape
    # Rounded to the output dtype, the fp32 reference can overflow (an fp16 loss above 65504 is
    # inf, as with F.cross_entropy); the kernel must be non-finite exactly where it is.
    ref_loss, ref_grad = ref_loss.to(dtype), ref_grad.to(dtype)
    assert torch.equal(torch.isfinite(loss), torch.isfinite(ref_loss))
    assert torch.isfinite(grad).all() and torch.isfinite(ref_grad).all()
    assert_close(loss, ref_loss, dtype)
    assert_close(grad, ref_grad, dtype)


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + BACKENDS,
                         ids=backend_ids([("reference", "cpu")] + BACKENDS))
@given(case=focal_case())
def test_gamma_zero_is_torch_cross_entropy(backend, device, case):
    """With gamma = 0 and weighted_mean, the focal loss is F.cross_entropy: an oracle we did not write."""
    case = dict(case, gamma=0.0, reduction="weighted_mean", target=case["target"].long())
    if case["ignore_index"] == 255:
        case["ignore_index"] = -100
        case["target"][case["target"] == 255] = -100
    logits = case["logits"].float()
    weight = None if case["weight"] is None else case["weight"].float()
    expected = F.cross_entropy(logits, case["target"], weight=weight, ignore_index=case["ignore_index"],
                               label_smoothing=case["label_smoothing"])
    if not torch.isfinite(expected):
        return  # nothing counted: torch gives NaN, marsops defines 0 (test_all_ignored)
    loss, grad = run(dict(case, logits=logits), backend, device, torch.float32)
    x = logits.clone().requires_grad_()
    F.cross_entropy(x, case["target"], weight=weight, ignore_index=case["ignore_index"],
                    label_smoothing=case["label_smoothing"]).backward()
    assert_close(loss, expected)
    # For 'weighted_mean', run() scales the scalar loss by the upstream gradient linspace(-1, 2, 1) = -1.
    assert_close(grad, -x.grad)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.7])
@pytest.mark.parametrize("reduction", marsops.focal.REDUCTIONS)
def test_gradcheck_float64(gamma, reduction):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, dtype=torch.float64, generator=g).requires_grad_()
    target = torch.randint(0, 4, (2, 3, 5), generator=g)
    target[0, 0, :2] = -100
    weight = torch.tensor([0.5, 1.0, 2.0, 0.0], dtype=torch.float64)
    for backend in ("reference", "cpu"):
        fn = lambda x: marsops.focal_loss(x, target, weight, gamma, -100, reduction, backend=backend)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (logits,))


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 4.5])
def test_extreme_logits_stay_finite(backend, device, gamma):
    """+-1e4 logits, exact ties and exactly one-hot softmax rows give finite values and gradients."""
    logits = torch.tensor([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0], [-1e4, 1e4, -1e4], [3e4, 3e4, -3e4],
                           [80.0, 0.0, 0.0]], device=device)
    for t in range(3):
        target = torch.full((5,), t, device=device)
        x = logits.clone().requires_grad_()
        loss = marsops.focal_loss(x, target, gamma=gamma, backend=backend)
        loss.backward()
        ref_x = logits.cpu().clone().requires_grad_()
        ref = reference.focal_loss(ref_x, target.cpu(), gamma=gamma)
        ref.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        assert_close(loss, ref)
        assert_close(x.grad, ref_x.grad)


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + BACKENDS,
                         ids=backend_ids([("reference", "cpu")] + BACKENDS))
@pytest.mark.parametrize("reduction", ["mean", "weighted_mean"])
def test_all_ignored_gives_zero_loss_and_gradient(backend, device, reduction):
    x = torch.randn(2, 3, 4, device=device, requires_grad=True)
    target = torch.full((2, 4), -100, device=device)
    loss = marsops.focal_loss(x, target, reduction=reduction, backend=backend)
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()
    # Only zero-weight classes present: weighted_mean's denominator is 0 too.
    w = torch.tensor([0.0, 1.0, 1.0], device=device)
    loss = marsops.focal_loss(x, torch.zeros(2, 4, dtype=torch.long, device=device), w,
                              reduction="weighted_mean", backend=backend)
    assert loss.item() == 0.0


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_report_recipe_batch(backend, device):
    """The report's setting: 5 classes, background weight 0, gamma 0.5, 64x128 images."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 64, 128, generator=g)
    target = torch.randint(0, 5, (3, 64, 128), generator=g)
    case = dict(logits=logits, target=target, weight=torch.tensor(REPORT_WEIGHTS), gamma=0.5,
                ignore_index=-100, reduction="mean")
    loss, grad = run(case, backend, device, torch.float32)
    ref_loss, ref_grad = reference_run(case, torch.float32)
    assert_close(loss, ref_loss)
    assert_close(grad, ref_grad)
    background = (target == 0).unsqueeze(1).expand_as(logits)
    assert (grad.cpu()[background] == 0).all()


def test_held_gradient_is_not_overwritten():
    """The CPU kernel reuses its gradient buffer only when nobody holds it any more."""
    x = torch.randn(64, 5, 64, 64, requires_grad=True)
    t = torch.randint(0, 5, (64, 64, 64))
    marsops.focal_loss(x, t, backend="cpu").backward()
    held = x.grad
    kept = held.clone()
    x.grad = None
    x2 = (torch.randn(64, 5, 64, 64) * 3).requires_grad_()
    marsops.focal_loss(x2, t, backend="cpu").backward()
    assert torch.equal(held, kept)
    assert not torch.equal(x2.grad, held)


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + BACKENDS,
                         ids=backend_ids([("reference", "cpu")] + BACKENDS))
def test_labels_out_of_range_raise(backend, device):
    for bad in (3, -1, 7):
        for reduction in ("none", "mean"):
            assert_label_error(device, f"x = torch.randn(2, 3, 4, device='{device}', requires_grad=True)\n"
                               f"t = torch.zeros(2, 4, dtype=torch.long, device='{device}')\nt[1, 2] = {bad}\n"
                               f"marsops.focal_loss(x, t, reduction='{reduction}', backend='{backend}')", "outside")


# The mean reductions count the labels before the gradient is written. The C++ CPU kernels count
# int64 labels of up to 8 classes 4 at a time with AVX2 / AVX-512 (label t adds 1 << 8t to a lane
# of byte counters), the rest label by label: 3 x 5 x 37 pixels are whole vectors and a tail; the
# ignored label lies outside [0, C) or is a class; a bad label sits in a vector or in the tail.
@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
@pytest.mark.parametrize("num_classes", [1, 2, 5, 8, 9])
@pytest.mark.parametrize("ignore_index", [-100, 0])
def test_label_counts_of_whole_vectors_and_tail(backend, device, num_classes, ignore_index):
    g = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(3, num_classes, 5, 37, generator=g, dtype=torch.float64)
    target = torch.randint(0, num_classes, (3, 5, 37), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.3] = ignore_index
    weight = torch.rand(num_classes, generator=g, dtype=torch.float64) + 0.5
    for reduction in ("mean", "weighted_mean"):
        case = dict(logits=logits, target=target, weight=weight, gamma=0.5, ignore_index=ignore_index,
                    reduction=reduction)
        loss, grad = run(case, backend, device, torch.float32)
        ref_loss, ref_grad = reference_run(case, torch.float32)
        assert_close(loss.cpu(), ref_loss)
        assert_close(grad.cpu(), ref_grad)
    if device != "cpu" or EMULATED_CUDA:
        return  # device-side assertions: test_labels_out_of_range_raise covers the GPU and emulation
    # In a whole vector, in the tail; labels whose low 32 bits are a class or the ignored label
    # (a vector compare of truncated labels would miss them); a label past the classes whose byte
    # counter exists (C < 8); labels whose 8 t wraps to a class's shift, 8 (C - 1) or 0.
    bad_labels = [num_classes, num_classes + 6, 2**32 + num_classes - 1, 2**32 + (ignore_index % 2**32), -1,
                  2**61 + num_classes - 1, -2**63]
    for position in (100, target.numel() - 3):
        for label in bad_labels:
            if label == ignore_index:
                continue
            bad = target.clone()
            bad.view(-1)[position] = label
            leaf = logits.float().requires_grad_()
            named = f"label {label}, " if backend == "cpu" else ""  # Triton does not name it
            with pytest.raises(ValueError, match=f"target contains {named}.*outside"):
                marsops.focal_loss(leaf, bad, weight.float(), 0.5, ignore_index, "mean", backend=backend)


def test_label_counts_across_chunks_with_ignore_index_equal_to_num_classes():
    """More than one 64K-pixel counting chunk, and the ignored label just past the last class."""
    if ("cpu", "cpu") not in BACKENDS:
        pytest.skip("the C++ CPU kernels are not built")
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 5, 181, 200, generator=g)
    target = torch.randint(0, 6, (2, 181, 200), generator=g)  # 72400 pixels, label 5 ignored
    weight = torch.rand(5, generator=g) + 0.5
    for reduction in ("mean", "weighted_mean"):
        case = dict(logits=logits, target=target, weight=weight, gamma=0.5, ignore_index=5, reduction=reduction)
        loss, grad = run(case, "cpu", "cpu", torch.float32)
        ref_loss, ref_grad = reference_run(case, torch.float32)
        assert_close(loss, ref_loss)
        assert_close(grad, ref_grad)


# A class that never occurs adds nothing to the weighted mean's denominator, whatever its weight:
# the C++ CPU pre-pass once added count * weight per class, and 0 * NaN made the whole call NaN
# with a gradient (the no-gradient path and the reference sum per pixel and never read it).
@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + BACKENDS,
                         ids=backend_ids([("reference", "cpu")] + BACKENDS))
@pytest.mark.parametrize("absent_weight", [float("nan"), float("inf")])
def test_absent_class_weight_does_not_reach_the_weighted_mean(backend, device, absent_weight):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 40, generator=g)
    target = torch.randint(0, 2, (2, 40), generator=g)
    target[0, 5] = 2  # class 2 occurs only where ignored below
    weight = torch.tensor([1.0, 2.0, absent_weight])
    for ignore_index in (-100, 2):
        labels = target if ignore_index == 2 else target.clamp(max=1)
        leaf = logits.to(device).requires_grad_()
        loss = marsops.focal_loss(leaf, labels.to(device), weight.to(device), 2.0, ignore_index, "weighted_mean",
                                  backend=backend)
        loss.backward()
        with torch.no_grad():
            plain = marsops.focal_loss(logits.to(device), labels.to(device), weight.to(device), 2.0, ignore_index,
                                       "weighted_mean", backend=backend)
        expected = reference.focal_loss(logits, labels, weight, 2.0, ignore_index, "weighted_mean")
        assert torch.isfinite(loss) and torch.isfinite(leaf.grad).all()
        assert_close(loss.detach().cpu(), expected)
        assert_close(plain.cpu(), expected)


# Labels of other integer dtypes (int32, uint8 masks from PNGs): the C++ CPU kernels widen them to
# int64 (a counting block or a kernel range at a time) to run the int64 vector code, up to 8
# classes. The same labels as int64 must give the same bits; over more than one 64K-pixel counting
# chunk and a tail that is not whole 4096-label blocks; a bad label at block edges and in the tail
# must be named.
@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int16, torch.int8])
def test_narrow_label_dtypes_match_int64_labels(dtype):
    if ("cpu", "cpu") not in BACKENDS:
        pytest.skip("the C++ CPU kernels are not built")
    g = torch.Generator().manual_seed(11)
    for num_classes, ignore_index in ((5, 0), (5, 100), (8, 7), (9, 100)):
        logits = torch.randn(2, num_classes, 181, 200, generator=g)  # 72400 pixels
        target = torch.randint(0, num_classes, (2, 181, 200), generator=g)
        target[torch.rand(target.shape, generator=g) < 0.2] = ignore_index
        weight = torch.rand(num_classes, generator=g) + 0.5
        narrow = target.to(dtype)
        for reduction in ("mean", "weighted_mean", "sum", "none"):
            outs = []
            for labels in (narrow, target):
                leaf = logits.clone().requires_grad_()
                loss = marsops.focal_loss(leaf, labels, weight, 0.5, ignore_index, reduction, backend="cpu")
                loss.sum().backward()
                outs.append((loss.detach(), leaf.grad))
            assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1]), (num_classes, reduction)
        for position in (4095, 4096, 65536 + 100, target.numel() - 3):
            bad = narrow.clone()
            bad.view(-1)[position] = num_classes + 3
            with pytest.raises(ValueError, match=f"target contains label {num_classes + 3}, .*outside"):
                marsops.focal_loss(logits.clone().requires_grad_(), bad, weight, 0.5, ignore_index, "mean",
                                   backend="cpu")


# The C++ CPU kernels take the log of each pixel's softmax sum s = sum_c exp(x_c - max) in [1, C]
# with their own polynomial (softmax_block.h, log_softmax_sum) on AVX2 and AVX-512. With gamma 0,
# weight 1 and the label on the largest logit, the loss is exactly log s. Its error: that of s
# (exp_u20's 2 ulp = 4 units u = 2^-24 each, C - 1 roundings of the sum: (C + 3) u relative,
# which |d log s| = |ds| / s <= |ds| turns into absolute) plus the log's (Cephes' 7.6e-8 and
# the result's rounding, 6e-8, relative to log s <= log C).
@pytest.mark.parametrize("num_classes", [1, 2, 5, 19, 40])
@pytest.mark.parametrize("scale", [1e-4, 0.3, 3.0, 30.0])
def test_log_of_softmax_sum_is_accurate(num_classes, scale):
    if EMULATED_CUDA or ("cpu", "cpu") not in BACKENDS:
        pytest.skip("tests the C++ CPU kernels' own log")
    g = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(2, num_classes, 9, 50, generator=g) * scale
    logits[0, :, 0, :] = 0.25  # equal logits: s = C exactly
    logits[1, :, 0, :] = 1.0 + torch.arange(num_classes).view(-1, 1) * 40.0  # one dominant class: s = 1
    target = logits.argmax(1)
    loss = marsops.focal_loss(logits, target, None, 0.0, -100, "none", backend="cpu").double()
    x = logits.double()
    expected = torch.logsumexp(x, 1) - x.amax(1)
    torch.testing.assert_close(loss, expected, rtol=0, atol=(num_classes + 3) * 2.0**-24 + 1.4e-7 * math.log(num_classes))


@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") is not None, reason="already the child process")
@pytest.mark.skipif(EMULATED_CUDA, reason="the cpu backend runs the emulated CUDA kernels, not the SIMD ones")
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_label_counts_and_log_under_every_cpu_capability(capability):
    """The label counts, the narrow label dtypes and the log above again under the CPU capabilities
    this process does not run (each has its own vector count and log)."""
    if ("cpu", "cpu") not in BACKENDS:
        pytest.skip("the C++ CPU kernels are not built")
    out = run_under_cpu_capability(capability, __file__,
                                   "(test_label_counts_of_whole_vectors_and_tail and cpu-cpu) or "
                                   "test_log_of_softmax_sum_is_accurate or test_narrow_label_dtypes")
    assert "34 passed" in out, out[-2000:]  # 5 class counts x 2 ignore labels; 5 x 4 logs; 4 label dtypes


@pytest.mark.parametrize("call,match", [
    (lambda: marsops.focal_loss(torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long)), "does not match"),
    (lambda: marsops.focal_loss(torch.randn(3), torch.zeros(3, dtype=torch.long)), "must be"),
    (lambda: marsops.focal_loss(torch.randn(2, 3), torch.zeros(2)), "integer"),
    (lambda: marsops.focal_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long)), "floating"),
    (lambda: marsops.focal_loss(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), torch.ones(4)), "weight"),
    (lambda: marsops.focal_loss(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), gamma=-1.0), "gamma"),
    (lambda: marsops.focal_loss(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), reduction="avg"), "reduction"),
    (lambda: marsops.focal_loss(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), backend="fast"), "unknown"),
    (lambda: marsops.focal_loss(torch.randn(2, 3), torch.zeros(2, dtype=torch.long, device="meta")), "one device"),
    (lambda: marsops.focal_loss([[1.0]], torch.zeros(1, dtype=torch.long)), "torch.Tensor"),
])
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        call()


def test_compiled_op_checks_its_own_inputs():
    """The C++ op validates too, for callers of torch.ops.marsops directly."""
    op = torch.ops.marsops.focal_loss_forward
    with pytest.raises(RuntimeError, match="does not match"):
        op(torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long), None, 2.0, -100, 2, False, False, 0.0)
    with pytest.raises(RuntimeError, match="gamma"):
        op(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), None, -2.0, -100, 2, False, False, 0.0)


def test_empty_batch():
    x = torch.randn(0, 5, 4, 4, requires_grad=True)
    t = torch.zeros(0, 4, 4, dtype=torch.long)
    for backend in ["reference"] + [b for b, d in BACKENDS if d == "cpu"]:
        assert marsops.focal_loss(x, t, backend=backend).item() == 0.0
        assert marsops.focal_loss(x, t, reduction="none", backend=backend).shape == (0, 4, 4)


def test_module_and_defaults():
    crit = marsops.FocalLoss(weight=REPORT_WEIGHTS, gamma=0.5)
    assert crit.weight.dtype == torch.float32 and "gamma=0.5" in repr(crit)
    x, t = torch.randn(2, 5, 8, 8), torch.randint(0, 5, (2, 8, 8))
    assert torch.allclose(crit(x, t), marsops.focal_loss(x, t, torch.tensor(REPORT_WEIGHTS), gamma=0.5))
    assert marsops.backends()["reference"].startswith("available")


def test_env_variable_forces_backend(monkeypatch):
    monkeypatch.setenv("MARSOPS_BACKEND", "reference")
    assert marsops.backend.resolve("focal_loss_forward", torch.zeros(1)) == "reference"
    monkeypatch.setenv("MARSOPS_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="cannot run"):
        marsops.backend.resolve("focal_loss_forward", torch.zeros(1))


FP32_ONLY = [(b, d) for b, d in BACKENDS if not computes_fp64(b)]


@pytest.mark.parametrize("backend,device", FP32_ONLY, ids=backend_ids(FP32_ONLY))
def test_fp64_rejected_where_not_supported(backend, device):
    # marsops refuses before the cuda and triton ops run; the emulated CUDA op's own check refuses too.
    with pytest.raises((TypeError, RuntimeError) if EMULATED_CUDA else TypeError, match="fp32"):
        marsops.focal_loss(torch.randn(2, 3, dtype=torch.float64, device=device),
                           torch.zeros(2, dtype=torch.long, device=device), backend=backend)


def _opcheck_samples(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 4, generator=g).to(device)
    t = torch.randint(0, 5, (2, 3, 4), generator=g).to(device)
    w = torch.rand(5, generator=g).to(device)
    for reduction in range(4):
        for compute_grad in (False, True):
            yield (x.clone().requires_grad_(compute_grad), t, w, 0.5, -100, reduction, compute_grad, False, 0.0)
    yield (x.clone().requires_grad_(), t, None, 2.0, 1, 0, True, False, 0.0)
    yield (x.clone().requires_grad_(), t, w, 1.5, 1, 3, True, True, 0.1)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_opcheck(backend, device):
    op = torch.ops.marsops.focal_loss_forward_triton if backend == "triton" else torch.ops.marsops.focal_loss_forward
    for args in _opcheck_samples(device):
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_model_and_loss():
    """A conv model + the fused loss compiles with no graph break and matches eager."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 1))
    crit = marsops.FocalLoss(weight=REPORT_WEIGHTS, gamma=0.5, backend="cpu")
    x, t = torch.randn(4, 1, 16, 32), torch.randint(0, 5, (4, 16, 32))

    def step(x, t):
        return crit(model(x), t)

    compiled = torch.compile(step, fullgraph=True)
    eager_loss = step(x, t)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    loss = compiled(x, t)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert_close(loss, eager_loss)
    for a, b in zip(grads, eager_grads):
        assert_close(a, b)


@requires_gpu
def test_cuda_auto_backend_and_streams():
    """Kernels run on the current stream: results on a side stream match the default stream."""
    x = torch.randn(8, 5, 64, 128, device="cuda", requires_grad=True)
    t = torch.randint(0, 5, (8, 64, 128), device="cuda")
    expected = marsops.focal_loss(x, t, gamma=0.5)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())  # x and t were written on the default stream
    with torch.cuda.stream(s):
        got = marsops.focal_loss(x, t, gamma=0.5)
    torch.cuda.current_stream().wait_stream(s)
    assert_close(got, expected)
    assert HAS_GPU


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_gamma_that_rounds_to_zero_in_fp32(backend, device):
    """Found by hypothesis: gamma = 4e-228 is 0 in fp32; p == 1 exactly must not give 0 * log(0)."""
    case = dict(logits=torch.tensor([[3922.9682, -2235.6402]], dtype=torch.float64), target=torch.tensor([0]),
                weight=None, gamma=4.3805643299057756e-228, ignore_index=-100, reduction="none")
    loss, grad = run(case, backend, device, torch.float32)
    ref_loss, ref_grad = reference_run(case, torch.float32)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert_close(loss, ref_loss)
    assert_close(grad, ref_grad)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_fp16_loss_beyond_its_range_is_inf_like_the_reference(backend, device):
    """Found by hypothesis: a true loss of ~72000 is inf in fp16; the gradient stays finite."""
    logits = torch.tensor([[-1219.1964, 11071.6486, 3754.1489, -12080.1831, -7943.3722, -7644.6599, 18084.5200,
                            -21383.0686, -1508.3507, -17874.8889, -8492.4023, -298.6499, 4148.3124]])
    weight = torch.tensor([2.5857, 2.4354, 0.5978, 2.3871, 2.3236, 1.2385, 2.4081, 2.0690, 1.2890, 0.4230, 2.4034,
                           1.7985, 0.1984])
    case = dict(logits=logits, target=torch.tensor([3]), weight=weight, gamma=0.0, ignore_index=-100,
                reduction="none")
    loss, grad = run(case, backend, device, torch.float16)
    ref = F.cross_entropy(logits.half().float(), torch.tensor([3]), weight=weight, reduction="none").half()
    assert torch.isinf(loss).all() and torch.isinf(ref).all()
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + BACKENDS,
                         ids=backend_ids([("reference", "cpu")] + BACKENDS))
@pytest.mark.parametrize("num_classes", [65, 150, 1000])
def test_many_classes(backend, device, num_classes):
    """Beyond 64 classes the Triton kernel streams the classes in chunks (online softmax); the
    CUDA kernel loops over them. Same results as the reference, with ties and ignored pixels."""
    g = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(2, num_classes, 3, 5, generator=g, dtype=torch.float64) * 4
    logits[0, :, 0, 0] = 1.0  # a pixel of exact ties
    target = torch.randint(0, num_classes, (2, 3, 5), generator=g)
    target[1, 2] = -100
    for reduction in ("none", "mean", "weighted_mean"):
        case = dict(logits=logits, target=target, weight=torch.rand(num_classes, generator=g, dtype=torch.float64),
                    gamma=1.5, ignore_index=-100, reduction=reduction)
        loss, grad = run(case, backend, device, torch.float32)
        ref_loss, ref_grad = reference_run(case, torch.float32)
        assert_close(loss, ref_loss)
        assert_close(grad, ref_grad)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
@pytest.mark.parametrize("layout", ["channels_last", "channels_last_3d", "class_minor_1d"])
def test_channels_last_logits_are_read_in_place(backend, device, layout):
    """NHWC / NDHWC logits (classes contiguous per pixel) are read as they are, and the gradient
    comes back in the logits' memory format, for the convolution backward that wants it."""
    g = torch.Generator().manual_seed(0)
    shape = {"channels_last": (3, 5, 6, 7), "channels_last_3d": (2, 4, 3, 5, 6), "class_minor_1d": (3, 7, 10)}[layout]
    base = torch.randn(shape, generator=g)
    if layout == "class_minor_1d":
        x = base.movedim(1, -1).contiguous().movedim(-1, 1)
    else:
        x = base.contiguous(memory_format=getattr(torch, layout))
    target = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
    target.view(-1)[::4] = -100
    for reduction in ("none", "mean"):
        leaf = x.to(device).detach().requires_grad_()
        cm = torch.zeros(shape[1], shape[1], dtype=torch.int64, device=device)
        loss = marsops.focal_loss(leaf, target.to(device), gamma=0.5, reduction=reduction, backend=backend,
                                  confusion=cm)
        loss.sum().backward()
        ref = base.clone().requires_grad_()
        reference.focal_loss(ref, target, gamma=0.5, reduction=reduction).sum().backward()
        assert_close(loss, reference.focal_loss(base, target, gamma=0.5, reduction=reduction))
        assert_close(leaf.grad, ref.grad)
        assert leaf.grad.stride() == leaf.stride(), (leaf.grad.stride(), leaf.stride())
        assert torch.equal(cm.cpu(), reference.confusion_matrix(base, target, shape[1], -100))
        op = torch.ops.marsops.focal_loss_forward_triton if backend == "triton" else torch.ops.marsops.focal_loss_forward
        torch.library.opcheck(op, (leaf.detach().clone().requires_grad_(), target.to(device), None, 0.5, -100,
                                   marsops.focal.REDUCTIONS.index(reduction), True, True, 0.0))
