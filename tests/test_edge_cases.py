"""Autograd modes and edge cases where a fused kernel could silently differ from the formula:
each ends in the reference's result or in a clear error, on every backend."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import marsops
from marsops import reference
from helpers import assert_close, assert_label_error, backend_ids, kernel_backends, run_gloo_processes

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
        n = (y.to(device) != 255).sum((1, 2))
        return torch.where(n > 0, loss.sum((1, 2)) / n, torch.zeros((), device=device)).mean()

    leaf = x.clone().to(device).requires_grad_()
    per_image_mean(marsops.focal_loss(leaf, y.to(device), gamma=0.0, ignore_index=255, reduction="none",
                                      backend=backend)).backward()
    ce = x.clone().requires_grad_()
    per_image_mean(F.cross_entropy(ce, y, ignore_index=255, reduction="none")).backward()
    assert torch.isfinite(leaf.grad).all() and (leaf.grad[1] == 0).all()
    assert_close(leaf.grad, ce.grad)


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
        with pytest.raises(RuntimeError, match="forward-mode AD"):
            marsops.sigmoid_focal_loss(x, (x > 0).float(), pos_weight=dual, backend=backend)


def test_negative_region_weights_are_refused_in_compiled_code_too():
    x, t = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    fn = torch.compile(lambda x, t, w: marsops.dice_loss(x, t, weight=w, backend="cpu"), fullgraph=True)
    assert torch.isfinite(fn(x, t, torch.tensor([1.0, 2.0, 1.0])))
    with pytest.raises(RuntimeError, match="weight must be >= 0"):
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
