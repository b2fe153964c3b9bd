"""Region losses in every mode (binary, multi-label, one-hot / soft labels, probabilities) and
reduction ("mean", "sum", "none"): the kernels against the reference with hypothesis, gradients
against finite differences (gradcheck), bad inputs, opcheck and torch.compile. Oracles we did not
write (MONAI, smp, kornia): tests/test_region_oracles.py."""
import pytest
import torch
from hypothesis import given, strategies as st

import marsops
from helpers import assert_close, assert_compiles_like_eager, assert_label_error, backend_ids, kernel_backends

BACKENDS = kernel_backends("dense_region_stats")
ALL = [("reference", "cpu")] + BACKENDS
REGION = ("dice_loss", "jaccard_loss", "tversky_loss")


def make_target(kind, shape, g, ignore_index=-100):
    """A target of `shape` of one kind: soft float labels, bool / uint8 / int64 0-1 masks (int64 with
    some elements ignored), or a class map of C classes (shape (N, *); C = shape's class count)."""
    if kind == "soft":
        return torch.rand(shape, generator=g, dtype=torch.float64)
    if kind == "map":
        n, c, *spatial = shape
        t = torch.randint(0, c, [n] + spatial, generator=g)
        t[torch.rand(t.shape, generator=g) < 0.2] = ignore_index
        return t
    mask = torch.rand(shape, generator=g) < 0.4
    if kind == "bool":
        return mask
    if kind == "uint8":
        return mask.to(torch.uint8)
    t = mask.long()
    t[torch.rand(shape, generator=g) < 0.2] = ignore_index
    return t


@st.composite
def mode_case(draw):
    mode = draw(st.sampled_from(["multiclass", "binary", "multilabel"]))
    n = draw(st.integers(0, 3)) if draw(st.integers(0, 9)) == 0 else draw(st.integers(1, 3))
    c = 1 if mode == "binary" else draw(st.integers(1, 9))
    spatial = draw(st.sampled_from([(), (1,), (7,), (3, 5), (4, 9), (2, 3, 4), (5, 33)]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kinds = ["soft", "bool", "uint8", "int"] + (["map"] if mode == "multiclass" else [])
    kind = draw(st.sampled_from(kinds))
    from_logits = draw(st.booleans())
    name = draw(st.sampled_from(REGION + ("dice_ce_loss", "dice_focal_loss")))
    x = torch.randn((n, c) + spatial, generator=g, dtype=torch.float64) * draw(st.sampled_from([1.0, 4.0, 30.0]))
    target = make_target(kind, (n, c) + spatial, g)
    kw = dict(mode=mode, per_image=draw(st.booleans()), smooth=draw(st.sampled_from([0.0, 1e-5, 1.0])),
              reduction=draw(st.sampled_from(["mean", "sum", "none"])), from_logits=from_logits)
    if name in ("dice_ce_loss", "dice_focal_loss"):
        # Their second term needs logits and one loss value; multiclass: soft labels and dice_ce only.
        if mode == "multiclass" and kind in ("int", "uint8", "map"):
            kind, target = "soft", make_target("soft", (n, c) + spatial, g)
        if mode == "multiclass":
            name = "dice_ce_loss"
        kw.update(from_logits=True, reduction="mean")
        if name == "dice_focal_loss":
            kw["gamma"] = draw(st.sampled_from([0.0, 0.5, 2.0]))
    if not kw["from_logits"]:
        x = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    if mode == "binary" and draw(st.booleans()):  # (N, *) logits and target
        x, target = x[:, 0], (target[:, 0] if kind != "map" else target)
    if draw(st.booleans()) and x.dim() > 2:  # the same values, laid out class-last
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
        if kind != "map" and target.dim() == x.dim():
            target = target.movedim(1, -1).contiguous().movedim(-1, 1)
    if draw(st.booleans()):
        kw["weight"] = torch.rand(c, generator=g, dtype=torch.float64) + 0.1
    if c > 1 and draw(st.booleans()):
        kw["classes"] = draw(st.lists(st.integers(0, c - 1), min_size=1, max_size=c, unique=True))
    if name == "tversky_loss":
        kw["alpha"], kw["beta"] = draw(st.sampled_from([(0.5, 0.5), (0.3, 0.7), (1.0, 0.0)]))
    return name, x, target, kw


def run(name, x, target, kw, backend, device, dtype, seed=0):
    """(loss, dL/dx, dL/dtarget or None) for an upstream gradient of random values."""
    x = x.to(device=device, dtype=dtype, copy=True).requires_grad_()
    soft = target.is_floating_point()
    t = target.to(device=device, dtype=dtype if soft else target.dtype, copy=True).requires_grad_(soft)
    kw = {k: (v.to(device=device, dtype=torch.float32) if torch.is_tensor(v) else v) for k, v in kw.items()}
    loss = getattr(marsops, name)(x, t, backend=backend, **kw)
    up = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    grads = torch.autograd.grad(loss, [x, t] if soft else [x], up.to(device=device, dtype=loss.dtype),
                                allow_unused=True)
    return loss, grads[0], (grads[1] if soft else None)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
@given(case=mode_case(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
def test_matches_reference(backend, device, case, dtype):
    name, x, target, kw = case
    if dtype == torch.float64 and backend == "triton":
        dtype = torch.float32
    expected = run(name, x, target, kw, "reference", "cpu", dtype)
    actual = run(name, x, target, kw, backend, device, dtype)
    assert actual[0].shape == expected[0].shape
    for a, e in zip(actual, expected):
        if e is not None:
            # The sums are float64 in both; the per-element terms fp32 (the kernels' compute type
            # for fp32 / fp16 / bf16 inputs): TOLERANCE's bounds (tests/helpers.py).
            assert_close(a.cpu(), e, dtype=dtype)


@pytest.mark.parametrize("mode,shape,kind", [("binary", (2, 1, 3, 4), "soft"), ("multilabel", (2, 3, 5), "int"),
                                             ("multiclass", (3, 4, 2, 3), "soft"), ("multiclass", (2, 3, 6), "map")])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("per_image", [False, True])
def test_gradcheck_float64(mode, shape, kind, from_logits, per_image):
    """The cpu kernels' gradients (logits, and soft targets) against finite differences."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if not from_logits:  # probabilities away from 0 and 1, so that x +- eps stays inside [0, 1]
        x = 0.1 + 0.8 * torch.rand(shape, generator=g, dtype=torch.float64)
    target = make_target(kind, shape, g)
    soft = target.is_floating_point()
    if soft:
        target = (0.1 + 0.8 * target).requires_grad_()
    w = torch.tensor([1.0, 2.0, 0.5, 3.0][: shape[1]], dtype=torch.float64)

    def loss(x, *t):
        return marsops.tversky_loss(x, t[0] if t else target, 0.3, 0.7, weight=w, mode=mode, from_logits=from_logits,
                                    per_image=per_image, reduction="none", backend="cpu")

    inputs = (x.requires_grad_(),) + ((target,) if soft else ())
    assert torch.autograd.gradcheck(loss, inputs)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_reductions_relate(backend, device):
    """none: weight_c (1 - score_c) of the scored classes; sum: their sum; mean: their weighted mean
    (over the images with per_image)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 5, 6, generator=g).to(device)
    t = (torch.rand(3, 4, 5, 6, generator=g) < 0.3).to(device)
    w = torch.tensor([0.5, 1.0, 2.0, 4.0], device=device)
    for per_image in (False, True):
        kw = dict(mode="multilabel", weight=w, classes=[3, 1], per_image=per_image, backend=backend)
        none = marsops.dice_loss(x, t, reduction="none", **kw)
        assert none.shape == ((3, 2) if per_image else (2,))
        torch.testing.assert_close(marsops.dice_loss(x, t, reduction="sum", **kw), none.sum())
        mean = marsops.dice_loss(x, t, **kw)
        torch.testing.assert_close(mean, (none.sum(-1) / 5.0).mean())
        # The unweighted per-class losses, by hand from the definition.
        p = torch.sigmoid(x.double())
        dims = (2, 3) if per_image else (0, 2, 3)
        inter, mass, count = (p * t).sum(dims), p.sum(dims), t.double().sum(dims)
        dice = (2 * inter + 1) / (mass + count + 1)
        torch.testing.assert_close(none.double(), ((1 - dice) * w.double())[..., [3, 1]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_modes_agree_where_they_meet(backend, device):
    """Softmax against a one-hot target is the class-map multiclass loss; from_logits=False on
    sigmoid / softmax outputs equals from_logits=True on the logits; binary (N, *) equals (N, 1, *)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 5, generator=g, dtype=torch.float64).to(device)
    if backend == "triton":
        x = x.float()
    labels = torch.randint(0, 4, (2, 6, 5), generator=g).to(device)
    onehot = torch.nn.functional.one_hot(labels, 4).movedim(-1, 1)
    for reduction in ("mean", "none"):
        by_map = marsops.jaccard_loss(x, labels, reduction=reduction, backend=backend)
        torch.testing.assert_close(marsops.jaccard_loss(x, onehot.bool(), reduction=reduction, backend=backend), by_map)
        torch.testing.assert_close(marsops.jaccard_loss(x, onehot.float(), reduction=reduction, backend=backend),
                                   by_map)
        torch.testing.assert_close(marsops.jaccard_loss(x.softmax(1), labels, reduction=reduction, from_logits=False,
                                                        backend=backend), by_map)
        ml = marsops.dice_loss(x, onehot.float(), mode="multilabel", reduction=reduction, backend=backend)
        torch.testing.assert_close(marsops.dice_loss(x.sigmoid(), onehot.float(), mode="multilabel",
                                                     reduction=reduction, from_logits=False, backend=backend), ml)
    b = marsops.dice_loss(x[:, 0], onehot[:, 0], mode="binary", backend=backend)
    torch.testing.assert_close(marsops.dice_loss(x[:, :1], onehot[:, :1], mode="binary", backend=backend), b)
    torch.testing.assert_close(marsops.dice_loss(x[:, :1], onehot[:, 0], mode="binary", backend=backend), b)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_ignored_elements_change_nothing(backend, device):
    """An element equal to ignore_index counts nowhere: NaN / inf logits there leave the loss and the
    other gradients as if it were absent, and its own gradient is 0."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 16, generator=g).to(device)
    t = (torch.rand(2, 3, 16, generator=g) < 0.5).long().to(device)
    t[0, 1, :5] = 255
    poisoned = x.clone()
    poisoned[0, 1, :3] = float("nan")
    poisoned[0, 1, 3:5] = float("inf")
    results = []
    for logits in (x, poisoned):
        logits = logits.clone().requires_grad_()
        loss = marsops.dice_loss(logits, t, mode="multilabel", ignore_index=255, reduction="none", backend=backend)
        loss.sum().backward()
        results.append((loss, logits.grad))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])
    assert (results[1][1][0, 1, :5] == 0).all()


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batches(backend, device, reduction):
    x = torch.zeros(0, 3, 4, device=device, requires_grad=True)
    t = torch.zeros(0, 3, 4, device=device)
    for per_image in (False, True):
        loss = marsops.dice_loss(x, t, mode="multilabel", per_image=per_image, reduction=reduction, backend=backend)
        assert loss.shape == {"none": (0, 3) if per_image else (3,)}.get(reduction, ())
        assert (loss == 0).all()
        (g,) = torch.autograd.grad(loss.sum(), x)
        assert g.shape == x.shape
    if reduction == "mean":  # the sums' second terms too (F.cross_entropy alone gives 0 / 0 = NaN)
        for mode in ("multiclass", "multilabel"):
            assert marsops.dice_ce_loss(x, t, mode=mode, backend=backend).item() == 0


# Values a kernel checks as it reads them: on a GPU a device-side assertion, so each call is code
# that helpers.assert_label_error runs in a fresh process there ({d}: the device, {b}: the backend).
BAD_VALUES = [
    "marsops.dice_loss(torch.rand(2, 3, 4, device='{d}') + 0.5, torch.zeros(2, 3, 4, device='{d}'), "
    "mode='multilabel', from_logits=False, backend='{b}')",
    "marsops.dice_loss(torch.full((2, 3, 4), float('nan'), device='{d}'), torch.zeros(2, 3, 4, device='{d}'), "
    "mode='multilabel', from_logits=False, backend='{b}')",
    "marsops.dice_loss(torch.randn(2, 1, 4, device='{d}'), torch.full((2, 1, 4), 1.5, device='{d}'), mode='binary', "
    "backend='{b}')",
    "marsops.dice_loss(torch.randn(2, 1, 4, device='{d}'), torch.full((2, 1, 4), float('nan'), device='{d}'), "
    "mode='binary', backend='{b}')",
    "marsops.dice_loss(torch.randn(2, 3, 4, device='{d}'), torch.full((2, 3, 4), 2, device='{d}'), mode='multilabel', "
    "backend='{b}')",
    "marsops.dice_loss(torch.rand(2, 3, 4, device='{d}'), torch.full((2, 4), 3, device='{d}'), from_logits=False, "
    "backend='{b}')",
    "marsops.dice_loss(torch.randn(2, 3, 4, device='{d}'), torch.full((2, 4), 3, device='{d}'), reduction='none', "
    "backend='{b}')",
    # float64 soft labels are checked in float64: 1 + 1e-12 is outside [0, 1]
    "t = torch.rand(2, 3, 4, dtype=torch.float64, device='{d}'); t[1, 2, 3] = 1 + 1e-12; "
    "marsops.dice_loss(torch.randn(2, 3, 4, device='{d}'), t, mode='multilabel', backend='{b}')",
]


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@pytest.mark.parametrize("case", range(len(BAD_VALUES)))
def test_bad_values_raise(backend, device, case):
    assert_label_error(device, BAD_VALUES[case].format(d=device, b=backend), "outside", cpu_error=ValueError)


@pytest.mark.parametrize("call_,error,match", [
    (lambda: marsops.dice_loss(torch.randn(2, 3, 4), torch.zeros(2, 3, 4), mode="softmax"), ValueError, "mode"),
    (lambda: marsops.dice_loss(torch.randn(2, 3, 4), torch.zeros(2, 3, 4), mode="multilabel", reduction="avg"),
     ValueError, "reduction"),
    (lambda: marsops.dice_loss(torch.randn(2, 3, 4), torch.zeros(2, 3, 4), from_logits="no"), TypeError,
     "from_logits"),
    (lambda: marsops.dice_loss(torch.randn(2, 3, 4), torch.zeros(2, 3, 5), mode="multilabel"), ValueError, "shape"),
    (lambda: marsops.dice_loss(torch.randn(2, 3, 4), torch.zeros(2, 4), mode="multilabel"), ValueError, "shape"),
    (lambda: marsops.dice_loss(torch.randn(2, 2, 4), torch.zeros(2, 3, 4), mode="binary"), ValueError, "binary"),
    (lambda: marsops.dice_loss(torch.randn(2, 3, 4), torch.zeros(2, 4)), TypeError, "integer"),
    (lambda: marsops.dice_loss(torch.randn(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.complex64)), TypeError,
     "target"),
    (lambda: marsops.dice_ce_loss(torch.rand(2, 3, 4), torch.zeros(2, 3, 4), mode="multilabel", from_logits=False),
     ValueError, "logits"),
    (lambda: marsops.dice_focal_loss(torch.randn(2, 3, 4), torch.zeros(2, 3, 4), mode="multilabel",
                                     reduction="none"), ValueError, "reduction"),
    (lambda: marsops.dice_focal_loss(torch.randn(2, 3, 4), torch.zeros(2, 3, 4)), ValueError, "class map"),
    (lambda: marsops.dice_ce_loss(torch.randn(2, 3, 4), torch.zeros(2, 3, 4), mode="binary", label_smoothing=0.1),
     ValueError, "label_smoothing"),
    (lambda: marsops.DiceLoss(mode="sigmoid"), ValueError, "mode"),
    (lambda: marsops.DiceLoss(reduction="avg"), ValueError, "reduction"),
])
def test_bad_arguments_raise_clear_errors(call_, error, match):
    with pytest.raises(error, match=match):
        call_()


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_dice_ce_and_dice_focal_second_terms(backend, device):
    """Binary / multi-label: Dice + BCE (ce_weight as pos_weight) and Dice + sigmoid focal; multiclass
    soft labels: Dice + soft-label cross-entropy."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 8, generator=g, dtype=torch.float64).to(device)
    if backend == "triton":
        x = x.float()
    t = (torch.rand(2, 3, 8, generator=g) < 0.4).to(x.dtype).to(device)
    pw = torch.tensor([1.0, 2.0, 0.5], dtype=x.dtype, device=device)
    dice = marsops.dice_loss(x, t, mode="multilabel", backend=backend)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, pos_weight=pw.view(3, 1))
    torch.testing.assert_close(marsops.dice_ce_loss(x, t, ce_weight=pw, lambda_ce=0.5, mode="multilabel",
                                                    backend=backend), dice + 0.5 * bce)
    focal = marsops.sigmoid_focal_loss(x, t, alpha=None, gamma=2.0)
    torch.testing.assert_close(marsops.dice_focal_loss(x, t, gamma=2.0, mode="multilabel", backend=backend),
                               dice + focal)
    soft = torch.softmax(torch.randn(2, 3, 8, generator=g, dtype=x.dtype), 1).to(device)
    expected = marsops.dice_loss(x, soft, backend=backend) + torch.nn.functional.cross_entropy(x, soft)
    torch.testing.assert_close(marsops.dice_ce_loss(x, soft, backend=backend), expected)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_opcheck(backend, device):
    x = torch.randn(2, 3, 4, 5, device=device, requires_grad=True)
    t = torch.rand(2, 3, 4, 5, device=device, requires_grad=True)
    for activation, per_image in ((1, False), (2, True), (0, False)):
        xa = x.detach().sigmoid().requires_grad_() if activation == 0 else x
        args = (xa, t, activation, False, 0, per_image, backend)
        torch.library.opcheck(torch.ops.marsops.dense_region.default, args)
    labels = torch.randint(0, 3, (2, 4, 5), device=device)
    torch.library.opcheck(torch.ops.marsops.dense_region.default, (x, labels, 2, True, -100, False, backend))


def test_torch_compile_fullgraph():
    masks = (torch.rand(2, 3, 8, 8) < 0.5).float()
    assert_compiles_like_eager(marsops.DiceLoss(mode="multilabel", per_image=True, backend="cpu"), 3, masks)
    assert_compiles_like_eager(marsops.DiceCELoss(mode="multilabel", backend="cpu"), 3, masks)
    labels = torch.randint(0, 4, (2, 8, 8))
    assert_compiles_like_eager(lambda x, t: marsops.dice_loss(x, t, reduction="none", backend="cpu").sum(), 4, labels)


def test_double_backward_and_forward_ad_refused():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.rand(2, 3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="double backward"):
        (g,) = torch.autograd.grad(marsops.dice_loss(x, t, mode="multilabel", backend="cpu"), x, create_graph=True)
        g.sum().backward()
    with pytest.raises(RuntimeError, match="forward"):
        with torch.autograd.forward_ad.dual_level():
            marsops.dice_loss(torch.autograd.forward_ad.make_dual(x.detach(), torch.ones_like(x)), t,
                              mode="multilabel", backend="cpu")


def test_cpu_result_is_the_same_for_any_thread_count():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 5, 97, 61, generator=g).requires_grad_()
    t = torch.rand(3, 5, 97, 61, generator=g)
    before = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            loss = marsops.dice_loss(x, t, mode="multilabel", per_image=True, reduction="none", backend="cpu")
            (grad,) = torch.autograd.grad(loss.sum(), x)
            out.append((loss, grad))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_learnable_class_weights_get_gradients_outside_the_fused_mean():
    """The loss is formed from the sums with tensor ops, so a weight that requires grad gets one."""
    x, t = torch.randn(2, 3, 5), torch.rand(2, 3, 5)
    w = torch.ones(3, requires_grad=True)
    for backend in ("reference", "cpu"):
        (gw,) = torch.autograd.grad(marsops.dice_loss(x, t, weight=w, mode="multilabel", reduction="sum",
                                                      backend=backend), w)
        torch.testing.assert_close(gw, marsops.dice_loss(x, t, mode="multilabel", reduction="none",
                                                         backend=backend))


def test_compiled_gradients_keep_the_layouts_the_fake_kernels_promise():
    """Review: the backward's outputs must have empty_like's strides (inductor asserts them), also
    for a target laid out unlike the logits and for permutations that are not channels_last."""
    loss = torch.compile(marsops.DiceLoss(mode="multilabel", backend="cpu"), fullgraph=True)
    cases = [(torch.randn(2, 3, 5, 4).to(memory_format=torch.channels_last), torch.rand(2, 3, 5, 4)),
             (torch.randn(2, 3, 4, 5).transpose(2, 3), torch.rand(2, 3, 5, 4)),
             (torch.randn(2, 3, 5, 4), torch.rand(2, 3, 5, 4).to(memory_format=torch.channels_last))]
    for x, t in cases:
        x, t = x.requires_grad_(), t.requires_grad_()
        gx, gt = torch.autograd.grad(loss(x, t), [x, t])
        ex, et = torch.autograd.grad(marsops.dice_loss(x, t, mode="multilabel", backend="reference"), [x, t])
        torch.testing.assert_close(gx, ex)
        torch.testing.assert_close(gt, et)
        assert gx.stride() == torch.empty_like(x).stride() and gt.stride() == torch.empty_like(t).stride()


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_vanishing_mass_of_an_absent_class_gives_a_finite_gradient(backend, device):
    """Review: smooth 0, a class absent from the target with a tiny predicted mass: dL/dI = -2 / S
    passes fp32's range; the kernels saturate it (inf * 0 would be NaN), as the reference's float64."""
    for x, from_logits in ((torch.tensor([[-88.5]]), True), (torch.tensor([[1e-44]]), False)):
        x = x.to(device).requires_grad_()
        loss = marsops.dice_loss(x, torch.zeros(1, 1, device=device), mode="binary", smooth=0.0,
                                 from_logits=from_logits, backend=backend)
        (g,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(g).all() and loss.item() == 1.0


def test_unsigned_class_maps_on_every_path():
    x = torch.randn(2, 3, 5)
    m = torch.randint(0, 3, (2, 5))
    expected = marsops.dice_loss(x, m, backend="cpu")
    for dtype in (torch.uint16, torch.uint32, torch.uint64):
        torch.testing.assert_close(marsops.dice_loss(x, m.to(dtype), backend="cpu"), expected)
        torch.testing.assert_close(marsops.dice_loss(x, m.to(dtype), reduction="sum", backend="cpu"),
                                   marsops.dice_loss(x, m, reduction="sum", backend="cpu"))
