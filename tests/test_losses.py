"""Region losses (Dice, Jaccard, Tversky, Dice+focal, Dice+CE): every kernel against the
reference, against MONAI (an oracle we did not write) where it is installed, gradcheck, extreme
and bad inputs, opcheck and torch.compile."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import marsops
from marsops import reference
from helpers import assert_close, assert_compiles_like_eager, assert_label_error, backend_ids, kernel_backends

BACKENDS = kernel_backends("region_stats")
LOSSES = ("dice_loss", "jaccard_loss", "tversky_loss", "dice_focal_loss", "dice_ce_loss")


def call(name, logits, target, backend, **kw):
    return getattr(marsops, name)(logits, target, backend=backend, **kw)


@st.composite
def region_case(draw):
    """Random logits/target and options of one of the region losses, corners drawn on purpose."""
    name = draw(st.sampled_from(LOSSES))
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 12))
    spatial = draw(st.sampled_from([(), (1,), (7,), (3, 5), (4, 9), (2, 3, 4), (5, 33)]))
    ignore_index = draw(st.sampled_from([-100, 0, 255]))
    target_dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.uint8]))
    scale = draw(st.sampled_from([1.0, 5.0, 1e4]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((n, c) + spatial, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, c, (n,) + spatial, generator=g)
    target[torch.rand(target.shape, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = ignore_index
    if target_dtype == torch.uint8 and ignore_index < 0:
        target[target == ignore_index] = 255
        ignore_index = 255
    if draw(st.booleans()):  # the same values, laid out class-last
        logits = logits.movedim(1, -1).contiguous().movedim(-1, 1)
    kw = dict(ignore_index=ignore_index, per_image=draw(st.booleans()),
              smooth=draw(st.sampled_from([0.0, 1e-5, 1.0])))
    if draw(st.booleans()):
        kw["weight"] = torch.rand(c, generator=g, dtype=torch.float64) + 0.1
    if c > 1 and draw(st.booleans()):
        kw["classes"] = draw(st.lists(st.integers(0, c - 1), min_size=1, max_size=c, unique=True))
    if name == "tversky_loss":
        kw["alpha"], kw["beta"] = draw(st.sampled_from([(0.5, 0.5), (0.3, 0.7), (1.0, 0.0), (0.0, 2.0)]))
    if name in ("dice_focal_loss", "dice_ce_loss"):
        kw["label_smoothing"] = draw(st.sampled_from([0.0, 0.0, 0.1]))
        other = "focal" if name == "dice_focal_loss" else "ce"
        kw[f"lambda_{other}"] = draw(st.sampled_from([1.0, 0.5]))
        if draw(st.booleans()):
            kw[f"{other}_weight"] = torch.rand(c, generator=g, dtype=torch.float64)
    if name == "dice_focal_loss":
        kw["gamma"] = draw(st.sampled_from([0.0, 0.5, 2.0, 1.7]))
    return name, logits, target.to(target_dtype), kw


def run(name, logits, target, kw, backend, device, dtype, upstream=0.75):
    x = logits.to(device=device, dtype=dtype, copy=True).requires_grad_()
    kw = {k: (v.to(device=device, dtype=torch.float32) if torch.is_tensor(v) else v) for k, v in kw.items()}
    loss = call(name, x, target.to(device), backend, **kw)
    (grad,) = torch.autograd.grad(loss, x, torch.tensor(upstream, dtype=loss.dtype, device=device))
    return loss, grad


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
@given(case=region_case(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
def test_matches_reference(backend, device, case, dtype):
    """The kernel against the reference on the same rounded inputs, computed in fp32 (fp64 for
    fp64): each rounds its loss and saved gradient once to dtype, the gradient once more when
    scaled by the upstream gradient (helpers.TOLERANCE)."""
    name, logits, target, kw = case
    if dtype == torch.float64 and backend == "triton":
        dtype = torch.float32  # Triton computes in fp32 and rejects fp64
    loss, grad = run(name, logits, target, kw, backend, device, dtype)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    ref_loss, ref_grad = run(name, logits.to(dtype).to(compute), target, kw, "reference", "cpu", compute)
    assert loss.dtype == dtype and grad.dtype == dtype and loss.shape == ()
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert_close(loss, ref_loss.to(dtype), dtype)
    assert_close(grad, ref_grad.to(dtype), dtype)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("per_image", [False, True])
def test_gradcheck_float64(name, per_image):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, dtype=torch.float64, generator=g).requires_grad_()
    target = torch.randint(0, 4, (2, 3, 5), generator=g)
    target[0, 0, :2] = -100
    kw = dict(per_image=per_image, weight=torch.tensor([0.5, 1.0, 2.0, 0.0], dtype=torch.float64))
    if name == "dice_focal_loss":
        kw.update(gamma=1.5, label_smoothing=0.1)
    for backend in ("reference", "cpu"):
        assert torch.autograd.gradcheck(lambda x: call(name, x, target, backend, **kw), (logits,))


# ---- oracles we did not write ----------------------------------------------------------------

def _monai_case(seed=0, n=3, c=4, shape=(6, 7), ignore=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((n, c) + shape, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, c, (n,) + shape, generator=g)
    if ignore:
        target[torch.rand(target.shape, generator=g) < 0.2] = 255
    return logits, target


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + BACKENDS,
                         ids=backend_ids([("reference", "cpu")] + BACKENDS))
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_dice_tversky_match_monai(backend, device, per_image, ignore):
    monai = pytest.importorskip("monai.losses")
    logits, target = _monai_case(ignore=ignore)
    ignore_index = 255 if ignore else None
    common = dict(to_onehot_y=True, softmax=True, smooth_nr=0.5, smooth_dr=0.5, batch=not per_image)
    ours = dict(smooth=0.5, per_image=per_image, ignore_index=ignore_index if ignore else -100)
    cases = [
        (monai.DiceLoss(**common, ignore_index=ignore_index), "dice_loss", {}),
        (monai.DiceLoss(**common, include_background=False, ignore_index=ignore_index), "dice_loss",
         dict(classes=[1, 2, 3])),
        (monai.TverskyLoss(**common, alpha=0.3, beta=0.7, ignore_index=ignore_index), "tversky_loss",
         dict(alpha=0.3, beta=0.7)),
    ]
    for module, name, extra in cases:
        x = logits.clone().requires_grad_()
        expected = module(x, target.unsqueeze(1))
        expected.backward()
        loss, grad = run(name, logits.float(), target, dict(ours, **extra), backend, device, torch.float32, 1.0)
        assert_close(loss, expected.float())
        assert_close(grad, x.grad.float())


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + BACKENDS,
                         ids=backend_ids([("reference", "cpu")] + BACKENDS))
@pytest.mark.parametrize("per_image", [False, True])
def test_dice_focal_and_dice_ce_match_monai(backend, device, per_image):
    """MONAI's DiceFocalLoss (1.6) applies a sigmoid focal term even with softmax=True, so the
    oracle is its DiceLoss plus its softmax FocalLoss; that focal term is a mean over pixels and
    classes (ours over pixels): lambda_focal / C. DiceCELoss's weight also multiplies its Dice
    terms, averaged over classes (ours: a weighted mean): lambda_dice = sum(weight) / C."""
    monai = pytest.importorskip("monai.losses")
    logits, target = _monai_case(seed=1, c=5)
    C = logits.shape[1]
    common = dict(to_onehot_y=True, softmax=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=not per_image)
    ce_weight = torch.tensor([0.2, 1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    dice, focal = monai.DiceLoss(**common), monai.FocalLoss(to_onehot_y=True, gamma=2.0, use_softmax=True)
    cases = [
        (lambda x, y: 0.7 * dice(x, y) + 1.3 * focal(x, y), "dice_focal_loss",
         dict(gamma=2.0, lambda_dice=0.7, lambda_focal=1.3 / C)),
        (monai.DiceCELoss(**common, weight=ce_weight, lambda_dice=1.0, lambda_ce=0.6, label_smoothing=0.1),
         "dice_ce_loss", dict(ce_weight=ce_weight, weight=ce_weight, lambda_dice=float(ce_weight.sum()) / C,
                              lambda_ce=0.6, label_smoothing=0.1)),
    ]
    for module, name, extra in cases:
        x = logits.clone().requires_grad_()
        expected = module(x, target.unsqueeze(1))
        expected.backward()
        loss, grad = run(name, logits.float(), target, dict(smooth=1e-5, per_image=per_image, **extra), backend,
                         device, torch.float32, 1.0)
        assert_close(loss, expected.float())
        assert_close(grad, x.grad.float())


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + BACKENDS,
                         ids=backend_ids([("reference", "cpu")] + BACKENDS))
def test_jaccard_is_dice_transformed(backend, device):
    """Without smoothing, per class J = D / (2 - D): an identity between two separately computed losses."""
    logits, target = _monai_case(seed=2)
    logits = logits.float()
    kw = dict(smooth=0.0, per_image=False)
    for c in range(logits.shape[1]):
        d = 1 - float(marsops.dice_loss(logits.to(device), target.to(device), classes=[c], backend=backend, **kw))
        j = 1 - float(marsops.jaccard_loss(logits.to(device), target.to(device), classes=[c], backend=backend, **kw))
        assert j == pytest.approx(d / (2 - d), rel=1e-5)


def test_dice_ce_with_zero_dice_weight_is_torch_cross_entropy():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 5, 5, generator=g, dtype=torch.float64)
    t = torch.randint(0, 6, (2, 5, 5), generator=g)
    t[0, 0] = -100
    w = torch.rand(6, generator=g, dtype=torch.float64)
    for backend in ("reference", "cpu"):
        got = marsops.dice_ce_loss(x, t, lambda_dice=0.0, ce_weight=w, label_smoothing=0.2, backend=backend)
        torch.testing.assert_close(got, F.cross_entropy(x, t, weight=w, label_smoothing=0.2))


# ---- semantics, corners, errors ---------------------------------------------------------------

@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + BACKENDS,
                         ids=backend_ids([("reference", "cpu")] + BACKENDS))
@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_and_empty_batches_cost_nothing(backend, device, name):
    """No counted pixel: every class is absent from prediction and target, scores 1, loss 0."""
    for shape in ((2, 3, 4), (0, 3, 4)):
        x = torch.randn(shape, device=device, requires_grad=True)
        target = torch.full((shape[0], shape[2]), -100, device=device)
        loss = call(name, x, target, backend, smooth=0.0)
        loss.backward()
        assert loss.item() == 0.0 and (x.grad == 0).all()


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_nan_and_inf_at_ignored_pixels_change_nothing(backend, device):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 16, generator=g)
    t = torch.randint(0, 5, (2, 16), generator=g)
    t[:, :3] = -100
    dirty = x.clone()
    dirty[0, :, 0], dirty[1, 2, 1], dirty[1, :, 2] = float("nan"), float("inf"), -float("inf")
    for name in LOSSES:
        clean_loss, clean_grad = run(name, x, t, {}, backend, device, torch.float32)
        loss, grad = run(name, dirty, t, {}, backend, device, torch.float32)
        assert torch.equal(loss, clean_loss) and torch.equal(grad, clean_grad)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_large_images_stay_finite(backend, device, dtype):
    """Sums over 2**17 pixels in half precision would lose every addend past 2048 (fp16) or
    overflow past 65504: the kernels sum in fp32 blocks and fp64 totals."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 4, 256, 256, generator=g) * 8).to(dtype)
    t = torch.randint(0, 4, (2, 256, 256), generator=g)
    for name in ("dice_loss", "dice_focal_loss"):
        loss, grad = run(name, x, t, {}, backend, device, dtype)
        ref_loss, ref_grad = run(name, x.double(), t, {}, "reference", "cpu", torch.float64)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        assert_close(loss, ref_loss.to(dtype), dtype)
        assert_close(grad, ref_grad.to(dtype), dtype)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
@pytest.mark.parametrize("num_classes", [65, 130])
def test_many_classes(backend, device, num_classes):
    """Beyond one register tile (64 classes) the Triton kernels stream classes in chunks."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, num_classes, 3, 7, generator=g)
    t = torch.randint(0, num_classes, (2, 3, 7), generator=g)
    t[0, 0, 0] = -100
    for name in ("dice_loss", "dice_focal_loss"):
        kw = dict(per_image=True, label_smoothing=0.1) if name == "dice_focal_loss" else {}
        loss, grad = run(name, x, t, kw, backend, device, torch.float32)
        ref_loss, ref_grad = run(name, x, t, kw, "reference", "cpu", torch.float32)
        assert_close(loss, ref_loss)
        assert_close(grad, ref_grad)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_class_absent_from_target_with_vanishing_prediction(backend, device):
    """A Tversky 'precision' loss (beta = 0) with a class the logits all but rule out: its
    coefficients dwarf fp32, and must neither overflow to inf nor turn 0 * inf into NaN."""
    x = torch.zeros(1, 3, 8)
    x[0, 2] = -80.0  # p_2 ~ 1e-35, absent from the target
    t = torch.tensor([[0, 1, 0, 1, 0, 1, 0, 1]])
    loss, grad = run("tversky_loss", x, t, dict(alpha=1.0, beta=0.0, smooth=0.0), backend, device, torch.float32)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + BACKENDS,
                         ids=backend_ids([("reference", "cpu")] + BACKENDS))
def test_labels_out_of_range_raise(backend, device):
    assert_label_error(device, f"marsops.dice_loss(torch.randn(2, 3, 4, device='{device}'), "
                               f"torch.tensor([[0, 1, 2, 3], [0, 0, 0, 0]], device='{device}'), backend='{backend}')",
                       "outside")


@pytest.mark.parametrize("call_,error,match", [
    (lambda: marsops.dice_loss(torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long)), ValueError, "shape"),
    (lambda: marsops.dice_loss(torch.randn(2, 3, 4), torch.zeros(2, 4)), TypeError, "integer"),
    (lambda: marsops.dice_loss(torch.zeros(2, 3, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)),
     TypeError, "floating"),
    (lambda: marsops.dice_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), classes=[3]), ValueError,
     "classes"),
    (lambda: marsops.dice_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), classes=[]), ValueError,
     "classes"),
    (lambda: marsops.dice_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), smooth=-1), ValueError,
     "smooth"),
    (lambda: marsops.dice_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), weight=torch.ones(4)),
     ValueError, "weight"),
    (lambda: marsops.tversky_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), alpha=0, beta=0),
     ValueError, "alpha"),
    (lambda: marsops.dice_focal_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), gamma=-1), ValueError,
     "gamma"),
    (lambda: marsops.dice_ce_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), label_smoothing=2),
     ValueError, "label_smoothing"),
])
def test_bad_arguments_raise_clear_errors(call_, error, match):
    with pytest.raises(error, match=match):
        call_()


def test_weighted_mean_and_classes_subset_semantics():
    """weight is a weighted mean of per-class scores; classes= scores a subset (others weigh 0)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 9, generator=g, dtype=torch.float64)
    t = torch.randint(0, 4, (2, 9), generator=g)
    per_class = torch.stack([marsops.dice_loss(x, t, classes=[c], backend="cpu") for c in range(4)])
    w = torch.tensor([0.0, 1.0, 3.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(marsops.dice_loss(x, t, weight=w, backend="cpu"), (per_class * w).sum() / w.sum())
    torch.testing.assert_close(marsops.dice_loss(x, t, classes=[1, 3], backend="cpu"), per_class[[1, 3]].mean())
    assert float(marsops.dice_loss(x, t, weight=torch.zeros(4), backend="cpu")) == 0.0  # nothing scored


def test_modules_and_defaults():
    x = torch.randn(2, 3, 5, requires_grad=True)
    t = torch.randint(0, 3, (2, 5))
    for module, fn in ((marsops.DiceLoss(), marsops.dice_loss), (marsops.JaccardLoss(), marsops.jaccard_loss),
                       (marsops.TverskyLoss(alpha=0.3, beta=0.7), lambda a, b: marsops.tversky_loss(a, b, 0.3, 0.7)),
                       (marsops.DiceFocalLoss(gamma=1.0), lambda a, b: marsops.dice_focal_loss(a, b, gamma=1.0)),
                       (marsops.DiceCELoss(ce_weight=[1.0, 2.0, 0.5]),
                        lambda a, b: marsops.dice_ce_loss(a, b, ce_weight=torch.tensor([1.0, 2.0, 0.5])))):
        assert torch.equal(module(x, t), fn(x, t)), module
        assert "smooth" in repr(module)
    assert "weight" in dict(marsops.DiceLoss(weight=[1.0, 2.0, 3.0]).named_buffers())


def test_learnable_weights_refused_by_kernels():
    x, t = torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="requires grad"):
        marsops.dice_loss(x, t, weight=torch.ones(3, requires_grad=True), backend="cpu")


def test_double_backward_and_forward_ad_refused():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (2, 4))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(marsops.dice_loss(x, t, backend="cpu"), x, create_graph=True)
    with pytest.raises(RuntimeError, match="forward"):
        with torch.autograd.forward_ad.dual_level():
            marsops.dice_loss(torch.autograd.forward_ad.make_dual(x.detach(), torch.ones_like(x)), t, backend="cpu")
    # The reference is plain autograd: higher-order gradients work there.
    (g,) = torch.autograd.grad(marsops.dice_loss(x, t, backend="reference"), x, create_graph=True)
    g.sum().backward()


def test_fp64_rejected_by_triton():
    if not any(b == "triton" for b, _ in BACKENDS):
        pytest.skip("triton cannot run here")
    device = next(d for b, d in BACKENDS if b == "triton")
    with pytest.raises(TypeError, match="fp32"):
        marsops.dice_loss(torch.randn(2, 3, 4, dtype=torch.float64, device=device),
                          torch.zeros(2, 4, dtype=torch.long, device=device), backend="triton")


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_opcheck(backend, device):
    x = torch.randn(2, 4, 3, 5, device=device, requires_grad=True)
    t = torch.randint(0, 4, (2, 3, 5), device=device)
    w = torch.ones(4, device=device)
    for per_image, focal in ((False, 0.0), (True, 1.0)):
        args = (x, t, w, [2.0, 0.0, 1.0, 1.0], 1.0, per_image, -100, 1.0, focal, 2.0, None, 2, 0.0, True, backend)
        torch.library.opcheck(torch.ops.marsops.region_loss.default, args)


def test_torch_compile_fullgraph():
    assert_compiles_like_eager(marsops.DiceFocalLoss(gamma=0.5, per_image=True, backend="cpu"), 4,
                               torch.randint(0, 4, (2, 8, 8)))


def test_reference_formulas_by_hand():
    """One tiny case worked out by hand: two pixels, two classes."""
    x = torch.log(torch.tensor([[[0.75, 0.5], [0.25, 0.5]]], dtype=torch.float64))  # p(class 0) = 0.75, 0.5
    t = torch.tensor([[0, 1]])
    # class 0: I = 0.75, S = 1.25, T = 1; class 1: I = 0.5, S = 0.75, T = 1
    d0, d1 = 2 * 0.75 / 2.25, 2 * 0.5 / 1.75
    assert float(marsops.dice_loss(x, t, smooth=0.0, backend="cpu")) == pytest.approx(1 - (d0 + d1) / 2)
    j0, j1 = 0.75 / (1.25 + 1 - 0.75), 0.5 / (0.75 + 1 - 0.5)
    assert float(marsops.jaccard_loss(x, t, smooth=0.0, backend="cpu")) == pytest.approx(1 - (j0 + j1) / 2)
    assert float(reference.region_scores(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0),
                                         (2.0, 0.0, 1.0, 1.0), 0.0)) == 1.0


# ---- found by review -------------------------------------------------------------------------

@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_fp16_gradients_survive_loss_scaling(backend, device):
    """Per-pixel gradients of a mean over 2^17 pixels are ~1e-6, below fp16's normal range: the
    saved gradient is fp32 for fp16 logits, so a mixed-precision loss scale (4096) lifts them
    before the single rounding to fp16, as the reference's autograd does."""
    g = torch.Generator().manual_seed(8)
    x16 = torch.randn(2, 4, 256, 256, generator=g).half()
    t = torch.randint(0, 4, (2, 256, 256), generator=g)
    bits = torch.randint(0, 2, x16.shape, generator=g)
    cases = (lambda x, b: marsops.dice_loss(x, t.to(x.device), backend=b),
             lambda x, b: marsops.dice_focal_loss(x, t.to(x.device), backend=b),
             lambda x, b: marsops.focal_loss(x, t.to(x.device), gamma=0.5, backend=b),
             lambda x, b: marsops.sigmoid_focal_loss(x, bits.to(x.device), backend=b))
    for fn in cases:
        x = x16.to(device).detach().requires_grad_()
        (fn(x, backend) * 4096).backward()
        ref = x16.double().requires_grad_()  # a leaf
        (fn(ref, "reference") * 4096).backward()
        assert x.grad.dtype == torch.float16
        assert_close(x.grad, ref.grad.half(), torch.float16)


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + BACKENDS,
                         ids=backend_ids([("reference", "cpu")] + BACKENDS))
def test_review_corners(backend, device):
    x = torch.randn(0, 3, 4, device=device, requires_grad=True)
    empty = torch.zeros(0, 4, dtype=torch.long, device=device)
    for name in LOSSES:  # per image with no image: 0, not a ZeroDivisionError or NaN
        assert call(name, x, empty, backend, per_image=True).item() == 0.0
    x = torch.randn(2, 3, 4, device=device)
    t = torch.randint(0, 3, (2, 4), device=device)
    nan_weight = torch.tensor([1.0, float("nan"), 1.0], device=device)
    assert torch.isnan(marsops.dice_ce_loss(x, t, ce_weight=nan_weight, backend=backend))  # not silently dropped
    # On a GPU the weight check is a device-side assertion: assert_label_error runs it in a fresh process.
    assert_label_error(device, f"marsops.dice_loss(torch.randn(2, 3, 4, device='{device}'), "
                       f"torch.randint(0, 3, (2, 4), device='{device}'), "
                       f"weight=torch.tensor([1.0, -1.0, 1.0], device='{device}'), backend='{backend}')",
                       "weight must be finite and >= 0", cpu_error=ValueError)


def test_reference_learns_class_weights_kernels_name_the_argument():
    x, t = torch.randn(2, 3, 4), torch.randint(0, 3, (2, 4))
    w = torch.ones(3, requires_grad=True)
    marsops.dice_loss(x, t, weight=w, backend="reference").backward()
    assert w.grad is not None
    with pytest.raises(ValueError, match="ce_weight requires grad"):
        marsops.dice_ce_loss(x, t, ce_weight=torch.ones(3, requires_grad=True), backend="cpu")


def test_cpu_gradient_is_the_same_for_any_thread_count():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 5, 61, 67, generator=g, requires_grad=True)  # 8174 pixels: two chunks, odd rows
    t = torch.randint(0, 5, (2, 61, 67), generator=g)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            (grad,) = torch.autograd.grad(marsops.dice_focal_loss(x, t, per_image=True, backend="cpu"), x)
            grads.append(grad)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], other) for other in grads[1:])


# ---- found by the third review (issue 23) ----------------------------------------------------------

CPU_ALL = [("reference", "cpu")] + [(b, d) for b, d in BACKENDS if d == "cpu" and b == "cpu"]  # fp64: no triton


def exact_region_loss(x, t, w, alpha_beta, smooth=1.0):
    """1 - the w-weighted mean of the per-class Dice scores (alpha_beta None) or Tversky scores
    (alpha, beta), by the formula, in float64 from float64 inputs: an oracle with no marsops code."""
    p = torch.softmax(x.double(), 1)
    onehot = F.one_hot(t, x.shape[1]).movedim(-1, 1).double()
    dims = (0,) + tuple(range(2, x.dim()))
    I, S, T = (p * onehot).sum(dims), p.sum(dims), onehot.sum(dims)
    if alpha_beta is None:
        score = (2 * I + smooth) / (S + T + smooth)
    else:
        alpha, beta = alpha_beta
        score = (I + smooth) / (I + alpha * (S - I) + beta * (T - I) + smooth)
    w = w.double()
    return 1 - (w * score).sum() / w.sum()


@pytest.mark.parametrize("backend,device", CPU_ALL, ids=backend_ids(CPU_ALL))
@pytest.mark.parametrize("name,alpha_beta", [("dice_loss", None), ("jaccard_loss", (1.0, 1.0)),
                                             ("tversky_loss", (0.3, 0.7))])
def test_float64_class_weights_keep_their_precision(backend, device, name, alpha_beta):
    """The class weights were rounded to float32 (a 1e-9 error at float64)."""
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 2, (2, 64), generator=g)
    x = torch.randn(2, 2, 64, generator=g, dtype=torch.float64)
    x[:, 1] += 6 * (t == 1)  # class 1 predicted well, class 0 poorly: the weights move the loss
    w = torch.tensor([0.1, 0.7], dtype=torch.float64)
    kw = {} if name != "tversky_loss" else dict(alpha=0.3, beta=0.7)
    got = getattr(marsops, name)(x.to(device), t.to(device), weight=w.to(device), backend=backend, **kw)
    exact = exact_region_loss(x, t, w, alpha_beta)
    assert_close(got, exact)
    # the test's power: weights rounded to float32 miss by more than float64's tolerance
    with pytest.raises(AssertionError):
        assert_close(exact_region_loss(x, t, w.float(), alpha_beta), exact)


@pytest.mark.parametrize("backend,device", CPU_ALL, ids=backend_ids(CPU_ALL))
def test_loss_modules_keep_float64_weights(backend, device):
    """The modules stored every weight as a float32 buffer: the same rounding for float64 logits."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, device=device)
    t = torch.randint(0, 3, (2, 5), generator=g, device=device)
    w = torch.tensor([0.1, 0.7, 0.3], dtype=torch.float64, device=device)
    pairs = [(marsops.FocalLoss(w, backend=backend), lambda: marsops.focal_loss(x, t, w, backend=backend)),
             (marsops.DiceLoss(weight=w, backend=backend), lambda: marsops.dice_loss(x, t, w, backend=backend)),
             (marsops.DiceCELoss(ce_weight=w, backend=backend),
              lambda: marsops.dice_ce_loss(x, t, ce_weight=w, backend=backend)),
             (marsops.DiceFocalLoss(focal_weight=w, backend=backend),
              lambda: marsops.dice_focal_loss(x, t, focal_weight=w, backend=backend))]
    for module, functional in pairs:
        assert all(b.dtype == torch.float64 for b in module.buffers())
        assert torch.equal(module(x, t), functional())
    sigmoid = marsops.SigmoidFocalLoss(pos_weight=w, backend=backend)
    assert sigmoid.pos_weight.dtype == torch.float64
    assert torch.equal(sigmoid(x, (x > 0).double()), marsops.sigmoid_focal_loss(x, (x > 0).double(), pos_weight=w,
                                                                                backend=backend))
    assert marsops.DiceLoss(weight=[0.1, 0.7, 0.3]).weight.dtype == torch.float32  # lists: float32, as before
