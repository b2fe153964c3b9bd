"""Autograd modes and edge cases where a fused kernel could silently differ from the formula:
each ends in the reference's result or in a clear error, on every backend."""
import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, strategies as st

import marsops
from marsops import reference
from helpers import (TOLERANCE, assert_close, assert_label_error, backend_ids, computes_fp64, kernel_backends,
                     run_gloo_processes)

FUSED = kernel_backends("focal_loss_forward")
ALL = [("reference", "cpu")] + FUSED


def focal_setup(device, n=2, c=5, spatial=(3, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c) + spatial, generator=g).to(device)
    t = torch.randint(0, c, (n,) + spatial, generator=g).to(device)
    w = torch.rand(c, generator=g).to(device)
    return x, t, w


# ---- 1. double backward ------------------------------------------------------------------------

@pytest.mark.parametrize("backend,device", FUSED, ids=backend_ids(FUSED))
def test_double_backward_is_refused_not_silently_wrong(backend, device):
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 5).to(device)
    x = torch.randn(6, 3, device=device, requires_grad=True)
    t = torch.randint(0, 5, (6,), device=device)
    loss = marsops.focal_loss(lin(x), t, gamma=0.5, backend=backend)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_double_backward_on_the_reference_matches_gradgradcheck():
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0, 1, 3], [2, -100, 1]])
    w = torch.tensor([0.5, 1.0, 2.0, 0.3], dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda x: marsops.focal_loss(x, t, w, 0.5, backend="reference"), (x,))


# ---- 2. empty batches ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@pytest.mark.parametrize("shape", [(0, 5, 4, 4), (2, 5, 0, 4), (0, 5)])
@pytest.mark.parametrize("reduction", marsops.focal.REDUCTIONS)
def test_empty_batches_give_zero_loss_and_a_zero_gradient_of_the_right_shape(backend, device, shape, reduction):
    x = torch.randn(shape, device=device, requires_grad=True)
    t = torch.zeros((shape[0],) + shape[2:], dtype=torch.long, device=device)
    loss = marsops.focal_loss(x, t, reduction=reduction, backend=backend)
    assert loss.shape == (t.shape if reduction == "none" else ())
    loss.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and (x.grad == 0).all()
    assert loss.sum().item() == 0.0


# ---- 3. learnable class weights -----------------------------------------------------------------

@pytest.mark.parametrize("backend,device", FUSED, ids=backend_ids(FUSED))
def test_learnable_weights_are_refused_by_fused_kernels(backend, device):
    x, t, w = focal_setup(device)
    w.requires_grad_()
    with pytest.raises(ValueError, match="weight requires grad"):
        marsops.focal_loss(x.requires_grad_(), t, w, backend=backend)
    with torch.no_grad():  # no gradient wanted: nothing is lost, so it runs
        expected = reference.focal_loss(x, t, w)
        assert_close(marsops.focal_loss(x, t, w, backend=backend), expected)
    assert_close(marsops.focal_loss(x, t, w.detach(), backend=backend), expected)


def test_learnable_weights_get_their_gradient_on_the_reference():
    x, t, w = focal_setup("cpu")
    w = w.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda w: marsops.focal_loss(x.double(), t, w, backend="reference",
                                                                 reduction="weighted_mean"), (w,))


# ---- 4. retain_graph: no gradient aliases another, or the saved buffer --------------------------

@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_retained_graph_gives_independent_gradients(backend, device, reduction):
    x, t, w = focal_setup(device)
    x.requires_grad_()
    loss = marsops.focal_loss(x, t, w, 0.5, reduction=reduction, backend=backend)
    up = torch.ones_like(loss)
    (g1,) = torch.autograd.grad(loss, x, up, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x, up, retain_graph=True)
    assert g1.data_ptr() != g2.data_ptr()
    kept = g2.clone()
    g1.mul_(100)  # changing one gradient changes nothing else
    loss.backward(up, retain_graph=True)
    loss.backward(up, retain_graph=True)
    loss.backward(up)
    assert torch.equal(g2, kept)
    assert_close(x.grad, 3 * kept)
    ref_x = x.detach().clone().requires_grad_()
    reference.focal_loss(ref_x, t, w, 0.5, reduction=reduction).backward(up)
    assert_close(kept, ref_x.grad)


@pytest.mark.parametrize("backend,device", FUSED, ids=backend_ids(FUSED))
def test_one_backward_hands_out_the_buffer_scaled_once(backend, device):
    """Without retain_graph the saved gradient becomes x.grad (no copy), scaled by the upstream
    gradient exactly once; a second loss built later does not overwrite it."""
    x, t, w = focal_setup(device)
    x.requires_grad_()
    (3.0 * marsops.focal_loss(x, t, w, 0.5, backend=backend)).backward()
    ref_x = x.detach().clone().requires_grad_()
    (3.0 * reference.focal_loss(ref_x, t, w, 0.5)).backward()
    assert_close(x.grad, ref_x.grad)
    held = x.grad.clone()
    marsops.focal_loss(x * 2, t, w, 0.5, backend=backend).backward()
    assert_close(x.grad, held + torch.autograd.grad(reference.focal_loss(ref_x * 2, t, w, 0.5), ref_x)[0])


# ---- 5. non-finite logits at ignored pixels -----------------------------------------------------

@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@pytest.mark.parametrize("reduction", marsops.focal.REDUCTIONS)
def test_nonfinite_logits_at_ignored_pixels_change_nothing(backend, device, reduction):
    x, t, w = focal_setup("cpu", spatial=(6,))
    t[0, 1], t[1, 4], t[1, 5] = -100, -100, -100
    clean = x.clone()
    clean[0, :, 1] = 0.0
    clean[1, :, 4:] = 0.0
    dirty = clean.clone()
    dirty[0, :, 1] = torch.tensor([float("nan"), 1.0, float("inf"), -2.0, 0.0])
    dirty[1, :, 4] = float("inf")
    dirty[1, :, 5] = float("-inf")
    results = []
    for logits in (clean, dirty):
        leaf = logits.to(device).requires_grad_()
        loss = marsops.focal_loss(leaf, t.to(device), w.to(device), 0.5, reduction=reduction, backend=backend)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(leaf.grad).all()
        results.append((loss.detach().cpu(), leaf.grad.cpu()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    assert (results[1][1][0, :, 1] == 0).all() and (results[1][1][1, :, 4:] == 0).all()
    # The oracle: F.cross_entropy ignores them too (its loss; its gradient there is NaN, ours 0).
    if reduction == "weighted_mean":
        expected = F.cross_entropy(dirty, t, weight=w)
        ce = marsops.focal_loss(dirty.to(device), t.to(device), w.to(device), 0.0, reduction=reduction,
                                backend=backend)
        assert_close(ce, expected)


# ---- 6. ignore_index compared as int64, never wrapped into the target's dtype -------------------

@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_ignore_index_is_compared_as_int64(backend, device):
    x = torch.randn(1, 5, 3, device=device)
    setup = f"x = torch.randn(1, 5, 3, device='{device}')\n"
    for labels, dtype, ignore_index in (("[[1, 156, 2]]", "uint8", -100),  # 156 == uint8(-100)
                                        ("[[1, -1, 2]]", "int8", 255)):   # -1 == int8(255)
        target = f"torch.tensor({labels}, dtype=torch.{dtype}, device='{device}')"
        assert_label_error(device, setup + f"marsops.focal_loss(x, {target}, ignore_index={ignore_index}, "
                           f"backend='{backend}')", "outside")
        assert_label_error(device, setup + f"marsops.confusion_matrix(x, {target}, 5, ignore_index={ignore_index}, "
                           f"backend='{backend}')", "outside")
    u8 = torch.tensor([[1, 156, 2]], dtype=torch.uint8, device=device)
    i8 = torch.tensor([[1, -1, 2]], dtype=torch.int8, device=device)
    # Where the value itself matches, it is ignored, whatever the dtype.
    expected = reference.focal_loss(x.cpu(), torch.tensor([[1, -100, 2]]), reduction="sum")
    assert_close(marsops.focal_loss(x, i8, ignore_index=-1, reduction="sum", backend=backend), expected)
    u8[0, 1] = 255
    assert_close(marsops.focal_loss(x, u8, ignore_index=255, reduction="sum", backend=backend), expected)
    assert marsops.confusion_matrix(x, u8, 5, ignore_index=255, backend=backend).sum() == 2


# ---- 7. argument types --------------------------------------------------------------------------

def test_classes_may_be_any_iterable_and_counts_numpy_ints():
    pred = torch.tensor([[0, 1, 2, 3, 4]])
    target = torch.tensor([[0, 1, 2, 4, 4]])
    from_list = marsops.StreamingIoU(5, classes=[1, 2, 3, 4])
    from_gen = marsops.StreamingIoU(np.int64(5), classes=(c for c in range(1, 5)))
    for metric in (from_list, from_gen):
        metric.update(pred, target)
    assert torch.isfinite(from_gen.compute().miou)
    assert torch.equal(from_gen.compute().miou, from_list.compute().miou)
    assert torch.equal(marsops.confusion_matrix(pred, target, num_classes=np.int64(5), ignore_index=np.int32(3)),
                       marsops.confusion_matrix(pred, target, num_classes=5, ignore_index=3))
    x = torch.randn(1, 5, 5)
    assert torch.equal(marsops.focal_loss(x, target, gamma=np.float32(0.5), ignore_index=np.int64(4)),
                       marsops.focal_loss(x, target, gamma=0.5, ignore_index=4))


@pytest.mark.parametrize("call,error,match", [
    (lambda: marsops.confusion_matrix(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long), 2.5),
     TypeError, "num_classes"),
    (lambda: marsops.confusion_matrix(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long), True),
     TypeError, "bool"),
    (lambda: marsops.StreamingIoU(5, classes=[]), ValueError, "non-empty"),
    (lambda: marsops.StreamingIoU(5, classes=["a"]), TypeError, "classes"),
    (lambda: marsops.focal_loss(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), ignore_index=2**70),
     ValueError, "int64"),
    (lambda: marsops.focal_loss(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), gamma=float("nan")),
     ValueError, "gamma"),
    (lambda: marsops.focal_loss(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), gamma="2"), TypeError, "gamma"),
])
def test_bad_argument_types_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---- 8. StreamingIoU.sync is idempotent ---------------------------------------------------------

def _rank_batch(rank):
    """The logits and labels process `rank` counts."""
    g = torch.Generator().manual_seed(rank)
    return torch.randn(2, 3, 10, generator=g), torch.randint(0, 3, (2, 10), generator=g)


def _sync_twice_worker(rank, world, port, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        logits, target = _rank_batch(rank)
        metric = marsops.StreamingIoU(3)
        metric.update(logits, target)
        local = metric.local.clone()
        metric.sync()
        first = metric.matrix.clone()
        metric.sync()
        results[rank] = dict(first=first.tolist(), second=metric.matrix.tolist(), miou=metric.compute().miou.item(),
                             local_kept=torch.equal(metric.local, local))
        metric.update(logits, target)  # counting again returns to the local view until the next sync
        results[f"{rank}-after-update"] = torch.equal(metric.matrix, 2 * local)
    finally:
        dist.destroy_process_group()


def test_sync_twice_counts_once_across_two_gloo_processes():
    results = run_gloo_processes(_sync_twice_worker)
    expected = sum(reference.confusion_matrix(*_rank_batch(rank), 3) for rank in range(2))
    for rank in range(2):
        r = results[rank]
        assert r["first"] == r["second"] == expected.tolist()
        assert r["local_kept"] and results[f"{rank}-after-update"]
        assert r["miou"] == pytest.approx(marsops.scores(expected).miou.item())


# ---- 9. complex images --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_images_are_refused_clearly(dtype):
    x = torch.randn(2, 1, 4, 5, dtype=dtype)
    with pytest.raises(TypeError, match="complex"):
        marsops.flip4(x)
    with pytest.raises(TypeError, match="complex"):
        marsops.random_flip(x)
    with pytest.raises(TypeError, match="floating"):
        marsops.flip4_merge(torch.cat([x] * 4))


@pytest.mark.skipif(not any(b == "triton" for b, _ in FUSED), reason="needs Triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_backward_scaling_kernel(dtype):
    """The in-place scaling GPU backwards use (run here through the Triton interpreter): a scale
    of 1 leaves the gradient untouched without a pass over it, another scale multiplies."""
    from marsops.triton.scale import scale_

    device = [d for b, d in FUSED if b == "triton"][0]
    x = torch.randn(3, 5, 1000, device=device).to(dtype)
    kept = x.clone()
    scale_(x, torch.ones((), device=device, dtype=dtype))
    assert torch.equal(x, kept)
    scale_(x, torch.full((), 2.5, device=device, dtype=dtype))
    assert_close(x, (kept.float() * 2.5).to(dtype))


# ---- found by the adversarial review --------------------------------------------------------------

@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_nonfinite_upstream_gradient_at_ignored_pixels_stays_out(backend, device):
    """A per-image mean guarded by torch.where, with one image all ignored: its upstream gradient
    is NaN there, and 0 * NaN must not reach the logits (F.cross_entropy's gradient stays finite)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g)
    y = torch.randint(0, 3, (2, 4, 4), generator=g)
    y[1] = 255

    def per_image_mean(loss):
        n = (y.to(loss.device) != 255).sum((1, 2))
        return torch.where(n > 0, loss.sum((1, 2)) / n, torch.zeros((), device=loss.device)).mean()

    leaf = x.clone().to(device).requires_grad_()
    per_image_mean(marsops.focal_loss(leaf, y.to(device), gamma=0.0, ignore_index=255, reduction="none",
                                      backend=backend)).backward()
    ce = x.clone().requires_grad_()
    per_image_mean(F.cross_entropy(ce, y, ignore_index=255, reduction="none")).backward()
    assert torch.isfinite(leaf.grad).all() and (leaf.grad[1] == 0).all()
    assert_close(leaf.grad.cpu(), ce.grad)


@pytest.mark.parametrize("backend,device", FUSED, ids=backend_ids(FUSED))
def test_forward_mode_and_functorch_differentiation_are_refused(backend, device):
    import torch.autograd.forward_ad as forward_ad

    x, t, _ = focal_setup(device)
    loss = lambda z: marsops.focal_loss(z, t, backend=backend)  # noqa: E731
    flips = lambda z: marsops.flip4(z, backend=backend)[0]  # noqa: E731
    for transform in (lambda f: torch.func.jvp(f, (x,), (torch.ones_like(x),)), lambda f: torch.func.grad(
            lambda z: f(z).sum())(x), lambda f: torch.func.jacfwd(f)(x)):
        for f in (loss, flips):
            with pytest.raises(RuntimeError, match="not supported by the fused kernels"):
                transform(f)
    with forward_ad.dual_level():
        with pytest.raises(RuntimeError, match="forward-mode AD"):
            loss(forward_ad.make_dual(x, torch.ones_like(x)))
    # vmap alone differentiates nothing: it runs, per sample, what the op computes
    batched = torch.func.vmap(lambda z, y: marsops.focal_loss(z[None], y[None], backend=backend))(x, t)
    expected = torch.stack([marsops.focal_loss(x[i:i + 1], t[i:i + 1], backend=backend) for i in range(len(x))])
    assert_close(batched, expected)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_gamma_zero_with_a_minus_inf_target_logit_is_cross_entropy(backend, device):
    x = torch.tensor([[-float("inf"), 0.5, 0.2]])
    y = torch.tensor([0])
    leaf = x.clone().to(device).requires_grad_()
    loss = marsops.focal_loss(leaf, y.to(device), gamma=0.0, backend=backend)
    loss.backward()
    ce = x.clone().requires_grad_()
    F.cross_entropy(ce, y).backward()
    assert torch.isinf(loss) and torch.isfinite(leaf.grad).all()
    assert_close(leaf.grad, ce.grad)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_activation_checkpointing_counts_once(use_reentrant):
    from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 5, 3, padding=1)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    y = torch.randint(0, 5, (2, 8, 8))
    cm = torch.zeros(5, 5, dtype=torch.int64)
    with set_checkpoint_early_stop(False):
        checkpoint(lambda i: marsops.focal_loss(conv(i), y, confusion=cm), x, use_reentrant=use_reentrant).backward()
    assert cm.sum() == y.numel()
    assert torch.equal(cm, marsops.confusion_matrix(conv(x).detach(), y, 5))


def test_cpu_kernels_refuse_more_classes_than_float_lanes_hold():
    x = torch.zeros(1, 2**24 + 1)
    with pytest.raises(RuntimeError, match="2\\^24 classes"):
        marsops.focal_loss(x, torch.tensor([3]), backend="cpu")


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + kernel_backends("flip_views"),
                         ids=backend_ids([("reference", "cpu")] + kernel_backends("flip_views")))
def test_flips_take_every_real_dtype(backend, device):
    for dtype in (torch.uint16, torch.uint32, torch.uint64, torch.int16):
        x = torch.arange(24).view(2, 3, 4).to(dtype).to(device)
        out, _ = marsops.flip4(x, backend=backend)
        a = x.cpu().numpy()  # numpy is the oracle: some torch builds cannot flip uint16
        expected = np.concatenate([a, np.flip(a, -1), np.flip(a, -2), np.flip(a, (-2, -1))])
        np.testing.assert_array_equal(out.cpu().numpy(), expected)


@pytest.mark.parametrize("call,error,match", [
    (lambda: marsops.focal_loss(torch.randn(2, 5), torch.zeros(2, dtype=torch.long),
                                weight=torch.ones(5, dtype=torch.long)), TypeError, "weight"),
    (lambda: marsops.focal_loss(torch.randn(2, 0, 3), torch.zeros(2, 3, dtype=torch.long)), ValueError, "C >= 1"),
    (lambda: marsops.flip4_argmax(torch.randn(4, 0, 3, 7)), ValueError, "at least one class"),
    (lambda: marsops.focal_loss(torch.randn(2, 5), torch.zeros(2, dtype=torch.long),
                                gamma=torch.tensor(2.0, requires_grad=True)), ValueError, "gamma"),
    (lambda: marsops.StreamingIoU(5, classes=[1, 1, 2]), ValueError, "each class once"),
    (lambda: marsops.StreamingIoU(5, ignore_index=255).merge(marsops.StreamingIoU(5)), ValueError, "ignoring"),
    (lambda: marsops.focal_loss(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), backend="gpu"), ValueError,
     "unknown backend"),
])
def test_arguments_every_backend_now_treats_alike(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_label_errors_are_value_errors_on_the_cpu_backend_too():
    t = torch.zeros(2, 4, dtype=torch.long)
    t[1, 2] = 3
    with pytest.raises(ValueError, match="outside"):
        marsops.focal_loss(torch.randn(2, 3, 4), t, backend="cpu")
    with pytest.raises(ValueError, match="outside"):
        marsops.confusion_matrix(torch.randn(2, 3, 4), t, 3, backend="cpu")


# ---- found by the second review: no NaN / inf from finite inputs, one rule for odd weights --------

SIGMOID = [("reference", "cpu")] + kernel_backends("sigmoid_focal_loss_forward")
REGION = [("reference", "cpu")] + kernel_backends("region_stats")


@pytest.mark.parametrize("backend,device", SIGMOID, ids=backend_ids(SIGMOID))
@pytest.mark.parametrize("gamma", [0.05, 0.1, 0.5])
def test_sigmoid_focal_gradient_stays_finite_for_confident_elements(backend, device, gamma):
    """q = 1 - p_t is subnormal for |x| ~ 100: q^(gamma - 1) overflows, q^gamma * (dq / q) does not."""
    x = torch.tensor([100.0, 95.0, 103.0, -100.0, 1.0], device=device, requires_grad=True)
    t = torch.tensor([1, 1, 1, 0, 1], device=device)
    marsops.sigmoid_focal_loss(x, t, gamma=gamma, reduction="sum", backend=backend).backward()
    ref = x.detach().double().cpu().requires_grad_()
    reference.sigmoid_focal_loss(ref, t.cpu(), gamma=gamma, reduction="sum").backward()
    assert torch.isfinite(x.grad).all(), x.grad
    torch.testing.assert_close(x.grad.double().cpu(), ref.grad, rtol=1e-4, atol=1e-30)


@pytest.mark.parametrize("backend,device", SIGMOID, ids=backend_ids(SIGMOID))
def test_sigmoid_focal_loss_keeps_its_digits_for_confident_elements(backend, device):
    """log1p(exp(-|x|)), not log(1 + exp(-|x|)), which is 0 from |x| ~ 17 on in fp32."""
    x = torch.tensor([15.0, 17.0, 20.0, 30.0], device=device)
    t = torch.ones(4, device=device)
    got = marsops.sigmoid_focal_loss(x, t, alpha=None, gamma=0.0, reduction="none", backend=backend)
    exact = torch.log1p(torch.exp(-x.double().cpu()))  # BCE of a positive
    torch.testing.assert_close(got.double().cpu(), exact, rtol=1e-5, atol=0)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_sigmoid_focal_gradient_at_zero_logits_matches_every_backend(gamma):
    """A zero-initialised head: the reference's softplus must have derivative sigmoid(0) = 0.5 there."""
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    reference.sigmoid_focal_loss(x, t, gamma=gamma, reduction="sum").backward()
    oracle = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    p = torch.sigmoid(oracle)
    p_t = p * t + (1 - p) * (1 - t)
    bce = F.binary_cross_entropy_with_logits(oracle, t, reduction="none")  # torchvision's formula
    ((0.25 * t + 0.75 * (1 - t)) * bce * (1 - p_t) ** gamma).sum().backward()
    torch.testing.assert_close(x.grad, oracle.grad)
    for backend, device in SIGMOID[1:]:
        leaf = torch.zeros(4, device=device, requires_grad=True)
        marsops.sigmoid_focal_loss(leaf, t.float().to(device), gamma=gamma, reduction="sum", backend=backend).backward()
        torch.testing.assert_close(leaf.grad.double().cpu(), oracle.grad, rtol=1e-6, atol=1e-7)


def test_sigmoid_reference_is_exact_past_softplus_threshold():
    """The fp64 oracle itself: F.softplus returns x past 20, off by exp(-x) (2e-9 at 20.5)."""
    x = torch.tensor([20.5, -20.5, 40.0], dtype=torch.float64)
    got = reference.sigmoid_focal_loss(x, torch.zeros(3, dtype=torch.float64), alpha=None, gamma=0.0,
                                       reduction="none")
    torch.testing.assert_close(got, torch.log1p(torch.exp(-x.abs())) + x.clamp_min(0), rtol=1e-15, atol=0)


@pytest.mark.parametrize("backend,device", SIGMOID, ids=backend_ids(SIGMOID))
@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64])
def test_sigmoid_focal_takes_unsigned_integer_targets(backend, device, dtype):
    x = torch.randn(2, 3, 4, device=device)
    t = torch.randint(0, 2, (2, 3, 4), device=device)
    assert_close(marsops.sigmoid_focal_loss(x, t.to(dtype), backend=backend),
                 marsops.sigmoid_focal_loss(x, t, backend=backend))


@pytest.mark.parametrize("backend,device", SIGMOID, ids=backend_ids(SIGMOID))
def test_sigmoid_focal_of_a_scalar_keeps_its_shape(backend, device):
    x, t = torch.tensor(0.3, device=device), torch.tensor(1.0, device=device)
    loss = marsops.sigmoid_focal_loss(x, t, pos_weight=torch.tensor([2.0], device=device), reduction="none",
                                      backend=backend)
    assert loss.shape == ()


VANISHING = [(b, d, dtype, logit) for b, d in REGION for dtype, logit in ((torch.float32, -95.0),
                                                                          (torch.float64, -400.0))
             if not (b == "triton" and dtype == torch.float64)]  # triton computes in fp32


@pytest.mark.parametrize("backend,device,dtype,logit", VANISHING,
                         ids=[f"{b}-{d}-{str(t)[6:]}" for b, d, t, _ in VANISHING])
@pytest.mark.parametrize("name", ["dice_loss", "jaccard_loss", "tversky_loss", "dice_ce_loss"])
def test_region_gradient_of_a_vanishing_absent_class_is_finite(backend, device, dtype, logit, name):
    """smooth = 0, a class absent from the target with a mass whose square (fp64) or inverse (fp32)
    leaves the dtype's range: the gradient is the fp64 formula's, not NaN."""
    x = torch.tensor([0.0, 0.0, logit], dtype=dtype, device=device).view(1, 3, 1, 1).requires_grad_()
    t = torch.zeros(1, 1, 1, dtype=torch.long, device=device)
    getattr(marsops, name)(x, t, smooth=0.0, backend=backend).backward()
    exact = x.detach().double().cpu().requires_grad_()
    getattr(marsops, name)(exact, t.cpu(), smooth=0.0, backend="reference").backward()
    assert torch.isfinite(x.grad).all(), x.grad
    torch.testing.assert_close(x.grad.double().cpu(), exact.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_weighted_mean_divides_by_any_nonzero_weight_sum_as_cross_entropy(backend, device):
    """Only a sum of exactly 0 gives the documented 0: a negative sum divides (F.cross_entropy),
    a NaN weight makes the loss NaN (F.cross_entropy), never a 0 beside NaN gradients."""
    x, t, _ = focal_setup(device, c=3)
    for w in (torch.tensor([1.0, -3.0, 0.5]), torch.tensor([1.0, float("nan"), 0.5])):
        w = w.to(device)
        leaf = x.clone().requires_grad_()
        loss = marsops.focal_loss(leaf, t, w, gamma=0.0, reduction="weighted_mean", backend=backend)
        loss.backward()
        ce = x.clone().requires_grad_()
        expected = F.cross_entropy(ce, t, weight=w)
        expected.backward()
        torch.testing.assert_close(loss.double().cpu(), expected.double().cpu(), equal_nan=True, rtol=2e-4,
                                   atol=1e-6)
        if torch.isnan(expected):
            assert torch.isnan(loss)
        else:
            assert_close(leaf.grad, ce.grad)


@pytest.mark.parametrize("backend,device", FUSED, ids=backend_ids(FUSED))
def test_forward_mode_ad_through_class_weights_is_refused(backend, device):
    import torch.autograd.forward_ad as forward_ad

    x, t, w = focal_setup(device)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(w, torch.ones_like(w))
        with pytest.raises(RuntimeError, match="forward-mode AD"):
            marsops.focal_loss(x, t, dual, backend=backend)
        if (backend, device) in REGION:
            with pytest.raises(RuntimeError, match="forward-mode AD"):
                marsops.dice_loss(x, t, weight=dual, backend=backend)
        if (backend, device) in SIGMOID:
            with pytest.raises(RuntimeError, match="forward-mode AD"):
                marsops.sigmoid_focal_loss(x, (x > 0).float(), pos_weight=dual, backend=backend)


def test_negative_region_weights_are_refused_in_compiled_code_too():
    x, t = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    fn = torch.compile(lambda x, t, w: marsops.dice_loss(x, t, weight=w, backend="cpu"), fullgraph=True)
    assert torch.isfinite(fn(x, t, torch.tensor([1.0, 2.0, 1.0])))
    with pytest.raises(RuntimeError, match="weight must be finite and >= 0"):
        fn(x, t, torch.tensor([1.0, -1.0, 1.0]))


@pytest.mark.parametrize("classes,error,match", [([1, 3, 3], ValueError, "each class once"),
                                                 (3, TypeError, "sequence of class indices"),
                                                 ([1.5], TypeError, "integer")])
def test_region_classes_are_checked_like_streaming_iou(classes, error, match):
    x, t = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3))
    with pytest.raises(error, match=match):
        marsops.dice_loss(x, t, classes=classes)
    with pytest.raises(error, match=match):
        marsops.StreamingIoU(4, classes=classes)


def test_reference_backend_compiles_with_fullgraph():
    """The fallback where nothing is built: its label checks are asserts inside the graph."""
    x, t = torch.randn(2, 5, 4, 4, requires_grad=True), torch.randint(0, 5, (2, 4, 4))

    def step(x, t):
        loss = marsops.focal_loss(x, t, backend="reference") + marsops.dice_loss(x, t, backend="reference")
        return loss, marsops.confusion_matrix(x.detach(), t, 5, backend="reference")

    loss, cm = torch.compile(step, fullgraph=True)(x, t)
    eager_loss, eager_cm = step(x, t)
    assert_close(loss, eager_loss)
    assert torch.equal(cm, eager_cm)
    bad = t.clone()
    bad[0, 0, 0] = 7
    # Our assert, or inductor's own bounds check of an index op that ran first: an error either way.
    with pytest.raises(RuntimeError, match="outside|out of bounds"):
        torch.compile(step, fullgraph=True)(x, bad)


# ---- found by the third review (issue 23) ----------------------------------------------------------

NONFINITE = (float("inf"), -float("inf"), float("nan"))
GAMMAS = (0.0, 0.5, 1.0, 1.5, 2.0)
FP32_MAX = torch.finfo(torch.float32).max


def assert_close_nan(actual, expected, dtype):
    """assert_close at the dtype's tolerance, NaN exactly where the reference has NaN."""
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol, equal_nan=True)


def loss_and_grad(fn, x, device):
    """fn(leaf) and d(sum of it)/d(leaf), for a fresh leaf holding x on `device`."""
    leaf = x.detach().clone().to(device).requires_grad_()
    loss = fn(leaf)
    loss.sum().backward()
    return loss.detach().cpu(), leaf.grad.cpu()


@st.composite
def one_nonfinite_logit(draw, dtypes=(torch.float32, torch.float64)):
    """Logits (2, C, 1, 37) with one inf, -inf or NaN at a drawn pixel, at its label's class or
    another's: 37 pixels are whole SIMD blocks of 4, 8 and 16 lanes and a scalar tail. NCHW or
    channels_last (the CPU kernels' transposed tiles)."""
    c = draw(st.integers(2, 5))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(2, c, 1, 37, generator=g, dtype=torch.float64) * 2
    t = torch.randint(0, c, (2, 1, 37), generator=g)
    n, p = draw(st.integers(0, 1)), draw(st.integers(0, 36))
    label = int(t[n, 0, p])
    at = label if draw(st.booleans()) else (label + draw(st.integers(1, c - 1))) % c
    x[n, at, 0, p] = draw(st.sampled_from(NONFINITE))
    x = x.to(draw(st.sampled_from(dtypes)))
    if draw(st.booleans()):
        x = x.contiguous(memory_format=torch.channels_last)
    return x, t


@pytest.mark.parametrize("backend,device", FUSED, ids=backend_ids(FUSED))
@given(case=one_nonfinite_logit(), gamma=st.sampled_from(GAMMAS), eps=st.sampled_from([0.0, 0.1]),
       weighted=st.booleans())
def test_a_nonfinite_logit_gives_the_reference_result_wherever_its_pixel_sits(backend, device, case, gamma, eps,
                                                                              weighted):
    """The vector exp clamps a NaN argument, so an inf logit at another class gave a finite
    softmax sum and an infinite loss inside a SIMD block, and NaN in the scalar tail."""
    x, t = case
    assume(computes_fp64(backend) or x.dtype != torch.float64)  # cuda and triton compute in fp32
    w = torch.tensor([0.5, 2.0, 0.0, 1.0, 1.5], dtype=x.dtype)[: x.shape[1]] if weighted else None
    results = [loss_and_grad(lambda z: marsops.focal_loss(z, t.to(d), None if w is None else w.to(d), gamma,
                                                          reduction="none", label_smoothing=eps, backend=b), x, d)
               for b, d in (("reference", "cpu"), (backend, device))]
    for got, expected in zip(results[1], results[0]):
        assert_close_nan(got, expected, x.dtype)


@pytest.mark.parametrize("backend,device", REGION[1:], ids=backend_ids(REGION[1:]))
@given(case=one_nonfinite_logit(), name=st.sampled_from(["dice_loss", "dice_focal_loss", "dice_ce_loss"]),
       per_image=st.booleans())
def test_a_nonfinite_logit_gives_the_reference_region_loss_wherever_its_pixel_sits(backend, device, case, name,
                                                                                   per_image):
    x, t = case
    assume(computes_fp64(backend) or x.dtype != torch.float64)
    results = [loss_and_grad(lambda z: getattr(marsops, name)(z, t.to(d), per_image=per_image, backend=b), x, d)
               for b, d in (("reference", "cpu"), (backend, device))]
    for got, expected in zip(results[1], results[0]):
        assert_close_nan(got, expected, x.dtype)


@pytest.mark.parametrize("backend,device", SIGMOID[1:], ids=backend_ids(SIGMOID[1:]))
@given(p=st.integers(0, 36), value=st.sampled_from(NONFINITE), gamma=st.sampled_from(GAMMAS),
       soft=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**31 - 1))
def test_a_nonfinite_sigmoid_logit_gives_the_reference_result_wherever_it_sits(backend, device, p, value, gamma, soft,
                                                                              dtype, seed):
    """The same slip in the sigmoid focal kernel: exp(-|NaN|) was finite in a SIMD block, NaN in the tail."""
    assume(computes_fp64(backend) or dtype != torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 37, generator=g, dtype=dtype)
    x[1, p] = value
    t = torch.rand(2, 37, generator=g, dtype=dtype) if soft else torch.randint(0, 2, (2, 37), generator=g)
    results = [loss_and_grad(lambda z: marsops.sigmoid_focal_loss(z, t.to(d), gamma=gamma, reduction="none",
                                                                  backend=b), x, d)
               for b, d in (("reference", "cpu"), (backend, device))]
    for got, expected in zip(results[1], results[0]):
        assert_close_nan(got, expected, dtype)


# Logits near fp32's limits. The exact loss of an element can exceed fp32's range (logits 6e38 apart
# give -log p = 6e38): what the kernels promise, and these tests check against a float64 oracle, is
# that each term -w_c (1 - p_c)^gamma log p_c is computed without an intermediate overflow, so it is
# inf only where its exact value exceeds fp32's range (and 0 where w_c is 0); an element's loss is
# inf only where such a term, or the sum of its terms (label smoothing), is; sums and means are taken
# in float64 over the elements' fp32 losses; gradients are always finite.

def _extreme_logits(draw, shape):
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([1.0, 1e30, 1e38, FP32_MAX]))
    x = ((torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * scale).clamp(-FP32_MAX, FP32_MAX).float()
    if draw(st.booleans()):  # the limits themselves
        x.view(-1)[torch.randperm(x.numel(), generator=g)[: x.numel() // 3]] = FP32_MAX
        x.view(-1)[torch.randperm(x.numel(), generator=g)[: x.numel() // 3]] = -FP32_MAX
    return x, g


@st.composite
def extreme_focal_case(draw):
    c = draw(st.integers(2, 5))
    x, g = _extreme_logits(draw, (2, c, draw(st.sampled_from([1, 7, 37]))))
    t = torch.randint(0, c, (2, x.shape[2]), generator=g)
    w = torch.rand(c, generator=g)
    w[torch.rand(c, generator=g) < 0.4] = 0.0
    w[t[0, 0]] = draw(st.sampled_from([0.0, 1.0]))  # a weight-0 label for sure, or not
    return x, t, w


def focal_oracle(x, t, w, gamma, eps, reduction):
    """The loss by the fp32 rules above and its exact gradient, both computed in float64 (which
    holds every difference of fp32 logits), from the textbook formula (not marsops')."""
    x64 = x.double().requires_grad_()
    logp = torch.log_softmax(x64, 1)
    q = (-torch.expm1(logp)).clamp_min(torch.finfo(torch.float64).tiny)
    terms = -w.double().view(1, -1, 1) * q**gamma * logp
    label = terms.gather(1, t.unsqueeze(1)).squeeze(1)
    every = terms.sum(1)
    loss = (1 - eps) * label + eps / x.shape[1] * every if eps else label
    below, above = FP32_MAX * (1 - 1e-6), FP32_MAX * (1 + 1e-6)
    fits = (label <= below) & ((every <= below) if eps else True)
    overflows = (label > above) | ((every > above) if eps else False)
    assume(bool((fits | overflows).all()))  # not within a rounding of fp32's largest value
    denom = {"sum": 1.0, "mean": float(t.numel()), "weighted_mean": w.double()[t].sum()}.get(reduction)
    exact = loss if reduction == "none" else loss.sum() / denom
    exact.sum().backward()
    per_element = torch.where(overflows, torch.full_like(loss, math.inf), loss.detach())
    expected = per_element if reduction == "none" else per_element.sum() / denom
    return expected.float(), x64.grad.float(), (label == 0) & (w[t] == 0)


@pytest.mark.filterwarnings("ignore:overflow encountered")  # numpy's, in the Triton interpreter's inf sums
@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@given(case=extreme_focal_case(), gamma=st.sampled_from(GAMMAS), eps=st.sampled_from([0.0, 0.1]),
       reduction=st.sampled_from(marsops.focal.REDUCTIONS))
def test_logits_near_the_fp32_limit_give_no_nan_and_finite_gradients(backend, device, case, gamma, eps, reduction):
    x, t, w = case
    assume(reduction != "weighted_mean" or bool(w[t].sum() > 0))
    expected, expected_grad, weightless = focal_oracle(x, t, w, gamma, eps, reduction)
    loss, grad = loss_and_grad(lambda z: marsops.focal_loss(z, t.to(device), w.to(device), gamma, reduction=reduction,
                                                            label_smoothing=eps, backend=backend), x, device)
    assert not torch.isnan(loss).any() and torch.isfinite(grad).all(), (loss, grad)
    assert_close(loss, expected)
    assert_close(grad, expected_grad)
    if reduction == "none" and not eps:
        assert (loss[weightless] == 0).all()  # exactly 0: not 0 * inf


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_the_review_repro_near_the_fp32_limit(backend, device):
    """The review's repro: the loss 6e38 exceeds fp32 (inf, not NaN) with a finite gradient, and a
    weight-0 element contributes exactly 0, where F.cross_entropy says NaN."""
    x, y = torch.tensor([[3e38, -3e38]], device=device), torch.tensor([1], device=device)
    loss, grad = loss_and_grad(lambda z: marsops.focal_loss(z, y, backend=backend), x, device)
    assert loss == math.inf and torch.equal(grad, torch.tensor([[1.0, -1.0]]))
    w = torch.tensor([1.0, 0.0], device=device)
    for gamma in (0.0, 2.0):
        loss, grad = loss_and_grad(lambda z: marsops.focal_loss(z, y, w, gamma, reduction="sum", backend=backend), x,
                                   device)
        assert loss == 0 and (grad == 0).all()
    assert torch.isnan(F.cross_entropy(x.cpu(), y.cpu(), weight=w.cpu(), reduction="sum"))
    half = torch.tensor([[1.5e38, -1.5e38]], device=device)  # 3e38 fits: finite, and exact
    assert marsops.focal_loss(half, y, gamma=0.0, reduction="sum", backend=backend).item() == pytest.approx(3e38)


@st.composite
def extreme_sigmoid_case(draw):
    c = draw(st.integers(1, 3))
    x, g = _extreme_logits(draw, (2, c, draw(st.sampled_from([1, 7, 37]))))
    t = torch.rand(x.shape, generator=g) if draw(st.booleans()) else torch.randint(0, 2, x.shape, generator=g).float()
    pw = torch.rand(c, generator=g) * 3  # > 1 too: pos_weight times a logit near the limit
    pw[torch.rand(c, generator=g) < 0.3] = 0.0
    return x, t, pw


@pytest.mark.parametrize("backend,device", SIGMOID, ids=backend_ids(SIGMOID))
@given(case=extreme_sigmoid_case(), gamma=st.sampled_from(GAMMAS), alpha=st.sampled_from([None, 0.25, 1.0]),
       reduction=st.sampled_from(["none", "sum", "mean"]))
def test_sigmoid_logits_near_the_fp32_limit_give_no_nan_and_finite_gradients(backend, device, case, gamma, alpha,
                                                                              reduction):
    x, t, pw = case
    x64 = x.double().requires_grad_()
    t64 = t.double()
    p = torch.sigmoid(x64)  # torchvision's formula with pos_weight, in float64
    ce = F.binary_cross_entropy_with_logits(x64, t64, pos_weight=pw.double().view(-1, 1), reduction="none")
    q = (t64 * torch.sigmoid(-x64) + (1 - t64) * p).clamp_min(torch.finfo(torch.float64).tiny)
    exact = ce * q**gamma * (1.0 if alpha is None else alpha * t64 + (1 - alpha) * (1 - t64))
    assume(bool(((exact <= FP32_MAX * (1 - 1e-6)) | (exact > FP32_MAX * (1 + 1e-6))).all()))
    reduce = {"none": lambda v: v, "sum": torch.sum, "mean": torch.mean}[reduction]
    reduce(exact).sum().backward()
    expected = reduce(torch.where(exact > FP32_MAX, torch.full_like(exact, math.inf), exact.detach())).float()
    loss, grad = loss_and_grad(lambda z: marsops.sigmoid_focal_loss(z, t.to(device), alpha, gamma, pw.to(device),
                                                                    reduction=reduction, backend=backend), x, device)
    assert not torch.isnan(loss).any() and torch.isfinite(grad).all(), (loss, grad)
    assert_close(loss, expected)
    assert_close(grad, x64.grad.float())


@pytest.mark.parametrize("backend,device", REGION, ids=backend_ids(REGION))
@given(case=extreme_focal_case(), name=st.sampled_from(["dice_loss", "jaccard_loss", "tversky_loss", "dice_focal_loss",
                                                        "dice_ce_loss"]), per_image=st.booleans())
def test_region_losses_near_the_fp32_limit_give_no_nan_and_finite_gradients(backend, device, case, name, per_image):
    x, t, _ = case
    loss, grad = loss_and_grad(lambda z: getattr(marsops, name)(z, t.to(device), per_image=per_image,
                                                                backend=backend), x, device)
    assert not torch.isnan(loss).any() and torch.isfinite(grad).all(), (loss, grad)
    # The region term from float64 logits (which hold every difference of fp32 ones), the focal /
    # cross-entropy term (gamma 2 / 0, mean over the pixels) by the fp32 rules of focal_oracle.
    region = "dice_loss" if name in ("dice_focal_loss", "dice_ce_loss") else name
    expected, expected_grad = loss_and_grad(lambda z: getattr(marsops, region)(z, t, per_image=per_image,
                                                                               backend="reference"), x.double(), "cpu")
    expected, expected_grad = expected.float(), expected_grad.float()
    if region != name:
        focal, focal_grad, _ = focal_oracle(x, t, torch.ones(x.shape[1]), 2.0 if name == "dice_focal_loss" else 0.0,
                                            0.0, "mean")
        expected, expected_grad = expected + focal, expected_grad + focal_grad
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


# ---- torch.func.vmap: the forward and the backward, equal to a loop over the batch ------------------

VMAPPED = {
    "focal_loss": lambda z, y, b: marsops.focal_loss(z, y, torch.tensor([0.5, 1.0, 2.0, 1.0], device=z.device),
                                                     gamma=0.5, backend=b),
    "focal_loss_none": lambda z, y, b: marsops.focal_loss(z, y, gamma=2.0, reduction="none", label_smoothing=0.1,
                                                          backend=b),
    "dice_loss": lambda z, y, b: marsops.dice_loss(z, y, backend=b),
    "tversky_loss": lambda z, y, b: marsops.tversky_loss(z, y, alpha=0.3, beta=0.7, per_image=True, backend=b),
    "dice_focal_loss": lambda z, y, b: marsops.dice_focal_loss(z, y, backend=b),
    "dice_ce_loss": lambda z, y, b: marsops.dice_ce_loss(z, y, label_smoothing=0.1, backend=b),
    "sigmoid_focal_loss": lambda z, y, b: marsops.sigmoid_focal_loss(z, (y > 1).unsqueeze(1).expand_as(z).float(),
                                                                     backend=b),
}


# Each loss with the backends that implement its kernel (the CUDA C++ kernels have no region or
# sigmoid focal loss).
VMAP_OPS = {"focal_loss": FUSED, "focal_loss_none": FUSED, "sigmoid_focal_loss": SIGMOID[1:]}
VMAP_CASES = [(name, b, d) for name in sorted(VMAPPED)
              for b, d in [("reference", "cpu")] + VMAP_OPS.get(name, REGION[1:])]


@pytest.mark.parametrize("name,backend,device", VMAP_CASES,
                         ids=[f"{n}-{i}" for (n, _, _), i in zip(VMAP_CASES, backend_ids([c[1:] for c in VMAP_CASES]))])
def test_vmap_forward_and_backward_equal_a_loop_over_the_batch(backend, device, name):
    """vmap ran the fused forward without its gradient (the BatchedTensor it saw does not require
    grad), and backward then failed with a misleading error."""
    fn = VMAPPED[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 5, 6, generator=g).to(device)  # vmapped over dim 0: samples of (N=2, C=4, 5, 6)
    y = torch.randint(0, 4, (3, 2, 5, 6), generator=g).to(device)
    up = torch.rand(3, generator=g).to(device)
    batched = x.clone().requires_grad_()
    out = torch.func.vmap(lambda z, t: fn(z, t, backend))(batched, y)
    out.reshape(3, -1).sum(1).mul(up).sum().backward()
    looped = x.clone().requires_grad_()
    expected = torch.stack([fn(looped[i], y[i], backend) for i in range(3)])
    expected.reshape(3, -1).sum(1).mul(up).sum().backward()
    assert_close(out.detach(), expected.detach())
    assert_close(batched.grad, looped.grad)
    # per-sample gradients (vmap of grad) on the reference, as torch.func users write them
    if backend == "reference":
        per_sample = torch.func.vmap(torch.func.grad(lambda z, t: fn(z, t, backend).sum()))(x, y)
        assert_close(per_sample, torch.stack([torch.func.grad(lambda z: fn(z, y[i], backend).sum())(x[i])
                                              for i in range(3)]))


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_vmap_of_in_place_counting_is_refused_clearly_and_confusion_matrix_vmaps(backend, device):
    x = torch.randn(3, 2, 4, 5, device=device)
    y = torch.randint(0, 4, (3, 2, 5), device=device)
    cm = torch.zeros(4, 4, dtype=torch.int64, device=device)
    metric = marsops.StreamingIoU(4, backend=backend)
    for call in (lambda z, t: marsops.focal_loss(z, t, backend=backend, confusion=cm),
                 lambda z, t: metric.update(z, t)):
        with pytest.raises(RuntimeError, match="vmap"):
            torch.func.vmap(call)(x, y)
    counts = torch.func.vmap(lambda z, t: marsops.confusion_matrix(z, t, 4, backend=backend))(x, y)
    assert torch.equal(counts.cpu(), torch.stack([reference.confusion_matrix(x[i].cpu(), y[i].cpu(), 4)
                                                  for i in range(3)]))
    # a bad label in one sample: the same error as without vmap (on CUDA a device-side assertion)
    assert_label_error(device, f"x = torch.randn(3, 2, 4, 5, device='{device}')\n"
                               f"y = torch.zeros(3, 2, 5, dtype=torch.long, device='{device}')\n"
                               "y[1, 0, 2] = 9\n"
                               f"torch.func.vmap(lambda z, t: marsops.focal_loss(z, t, backend='{backend}'))(x, y)",
                       "outside")


# ---- every boolean and float option of the public API is checked, with one clear error -------------

def _region(name, **kw):
    return lambda: getattr(marsops, name)(torch.randn(2, 3, 4), torch.randint(0, 3, (2, 4)), **kw)


def _views(fn, **kw):
    return lambda: fn(torch.randn(8, 3, 4, 4), **kw)


def _metric_views(method, **kw):
    n = 2 if method == "update_flip4" else 1  # 4 or 8 views
    return lambda: getattr(marsops.StreamingIoU(3), method)(torch.randn(8, 3, 4, 4), torch.randint(0, 3, (n, 4, 4)),
                                                           **kw)


# Every boolean option of the public API, with a call passing it (the test below finds them all).
BOOL_OPTIONS = {
    **{(name, "per_image"): (lambda v, n=name: _region(n, per_image=v)()) for name in
       ("dice_loss", "jaccard_loss", "tversky_loss", "dice_focal_loss", "dice_ce_loss")},
    **{(cls, "per_image"): (lambda v, c=cls: getattr(marsops, c)(per_image=v)) for cls in
       ("DiceLoss", "JaccardLoss", "TverskyLoss", "DiceFocalLoss", "DiceCELoss")},
    # Probabilities in [0, 1] (from_logits=False checks them); the sums' second terms switched off
    # (they need logits).
    **{(name, "from_logits"): (lambda v, n=name: getattr(marsops, n)(
        torch.rand(2, 3, 4), torch.randint(0, 3, (2, 4)), from_logits=v,
        **{"dice_focal_loss": {"lambda_focal": 0.0}, "dice_ce_loss": {"lambda_ce": 0.0}}.get(n, {}))) for name in
       ("dice_loss", "jaccard_loss", "tversky_loss", "dice_focal_loss", "dice_ce_loss")},
    **{(cls, "from_logits"): (lambda v, c=cls: getattr(marsops, c)(from_logits=v)) for cls in
       ("DiceLoss", "JaccardLoss", "TverskyLoss", "DiceFocalLoss", "DiceCELoss")},
    ("StreamingIoU", "per_image"): lambda v: marsops.StreamingIoU(3, per_image=v),
    ("lovasz_softmax_loss", "per_image"): lambda v: marsops.lovasz_softmax_loss(
        torch.randn(2, 3, 4), torch.randint(0, 3, (2, 4)), per_image=v),
    ("LovaszSoftmaxLoss", "per_image"): lambda v: marsops.LovaszSoftmaxLoss(per_image=v),
    ("flip4_argmax", "softmax"): lambda v: _views(marsops.flip4_argmax, softmax=v)(),
    ("d4_argmax", "softmax"): lambda v: _views(marsops.d4_argmax, softmax=v)(),
    ("StreamingIoU.update_flip4", "softmax"): lambda v: _metric_views("update_flip4", softmax=v)(),
    ("StreamingIoU.update_d4", "softmax"): lambda v: _metric_views("update_d4", softmax=v)(),
}


def _public_callables():
    """(name, callable) of every function and class in marsops.__all__ and every public method of
    those classes (their __init__ as the class)."""
    for name in marsops.__all__:
        obj = getattr(marsops, name)
        if inspect.isclass(obj):
            yield name, obj.__init__
            for attr, member in vars(obj).items():
                if callable(member) and not attr.startswith("_"):
                    yield f"{name}.{attr}", member
        elif callable(obj):
            yield name, obj


def test_every_boolean_option_of_the_public_api_is_covered_below():
    found = set()
    for name, fn in _public_callables():
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            continue
        found |= {(name, p.name) for p in params if isinstance(p.default, bool) or p.annotation in (bool, "bool")}
    assert found and found <= set(BOOL_OPTIONS), sorted(found - set(BOOL_OPTIONS))


@pytest.mark.parametrize("option", sorted(BOOL_OPTIONS), ids=[".".join(o) for o in sorted(BOOL_OPTIONS)])
@pytest.mark.parametrize("backend", [b for b, d in ALL if d == "cpu"])
def test_every_boolean_option_takes_true_or_false_only(option, backend, monkeypatch):
    monkeypatch.setenv("MARSOPS_BACKEND", backend)
    call = BOOL_OPTIONS[option]
    for value in ("False", 2, None, 1.0, torch.tensor(True), [True]):
        with pytest.raises(TypeError, match=f"{option[1]} must be True or False, got"):
            call(value)
    for value in (True, False, np.bool_(True)):
        call(value)


REGION_FLOAT_OPTIONS = [(name, option) for name in ("dice_loss", "jaccard_loss", "tversky_loss", "dice_focal_loss",
                                                    "dice_ce_loss")
                        for option, p in inspect.signature(getattr(marsops, name)).parameters.items()
                        if isinstance(p.default, float)]


def test_the_region_losses_float_options_are_all_listed():
    assert {o for _, o in REGION_FLOAT_OPTIONS} == {"smooth", "alpha", "beta", "gamma", "lambda_dice", "lambda_focal",
                                                    "lambda_ce", "label_smoothing"}


@pytest.mark.parametrize("backend,device", REGION, ids=backend_ids(REGION))
@pytest.mark.parametrize("name,option", REGION_FLOAT_OPTIONS, ids=[f"{n}.{o}" for n, o in REGION_FLOAT_OPTIONS])
def test_region_losses_refuse_nonfinite_or_negative_float_options(backend, device, name, option):
    """tversky_loss(alpha=inf) returned NaN; each float option is finite and >= 0 (label_smoothing
    at most 1), or a ValueError naming it."""
    x, t = torch.randn(2, 3, 4, device=device), torch.randint(0, 3, (2, 4), device=device)
    for value in (math.inf, -math.inf, math.nan, -0.5) + ((1.5,) if option == "label_smoothing" else ()):
        with pytest.raises(ValueError, match=f"{option} must be"):
            getattr(marsops, name)(x, t, backend=backend, **{option: value})
    with pytest.raises(TypeError, match=option):
        getattr(marsops, name)(x, t, backend=backend, **{option: "1"})
    assert torch.isfinite(getattr(marsops, name)(x, t, backend=backend, **{option: 0.0 if option != "alpha" else 1.0}))


@pytest.mark.parametrize("backend,device", REGION, ids=backend_ids(REGION))
def test_region_weights_must_be_finite(backend, device):
    x, t = torch.randn(2, 3, 4, device=device), torch.randint(0, 3, (2, 4), device=device)
    for bad in ("inf", "nan", "-1.0"):  # on a GPU a device-side assertion: run in a fresh process
        assert_label_error(device, f"marsops.dice_loss(torch.randn(2, 3, 4, device='{device}'), "
                           f"torch.randint(0, 3, (2, 4), device='{device}'), "
                           f"weight=torch.tensor([1.0, float('{bad}'), 1.0], device='{device}'), backend='{backend}')",
                           "weight must be finite and >= 0", cpu_error=ValueError)
    with pytest.raises(ValueError, match="alpha and beta must not both be 0"):
        marsops.tversky_loss(x, t, alpha=0.0, beta=0.0, backend=backend)
