"""Oracle tests of the region losses' modes (issue 27: mode="binary" / "multilabel" / "multiclass"
with dense targets, from_logits, reduction "mean" / "sum" / "none") against libraries we did not
write: MONAI, segmentation_models_pytorch (smp) and kornia, each skipped when not installed.

Two kinds of oracle:
- the values those libraries hard-code in their own unit tests (MONAI tests/losses/
  test_dice_loss.py, test_tversky_loss.py, test_dice_ce_loss.py; smp tests/test_losses.py),
  independent of the installed version;
- the installed library on random float64 inputs: loss values and gradients (w.r.t. the logits,
  and w.r.t. soft targets where the library differentiates through them), including
  channels_last and 3-D (N, C, D, H, W) inputs, some drawn by hypothesis.

Each test maps a library configuration to the marsops arguments that give the same number; the
mapping, and every convention difference the comments below name, is the table of
docs/migrating.md (the tests named test_convention_* pin the differences, so a library changing
its convention fails here rather than leaving the table wrong).

Tolerances. Live comparisons are float64 on both sides: the same sums in another order, so the
relative difference is a few units of 2^-52 times the number of summed terms (at most a few
hundred here), about 1e-13; RTOL = 1e-10 leaves a wide margin and still catches any formula
difference (a wrong smooth, weight or mask moves the loss by far more than 1e-10). ATOL = 1e-12
covers gradient elements that are exactly or nearly 0 (their relative error is unbounded).
Published values are printed to 6 (MONAI Tversky: 4) significant digits, hence their own
tolerances. MONAI's FocalLoss casts its input to float32, so DiceFocal compares at fp32 accuracy.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import marsops
from marsops import backend as _backend

RTOL, ATOL = 1e-10, 1e-12



def _cpu_missing():
    try:
        return _backend.unavailable_reason("cpu", "dense_region_stats", "cpu")
    except RuntimeError as e:  # an extension built before the op existed: its schema is unknown
        return f"the compiled cpu kernels do not implement dense_region_stats ({e})"


_CPU_MISSING = _cpu_missing()
BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.skipif(_CPU_MISSING is not None,
                                                                        reason=str(_CPU_MISSING)))]
ORACLE_SETTINGS = settings(max_examples=25, deadline=None)


def _monai():
    return pytest.importorskip("monai.losses")


def _smp():
    return pytest.importorskip("segmentation_models_pytorch.losses")


def _kornia():
    return pytest.importorskip("kornia.losses")


def _cotangent(out):
    """Fixed, distinct weights so that the gradient of a vector ('none') result checks every element."""
    return torch.linspace(0.5, 1.5, out.numel(), dtype=torch.float64).view(out.shape)


def assert_matches(ours, theirs, x, t, target_grad=False, rtol=RTOL, atol=ATOL):
    """ours(x, t) and theirs(x, t) give the same loss (shape and values) and the same gradients
    w.r.t. x (and the soft target t when target_grad); x and t are cloned per side, their memory
    format kept (clone preserves it). Returns our loss."""
    results = []
    for fn in (ours, theirs):
        xi = x.detach().clone().requires_grad_()
        ti = t.detach().clone().requires_grad_() if target_grad else t
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI's single-channel notes
            out = fn(xi, ti)
        inputs = [xi] + ([ti] if target_grad else [])
        grads = torch.autograd.grad((out * _cotangent(out)).sum(), inputs)
        results.append((out, grads))
    (a, ga), (b, gb) = results
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a.detach(), b.detach().to(a.dtype), rtol=rtol, atol=atol)
    for u, v in zip(ga, gb):
        assert u.shape == v.shape
        torch.testing.assert_close(u, v.to(u.dtype), rtol=rtol, atol=atol)
    return a.detach()


def _monai_none(out, batch):
    """MONAI's reduction='none' result ((N, C, 1, ...) or, with batch=True, (C, 1, ...)) as marsops'
    (N, C) / (C,)."""
    return out.reshape(out.shape[:1] if batch else out.shape[:2])


def _one_hot(labels, c):
    return F.one_hot(labels, c).movedim(-1, 1).to(torch.float64)


# ----------------------------------------------------------------------------------------------
# Published values: MONAI tests/losses/test_dice_loss.py, test_tversky_loss.py, test_dice_ce_loss.py
# ----------------------------------------------------------------------------------------------

_X1 = [[[[1.0, -1.0], [-1.0, 1.0]]]]
_T1 = [[[[1.0, 0.0], [1.0, 1.0]]]]
_X2 = [[[[1.0, -1.0], [-1.0, 1.0]]], [[[1.0, -1.0], [-1.0, 1.0]]]]
_T2 = [[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 0.0], [1.0, 0.0]]]]
_P3 = [[[[0.3, 0.4], [0.7, 0.9]]], [[[1.0, 0.1], [0.5, 0.3]]]]
_X4 = [[[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]  # (2, 2, 3)
_L4 = [[1, 0, 0], [1, 1, 0]]  # MONAI's (2, 1, 3) label map [[[1., 0., 0.]], [[1., 1., 0.]]]
_P5 = [[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]]  # probabilities (2, 2, 3)
_L5 = [[0, 0, 1], [0, 1, 0]]

# (id, MONAI loss class, MONAI kwargs, logits, target as MONAI gets it, marsops function, marsops
# target, marsops kwargs, published value, the relative tolerance MONAI's own test uses for it: 1e-5 for
# DiceLoss, 1e-4 for TverskyLoss; their values come from float32 runs, rounded or truncated to 6
# digits, so half a unit of the last digit would be too tight: 0.307576 is 0.30757651 in float64)
# MONAI batch=False (its default) sums per image: marsops per_image=True. MONAI jaccard=True scores
# (2I + smooth_nr) / (2(S + T - I) + smooth_dr): marsops smooth = smooth_nr / 2 (= smooth_dr / 2).
# to_onehot_y=True with sigmoid=True: the one-hot target of the label map, each channel its own
# sigmoid: marsops mode="multilabel" on that one-hot target.
_MONAI_PUBLISHED = [
    ("dice-sigmoid-1", "DiceLoss", dict(sigmoid=True, smooth_nr=1e-6, smooth_dr=1e-6), _X1, _T1,
     "dice_loss", None, dict(mode="binary", smooth=1e-6, per_image=True), 0.307576, 1e-5),
    ("dice-sigmoid-2", "DiceLoss", dict(sigmoid=True, smooth_nr=1e-4, smooth_dr=1e-4), _X2, _T2,
     "dice_loss", None, dict(mode="binary", smooth=1e-4, per_image=True), 0.416657, 1e-5),
    ("dice-probabilities-soft-target", "DiceLoss", dict(smooth_nr=1e-4, smooth_dr=1e-4, soft_label=False), _P3, _P3,
     "dice_loss", None, dict(mode="binary", smooth=1e-4, per_image=True, from_logits=False), 0.307773, 1e-5),
    ("dice-no-background-onehot", "DiceLoss",
     dict(include_background=False, to_onehot_y=True, smooth_nr=0, smooth_dr=0), _P5, "L5",
     "dice_loss", "L5", dict(classes=[1], smooth=0.0, per_image=True, from_logits=False), 0.0, 1e-5),
    ("dice-sigmoid-onehot", "DiceLoss", dict(to_onehot_y=True, sigmoid=True, smooth_nr=1e-4, smooth_dr=1e-4), _X4,
     "L4", "dice_loss", "onehot4", dict(mode="multilabel", smooth=1e-4, per_image=True), 0.435050, 1e-5),
    ("dice-sigmoid-onehot-none", "DiceLoss",
     dict(to_onehot_y=True, sigmoid=True, reduction="none", smooth_nr=1e-4, smooth_dr=1e-4), _X4, "L4",
     "dice_loss", "onehot4", dict(mode="multilabel", smooth=1e-4, per_image=True, reduction="none"),
     [[0.296529, 0.415136], [0.599976, 0.428559]], 1e-5),
    ("dice-softmax-onehot", "DiceLoss", dict(to_onehot_y=True, softmax=True, smooth_nr=1e-4, smooth_dr=1e-4), _X4,
     "L4", "dice_loss", "onehot4", dict(smooth=1e-4, per_image=True), 0.383713, 1e-5),
    ("dice-softmax-sum", "DiceLoss",
     dict(to_onehot_y=True, softmax=True, reduction="sum", smooth_nr=1e-4, smooth_dr=1e-4), _X4, "L4",
     "dice_loss", "L4", dict(smooth=1e-4, per_image=True, reduction="sum"), 1.534853, 1e-5),
    ("jaccard-sigmoid", "DiceLoss", dict(sigmoid=True, jaccard=True), _X1, _T1,  # smooth_nr = smooth_dr = 1e-5
     "jaccard_loss", None, dict(mode="binary", smooth=5e-6, per_image=True), 0.470451, 1e-5),
    ("tversky-sigmoid-3-7", "TverskyLoss", dict(sigmoid=True, alpha=0.3, beta=0.7, smooth_nr=1e-6, smooth_dr=1e-6),
     _X1, _T1, "tversky_loss", None, dict(mode="binary", alpha=0.3, beta=0.7, smooth=1e-6, per_image=True), 0.3589,
     1e-4),
    ("tversky-sigmoid-7-3", "TverskyLoss", dict(sigmoid=True, alpha=0.7, beta=0.3, smooth_nr=1e-6, smooth_dr=1e-6),
     _X1, _T1, "tversky_loss", None, dict(mode="binary", alpha=0.7, beta=0.3, smooth=1e-6, per_image=True), 0.247366,
     1e-4),
    ("tversky-sigmoid-onehot-batch", "TverskyLoss", dict(to_onehot_y=True, sigmoid=True, batch=True), _X4, "L4",
     "tversky_loss", "onehot4", dict(mode="multilabel", smooth=1e-5), 0.422979, 1e-4),
    ("tversky-sigmoid-onehot-sum", "TverskyLoss",
     dict(to_onehot_y=True, sigmoid=True, reduction="sum", smooth_nr=1e-4, smooth_dr=1e-4), _X4, "L4",
     "tversky_loss", "onehot4", dict(mode="multilabel", smooth=1e-4, per_image=True, reduction="sum"), 1.74013, 1e-4),
    ("tversky-softmax-onehot-none", "TverskyLoss",
     dict(to_onehot_y=True, softmax=True, reduction="none", smooth_nr=1e-4, smooth_dr=1e-4), _X4, "L4",
     "tversky_loss", "onehot4", dict(smooth=1e-4, per_image=True, reduction="none"),
     [[0.210961, 0.295339], [0.599952, 0.428547]], 1e-4),
]


def _published_target(spec, as_monai):
    if spec == "L4":
        labels = torch.tensor(_L4)
        return labels.unsqueeze(1).double() if as_monai else labels
    if spec == "L5":
        labels = torch.tensor(_L5)
        return labels.unsqueeze(1).double() if as_monai else labels
    if spec == "onehot4":
        return _one_hot(torch.tensor(_L4), 2)
    return torch.tensor(spec, dtype=torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", _MONAI_PUBLISHED, ids=[c[0] for c in _MONAI_PUBLISHED])
def test_monai_published_values(case, backend):
    """MONAI's own expected values, and the installed MONAI on the same float64 input (value and
    gradient at RTOL): the mapping of each configuration to marsops arguments."""
    _, cls, monai_kw, x, t, fn, our_t, our_kw, expected, tol = case
    x = torch.tensor(x, dtype=torch.float64)
    monai_t = _published_target(t, as_monai=True)
    ours_t = monai_t if our_t is None else _published_target(our_t, as_monai=False)
    got = getattr(marsops, fn)(x, ours_t, backend=backend, **our_kw)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=tol, atol=1e-7)

    monai = pytest.importorskip("monai.losses")
    batch = monai_kw.get("batch", False)
    reshape = (lambda out: _monai_none(out, batch)) if monai_kw.get("reduction") == "none" else (lambda out: out)
    assert_matches(lambda xi, _: getattr(marsops, fn)(xi, ours_t, backend=backend, **our_kw),
                   lambda xi, _: reshape(getattr(monai, cls)(**monai_kw)(xi, monai_t)), x, None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_monai_dice_ce_published_binary(backend):
    """MONAI test_dice_ce_loss.py 'bceloss' case: one channel, sigmoid=True, weight=[0.5] is the BCE's
    pos_weight (the Dice term of a single channel ignores class weights): marsops
    dice_ce_loss(mode="binary", ce_weight=[0.5], per_image=True, smooth=1e-5) = 1.445239."""
    x = torch.tensor([[[0.8, 0.6, 0.0]], [[0.0, 0.0, 0.9]]], dtype=torch.float64)
    t = torch.tensor([[[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]], dtype=torch.float64)
    w = torch.tensor([0.5], dtype=torch.float64)
    got = marsops.dice_ce_loss(x, t, ce_weight=w, smooth=1e-5, per_image=True, mode="binary", backend=backend)
    # MONAI's test: atol = rtol = 1e-4; float64 here agrees to the printed 6 digits
    torch.testing.assert_close(got, torch.tensor(1.445239, dtype=torch.float64), rtol=0, atol=5e-7)
    monai = _monai()
    assert_matches(lambda xi, ti: marsops.dice_ce_loss(xi, ti, ce_weight=w, smooth=1e-5, per_image=True,
                                                       mode="binary", backend=backend),
                   lambda xi, ti: monai.DiceCELoss(sigmoid=True, weight=w)(xi, ti), x, t)


# ----------------------------------------------------------------------------------------------
# Published values: smp tests/test_losses.py (smooth=0, eps=1e-7 defaults: marsops smooth=0)
# ----------------------------------------------------------------------------------------------

_SMP_BINARY = [  # (y_pred probabilities, y_true, expected loss): every case where the conventions agree
    ([1.0, 1.0, 1.0], [1, 1, 1], 0.0),
    ([1.0, 0.0, 1.0], [1, 0, 1], 0.0),
    ([0.0, 0.0, 0.0], [0, 0, 0], 0.0),  # nothing predicted, nothing true: a zero denominator scores 1
    ([1.0, 0.0, 1.0], [0, 1, 0], 1.0),
    ([0.0, 0.0, 0.0], [1, 1, 1], 1.0),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", ["dice_loss", "jaccard_loss", "tversky_loss"])
@pytest.mark.parametrize("pred,true,expected", _SMP_BINARY)
def test_smp_published_binary(pred, true, expected, fn, backend):
    """smp's binary Dice / Jaccard / Tversky(0.5, 0.5) cases with from_logits=False. (smp's 'worst case'
    [1, 1, 1] vs [0, 0, 0], expected 0 there, is test_convention_smp_absent_class.)"""
    x = torch.tensor(pred, dtype=torch.float64).view(1, 1, 1, -1)
    t = torch.tensor(true).view(1, 1, 1, -1)
    got = getattr(marsops, fn)(x, t, smooth=0.0, mode="binary", from_logits=False, backend=backend)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    smp = pytest.importorskip("segmentation_models_pytorch.losses")
    cls = {"dice_loss": smp.DiceLoss, "jaccard_loss": smp.JaccardLoss, "tversky_loss": smp.TverskyLoss}[fn]
    assert float(cls("binary", from_logits=False)(x, t)) == pytest.approx(expected, abs=1e-6)


_SMP_MULTI = [  # (mode, y_pred probabilities (1, 2, 4), y_true, expected Jaccard loss)
    ("multiclass", [[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]], [[0, 0, 1, 1]], 0.0),
    ("multiclass", [[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]], [[1, 1, 0, 0]], 1.0),
    ("multiclass", [[[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]], [[1, 1, 0, 0]], 2.0 / 3.0),
    ("multilabel", [[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]], [[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]], 0.0),
    ("multilabel", [[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]], [[[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]], 1.0),
    ("multilabel", [[[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]]], [[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]],
     2.0 / 3.0),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode,pred,true,expected", _SMP_MULTI)
def test_smp_published_multi_jaccard(mode, pred, true, expected, backend):
    """smp's multiclass (class map) and multilabel Jaccard cases with from_logits=False."""
    x = torch.tensor(pred, dtype=torch.float64)
    t = torch.tensor(true)
    got = marsops.jaccard_loss(x, t, smooth=0.0, mode=mode, from_logits=False, backend=backend)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    smp = pytest.importorskip("segmentation_models_pytorch.losses")
    assert float(smp.JaccardLoss(mode, from_logits=False)(x, t)) == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------------------------
# MONAI, installed, on random inputs
# ----------------------------------------------------------------------------------------------

_LOSS_KINDS = ("dice", "jaccard", "tversky")


def _monai_pair(kind, smooth, alpha=0.3, beta=0.7):
    """(MONAI class and kwargs, marsops function and kwargs) for one region loss at marsops smooth."""
    if kind == "dice":
        return ("DiceLoss", dict(smooth_nr=smooth, smooth_dr=smooth)), ("dice_loss", dict(smooth=smooth))
    if kind == "jaccard":  # MONAI: (2I + s) / (2(S + T - I) + s), marsops (I + s') / (S + T - I + s'): s = 2 s'
        return ("DiceLoss", dict(jaccard=True, smooth_nr=2 * smooth, smooth_dr=2 * smooth)), \
            ("jaccard_loss", dict(smooth=smooth))
    return (("TverskyLoss", dict(alpha=alpha, beta=beta, smooth_nr=smooth, smooth_dr=smooth)),
            ("tversky_loss", dict(alpha=alpha, beta=beta, smooth=smooth)))


@st.composite
def monai_multilabel_case(draw):
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 4))
    spatial = draw(st.sampled_from([(5,), (3, 4), (2, 5), (2, 3, 3)]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.5, 3.0, 20.0]))
    x = torch.randn((n, c) + spatial, generator=g, dtype=torch.float64) * scale
    if draw(st.booleans()):  # soft labels (MONAI soft_label=False: I = sum q t, as marsops)
        t = torch.rand(x.shape, generator=g, dtype=torch.float64)
    else:
        t = (torch.rand(x.shape, generator=g) < draw(st.sampled_from([0.0, 0.3, 0.9]))).double()
    if draw(st.booleans()) and x.dim() in (4, 5):  # channels_last / channels_last_3d
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        x, t = x.contiguous(memory_format=fmt), t.contiguous(memory_format=fmt)
    opts = dict(kind=draw(st.sampled_from(_LOSS_KINDS)), batch=draw(st.booleans()),
                reduction=draw(st.sampled_from(["mean", "sum", "none"])),
                smooth=draw(st.sampled_from([1e-5, 0.5, 1.0])),
                no_background=c > 1 and draw(st.booleans()),
                target_grad=draw(st.booleans()))
    # MONAI applies class weights only where more than one channel is scored (one channel: ignored)
    opts["weighted"] = c - opts["no_background"] > 1 and draw(st.booleans())
    return x, t, opts


@pytest.mark.parametrize("backend", BACKENDS)
@ORACLE_SETTINGS
@given(case=monai_multilabel_case())
def test_monai_sigmoid_multilabel(backend, case):
    """MONAI DiceLoss / TverskyLoss(sigmoid=True, smooth_nr=smooth_dr=s, batch=b, reduction=r,
    include_background=ib, weight=w) vs marsops mode="multilabel", smooth=s, per_image=not b,
    reduction=r, classes=range(1, C) when not ib, weight=w (reductions "sum" and "none" only: with
    "mean" MONAI divides sum_c w_c l_c by C, test_convention_monai_weighted_mean), including the
    gradient w.r.t. a soft target."""
    monai = _monai()
    x, t, o = case
    (cls, monai_kw), (fn, our_kw) = _monai_pair(o["kind"], o["smooth"])
    c = x.shape[1]
    reduction = "sum" if o["weighted"] and o["reduction"] == "mean" else o["reduction"]
    scored = list(range(1, c)) if o["no_background"] else list(range(c))
    monai_kw = dict(monai_kw, sigmoid=True, batch=o["batch"], reduction=reduction,
                    include_background=not o["no_background"])
    our_kw = dict(our_kw, mode="multilabel", per_image=not o["batch"], reduction=reduction)
    if o["no_background"]:
        our_kw["classes"] = scored
    if o["weighted"]:
        w = torch.linspace(0.25, 2.0, c, dtype=torch.float64)
        our_kw["weight"] = w
        if cls == "TverskyLoss":  # MONAI's TverskyLoss has no class weights
            our_kw.pop("weight")
        else:
            monai_kw["weight"] = w[scored]
    finish = (lambda out: _monai_none(out, o["batch"])) if reduction == "none" else (lambda out: out)
    assert_matches(lambda xi, ti: getattr(marsops, fn)(xi, ti, backend=backend, **our_kw),
                   lambda xi, ti: finish(getattr(monai, cls)(**monai_kw)(xi, ti)), x, t, target_grad=o["target_grad"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", _LOSS_KINDS)
@pytest.mark.parametrize("target_kind", ["onehot", "soft", "bool", "int"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "3d", "channels_last_3d"])
def test_monai_softmax_dense(kind, target_kind, layout, backend):
    """MONAI DiceLoss / TverskyLoss(softmax=True, batch=True) against an (N, C, *) one-hot, soft,
    bool or integer 0/1 target vs marsops mode="multiclass" on that dense target (gradient w.r.t.
    the soft target too)."""
    monai = _monai()
    g = torch.Generator().manual_seed(11)
    shape = (2, 3, 4, 5) if layout in ("contiguous", "channels_last") else (2, 3, 2, 3, 4)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, 3, shape[:1] + shape[2:], generator=g)
    t = {"onehot": _one_hot(labels, 3), "soft": torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), 1),
         "bool": _one_hot(labels, 3).bool(), "int": _one_hot(labels, 3).to(torch.int32)}[target_kind]
    if layout.startswith("channels_last"):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        x, t = x.contiguous(memory_format=fmt), t.contiguous(memory_format=fmt)
    (cls, monai_kw), (fn, our_kw) = _monai_pair(kind, 0.5)
    assert_matches(lambda xi, ti: getattr(marsops, fn)(xi, ti, backend=backend, **our_kw),
                   lambda xi, ti: getattr(monai, cls)(softmax=True, batch=True, **monai_kw)(xi, ti.double()), x, t,
                   target_grad=target_kind == "soft")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["binary", "multilabel", "multiclass"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_monai_probabilities(mode, reduction, backend):
    """MONAI without an activation (sigmoid=softmax=False, other_act=None: the input is taken as it
    is) on probabilities vs marsops from_logits=False; gradients w.r.t. the probabilities and the
    soft target."""
    monai = _monai()
    g = torch.Generator().manual_seed(5)
    c = 1 if mode == "binary" else 3
    z = torch.randn(3, c, 4, 6, generator=g, dtype=torch.float64)
    p = torch.softmax(z, 1) if mode == "multiclass" else torch.sigmoid(z)
    t = torch.rand(p.shape, generator=g, dtype=torch.float64)
    finish = (lambda out: _monai_none(out, False)) if reduction == "none" else (lambda out: out)
    assert_matches(lambda pi, ti: marsops.dice_loss(pi, ti, smooth=0.25, per_image=True, mode=mode, from_logits=False,
                                                    reduction=reduction, backend=backend),
                   lambda pi, ti: finish(monai.DiceLoss(smooth_nr=0.25, smooth_dr=0.25, reduction=reduction)(pi, ti)),
                   p, t, target_grad=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [True, False])
def test_monai_ignore_index_binary(batch, backend):
    """MONAI DiceLoss(sigmoid=True, ignore_index=255) on a one-channel label target (N, 1, *) with
    0 / 1 / 255 vs marsops mode="binary", ignore_index=255: both drop the 255 elements from every sum."""
    monai = _monai()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 1, 5, 4, generator=g, dtype=torch.float64) * 2
    t = torch.randint(0, 2, x.shape, generator=g)
    t[torch.rand(x.shape, generator=g) < 0.3] = 255
    t[0, 0, 0, 0] = 1  # MONAI's masked sums would be 0/0 on an all-ignored image; keep one valid
    assert_matches(lambda xi, ti: marsops.dice_loss(xi, ti, smooth=0.5, mode="binary", ignore_index=255,
                                                    per_image=not batch, backend=backend),
                   lambda xi, ti: monai.DiceLoss(sigmoid=True, ignore_index=255, smooth_nr=0.5, smooth_dr=0.5,
                                                 batch=batch)(xi, ti), x, t)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["dice", "tversky"])
def test_monai_ignore_index_class_map_none(kind, backend):
    """MONAI DiceLoss / TverskyLoss(softmax=True, to_onehot_y=True, ignore_index=255, reduction="none")
    vs marsops on the class map, ignore_index=255, per_image=True, reduction="none" (N, C); 3-D."""
    monai = _monai()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 3, 3, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 3, 3, 4), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.25] = 255
    (cls, monai_kw), (fn, our_kw) = _monai_pair(kind, 0.5)
    assert_matches(lambda xi, _: getattr(marsops, fn)(xi, labels, ignore_index=255, per_image=True, reduction="none",
                                                      backend=backend, **our_kw),
                   lambda xi, _: _monai_none(getattr(monai, cls)(softmax=True, to_onehot_y=True, ignore_index=255,
                                                                 reduction="none", **monai_kw)(xi, labels[:, None]),
                                             False), x, None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_monai_dice_focal_sigmoid(mode, backend):
    """MONAI DiceFocalLoss(sigmoid=True, gamma, lambda_dice, lambda_focal, batch=True, weight=None,
    alpha=None) vs marsops dice_focal_loss(mode=binary / multilabel). MONAI's FocalLoss computes in
    float32 (it casts its input): rtol 1e-6 on the value and 1e-5 on gradients (fp32 unit
    roundoff 6e-8 times sums of a few hundred terms, and exp/log of the focal factor)."""
    monai = _monai()
    g = torch.Generator().manual_seed(6)
    c = 1 if mode == "binary" else 3
    x = torch.randn(2, c, 5, 6, generator=g, dtype=torch.float64) * 2
    t = (torch.rand(x.shape, generator=g) < 0.4).double()
    assert_matches(lambda xi, ti: marsops.dice_focal_loss(xi, ti, smooth=0.5, gamma=1.5, lambda_dice=0.7,
                                                          lambda_focal=1.3, mode=mode, backend=backend),
                   lambda xi, ti: monai.DiceFocalLoss(sigmoid=True, smooth_nr=0.5, smooth_dr=0.5, batch=True,
                                                      gamma=1.5, lambda_dice=0.7, lambda_focal=1.3)(xi, ti),
                   x, t, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [True, False])
def test_monai_dice_ce_binary(batch, backend):
    """MONAI DiceCELoss(sigmoid=True, weight=[w]) on one channel: Dice + BCEWithLogits(pos_weight=w)
    vs marsops dice_ce_loss(mode="binary", ce_weight=[w]); a soft target too."""
    monai = _monai()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 1, 4, 5, generator=g, dtype=torch.float64) * 2
    t = torch.rand(x.shape, generator=g, dtype=torch.float64)
    w = torch.tensor([1.7], dtype=torch.float64)
    assert_matches(lambda xi, ti: marsops.dice_ce_loss(xi, ti, smooth=0.3, ce_weight=w, lambda_dice=0.4, lambda_ce=1.2,
                                                       per_image=not batch, mode="binary", backend=backend),
                   lambda xi, ti: monai.DiceCELoss(sigmoid=True, smooth_nr=0.3, smooth_dr=0.3, weight=w, batch=batch,
                                                   lambda_dice=0.4, lambda_ce=1.2)(xi, ti), x, t)


# ----------------------------------------------------------------------------------------------
# smp, installed, on random inputs
# ----------------------------------------------------------------------------------------------

def _smp_pair(kind, smp_smooth, alpha=0.3, beta=0.7):
    """smp scores (I + s) / (I + a(S - I) + b(T - I) + s) (Dice: a = b = 0.5): the same as marsops'
    Jaccard and Tversky at smooth s, and marsops' Dice at smooth 2 s."""
    smp = _smp()
    if kind == "dice":
        return (smp.DiceLoss, {}), ("dice_loss", dict(smooth=2 * smp_smooth))
    if kind == "jaccard":
        return (smp.JaccardLoss, {}), ("jaccard_loss", dict(smooth=smp_smooth))
    return (smp.TverskyLoss, dict(alpha=alpha, beta=beta)), ("tversky_loss", dict(alpha=alpha, beta=beta,
                                                                                  smooth=smp_smooth))


@st.composite
def smp_binary_case(draw):
    n = draw(st.integers(1, 4))
    spatial = draw(st.sampled_from([(6,), (3, 4), (2, 5), (2, 2, 3)]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1) + spatial, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.5, 3.0, 20.0]))
    t = (torch.rand(x.shape, generator=g) < draw(st.sampled_from([0.1, 0.5, 0.9]))).long()
    ignore = draw(st.booleans())
    if ignore:
        t[torch.rand(x.shape, generator=g) < 0.3] = 255
    t.view(-1)[0] = 1  # a positive: smp scores a target without one as loss 0 (test_convention_smp_absent_class)
    if draw(st.booleans()) and x.dim() in (4, 5):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
    opts = dict(kind=draw(st.sampled_from(_LOSS_KINDS)), smooth=draw(st.sampled_from([0.0, 0.5, 2.0])),
                from_logits=draw(st.booleans()), ignore=ignore, squeeze=draw(st.booleans()),
                target_dtype=draw(st.sampled_from([torch.int64, torch.int32, torch.uint8])))
    return x, t.to(opts["target_dtype"]), opts


@pytest.mark.parametrize("backend", BACKENDS)
@ORACLE_SETTINGS
@given(case=smp_binary_case())
def test_smp_binary(backend, case):
    """smp DiceLoss / JaccardLoss / TverskyLoss(mode="binary", from_logits, smooth, ignore_index=255)
    vs marsops mode="binary", from_logits, smooth (x2 for Dice), ignore_index=255; logits (N, 1, *)
    or (N, *) (squeeze), integer targets of several dtypes."""
    x, t, o = case
    (cls, smp_kw), (fn, our_kw) = _smp_pair(o["kind"], o["smooth"])
    if not o["from_logits"]:
        # Probabilities in [0.01, 0.99]: smp's intersection (S + T - |q - t|_1) / 2 has a kink where q
        # equals the 0/1 target (torch's d|u|/du at 0 is 0), so its gradient differs from d(sum q t)/dq
        # at a saturated q = 1.0 = t; the values agree there. Logits saturating is harmless: the
        # sigmoid's derivative is 0 there.
        x = torch.sigmoid(x) * 0.98 + 0.01
    if o["squeeze"]:
        x, t = x[:, 0], t[:, 0]
    smp_ignore = 255 if o["ignore"] else None
    assert_matches(lambda xi, ti: getattr(marsops, fn)(xi, ti, mode="binary", from_logits=o["from_logits"],
                                                       ignore_index=255, backend=backend, **our_kw),
                   lambda xi, ti: cls("binary", from_logits=o["from_logits"], smooth=o["smooth"],
                                      ignore_index=smp_ignore, **smp_kw)(xi, ti), x, t)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", _LOSS_KINDS)
@pytest.mark.parametrize("mode", ["multilabel", "multiclass"])
@pytest.mark.parametrize("options", ["plain", "classes", "class_weights", "ignore"])
def test_smp_multi(options, mode, kind, backend):
    """smp in multilabel (target (N, C, *)) and multiclass (class map) modes vs marsops: classes=
    [2, 0] (their order), class_weights=w vs weight=w (both a weighted mean sum w l / sum w),
    ignore_index=255. Every class is present in the target (smp's absent-class rule aside)."""
    (cls, smp_kw), (fn, our_kw) = _smp_pair(kind, 0.5)
    g = torch.Generator().manual_seed(8)
    c = 3
    x = torch.randn(2, c, 4, 6, generator=g, dtype=torch.float64) * 2
    if mode == "multiclass":
        t = torch.randint(0, c, (2, 4, 6), generator=g)
        t[0, 0, :c] = torch.arange(c)
        if options == "ignore":
            t[:, 1:3, 2:] = 255
    else:
        t = (torch.rand(x.shape, generator=g) < 0.5).long()
        t[:, :, 0, 0] = 1
        if options == "ignore":
            t[torch.rand(x.shape, generator=g) < 0.3] = 255
            t[:, :, 0, 0] = 1
    if options == "classes":
        smp_kw, our_kw = dict(smp_kw, classes=[2, 0]), dict(our_kw, classes=[2, 0])
    if options == "class_weights":
        w = [0.5, 2.0, 1.25]
        smp_kw, our_kw = dict(smp_kw, class_weights=w), dict(our_kw, weight=torch.tensor(w, dtype=torch.float64))
    ignore = 255 if options == "ignore" else None
    assert_matches(lambda xi, ti: getattr(marsops, fn)(xi, ti, mode=mode, ignore_index=255, backend=backend, **our_kw),
                   lambda xi, ti: cls(mode, smooth=0.5, ignore_index=ignore, **smp_kw)(xi, ti), x, t)


# ----------------------------------------------------------------------------------------------
# kornia, installed, on random inputs (kornia takes logits (B, C, H, W) and a class map)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["onehot", "class_map"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("kind", ["dice", "tversky"])
def test_kornia_macro(kind, ignore, weighted, form, backend):
    """kornia dice_loss(average="macro", eps=0, weight=w) and tversky_loss(alpha, beta, eps=0): per
    image, a weighted mean over the classes present in that image, then the mean over the images;
    with every class present in every image that is marsops per_image=True, smooth=0, weight=w.
    marsops gets the one-hot target (N, C, H, W) (the dense multiclass path), ignored pixels as
    integer elements equal to ignore_index in all C channels (a pixel none of whose elements is
    valid leaves the softmax and every sum, as kornia's ignored pixel); and
    the class map itself (form="class_map")."""
    kornia = _kornia()
    if kind == "tversky" and weighted:
        pytest.skip("kornia's tversky_loss has no class weights")
    g = torch.Generator().manual_seed(9)
    c = 3
    x = torch.randn(2, c, 5, 6, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, c, (2, 5, 6), generator=g)
    labels[:, 0, :c] = torch.arange(c)
    if ignore:
        labels[:, 2:4, 1:] = -100
    dense = F.one_hot(labels.clamp(min=0), c).movedim(-1, 1).to(torch.int64)
    dense[(labels == -100).unsqueeze(1).expand_as(dense)] = -100
    w = torch.tensor([0.5, 2.0, 1.25], dtype=torch.float64) if weighted else None
    if form == "class_map":
        dense = labels
    if kind == "dice":
        ours = lambda xi, _: marsops.dice_loss(xi, dense, weight=w, smooth=0.0, per_image=True, backend=backend)  # noqa
        theirs = lambda xi, _: kornia.dice_loss(xi, labels, average="macro", eps=0.0, weight=w)  # noqa: E731
    else:
        ours = lambda xi, _: marsops.tversky_loss(xi, dense, alpha=0.3, beta=0.7, smooth=0.0, per_image=True,  # noqa
                                                  backend=backend)
        theirs = lambda xi, _: kornia.tversky_loss(xi, labels, alpha=0.3, beta=0.7, eps=0.0)  # noqa: E731
    assert_matches(ours, theirs, x, None)


# ----------------------------------------------------------------------------------------------
# Convention differences (docs/migrating.md): pinned, so a change on either side shows here
# ----------------------------------------------------------------------------------------------

def test_convention_monai_weighted_mean():
    """MONAI multiplies each class's loss by its weight and divides by the number of terms (C, or N C
    with batch=False); marsops' "mean" is the weighted mean sum w l / sum w. MONAI's number is
    marsops' reduction="sum" divided by C (N C per image)."""
    monai = _monai()
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    t = (torch.rand(x.shape, generator=g) < 0.5).double()
    w = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    for batch in (True, False):
        theirs = monai.DiceLoss(sigmoid=True, weight=w, batch=batch, smooth_nr=1.0, smooth_dr=1.0)(x, t)
        kw = dict(weight=w, mode="multilabel", per_image=not batch, backend="reference")
        terms = 3 if batch else 6
        torch.testing.assert_close(theirs, marsops.dice_loss(x, t, reduction="sum", **kw) / terms, rtol=RTOL,
                                   atol=ATOL)
        assert abs(float(theirs - marsops.dice_loss(x, t, **kw))) > 1e-5  # the two means differ


def test_convention_monai_dice_ce_softmax_default_and_multichannel_ce():
    """MONAI DiceCELoss: softmax=False by default, so its Dice term scores the raw logits as they are
    (marsops' dice_ce_loss always applies the activation); and with C > 1 its CE term is softmax
    cross-entropy even with sigmoid=True (marsops multilabel: binary cross-entropy). Only one
    channel with sigmoid=True (test_monai_dice_ce_binary) is the same loss."""
    monai = _monai()
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    t = (torch.rand(x.shape, generator=g) < 0.5).double()
    ours = marsops.dice_ce_loss(x, t, smooth=1e-5, mode="multilabel", per_image=True, backend="reference")
    theirs = monai.DiceCELoss(sigmoid=True)(x, t)
    dice = monai.DiceLoss(sigmoid=True)(x, t)
    torch.testing.assert_close(theirs, dice + F.cross_entropy(x, t), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours, dice + F.binary_cross_entropy_with_logits(x, t), rtol=RTOL, atol=ATOL)
    raw = monai.DiceCELoss()(x, t)  # Dice of the logits themselves, not of probabilities
    raw_dice = monai.DiceLoss()(x, t)
    torch.testing.assert_close(raw, raw_dice + F.cross_entropy(x, t), rtol=RTOL, atol=ATOL)
    assert abs(float(raw_dice - monai.DiceLoss(softmax=True)(x, t))) > 1e-5


def test_convention_monai_soft_label_true():
    """MONAI soft_label=True (and smp always) take the intersection as (S + T - |q - t|_1) / 2, which
    differs from marsops' I = sum q t on soft labels (the same on 0/1 targets)."""
    monai = _monai()
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    soft = torch.rand(x.shape, generator=g, dtype=torch.float64)
    hard = (soft > 0.5).double()
    kw = dict(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    for target, same in ((soft, False), (hard, True)):
        ours = marsops.dice_loss(x, target, mode="multilabel", backend="reference")
        theirs = monai.DiceLoss(soft_label=True, **kw)(x, target)
        assert (abs(float(ours - theirs)) < 1e-12) == same
    torch.testing.assert_close(marsops.dice_loss(x, soft, mode="multilabel", backend="reference"),
                               monai.DiceLoss(soft_label=False, **kw)(x, soft), rtol=RTOL, atol=ATOL)


def test_convention_smp_absent_class():
    """smp sets the loss of a class absent from the target to 0 and still divides by the number of
    classes; marsops scores the class (1 - smooth / (S + smooth) with smooth > 0: a loss near 1
    when the class is predicted). Per class, on the present classes, they agree."""
    smp = _smp()
    # smp's published 'worst case': everything predicted, nothing true: smp 0, marsops 1
    x = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64).view(1, 1, 1, -1)
    t = torch.tensor([0, 0, 0]).view(1, 1, 1, -1)
    assert float(smp.DiceLoss("binary", from_logits=False)(x, t)) == 0.0
    assert float(marsops.dice_loss(x, t, smooth=0.0, mode="binary", from_logits=False, backend="reference")) == 1.0
    g = torch.Generator().manual_seed(14)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    t = (torch.rand(x.shape, generator=g) < 0.5).long()
    t[:, 1] = 0  # class 1 absent
    ours = marsops.dice_loss(x, t, smooth=1.0, mode="multilabel", reduction="none", backend="reference")
    theirs = smp.DiceLoss("multilabel", smooth=0.5)(x, t)
    assert float(ours[1]) > 0.5
    torch.testing.assert_close(theirs, (ours[0] + ours[2]) / 3, rtol=RTOL, atol=ATOL)


def test_convention_kornia_micro_is_not_a_marsops_loss():
    """kornia's default average="micro" pools all classes into one Dice per image,
    1 - 2 sum_c I_c / sum_c (S_c + T_c): not a per-class mean, so no marsops argument gives it; for
    softmax against a class map sum_c S_c = sum_c T_c = the pixel count P, i.e. 1 - sum_c I_c / P."""
    kornia = _kornia()
    g = torch.Generator().manual_seed(15)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)
    micro = kornia.dice_loss(x, labels, average="micro", eps=0.0)
    q = torch.softmax(x, 1)
    inter = (q * _one_hot(labels, 3)).sum((1, 2, 3))
    torch.testing.assert_close(micro, (1 - inter / 20).mean(), rtol=RTOL, atol=ATOL)
    assert abs(float(micro - marsops.dice_loss(x, labels, smooth=0.0, per_image=True, backend="reference"))) > 1e-5


def test_convention_monai_single_channel_weight():
    """MONAI ignores `weight` when one channel is scored; marsops applies it (reduction "sum" /
    "none": w l; "mean": the weighted mean of one class, l itself)."""
    monai = _monai()
    g = torch.Generator().manual_seed(16)
    x = torch.randn(2, 1, 4, 5, generator=g, dtype=torch.float64)
    t = (torch.rand(x.shape, generator=g) < 0.5).double()
    w = torch.tensor([3.0], dtype=torch.float64)
    kw = dict(mode="binary", backend="reference")
    theirs = monai.DiceLoss(sigmoid=True, batch=True, weight=w, reduction="sum", smooth_nr=1.0, smooth_dr=1.0)(x, t)
    torch.testing.assert_close(theirs, marsops.dice_loss(x, t, reduction="sum", **kw), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(3 * theirs, marsops.dice_loss(x, t, weight=w, reduction="sum", **kw), rtol=RTOL,
                               atol=ATOL)
    torch.testing.assert_close(theirs, marsops.dice_loss(x, t, weight=w, **kw), rtol=RTOL, atol=ATOL)


def test_convention_monai_dice_focal_weight_is_not_pos_weight():
    """MONAI DiceFocalLoss(weight=w) scales the Dice terms (a mean over C) and every element's focal
    term of class c; marsops' focal_weight is a pos_weight (positives only): no marsops arguments
    give MONAI's number."""
    monai = _monai()
    g = torch.Generator().manual_seed(17)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    t = (torch.rand(x.shape, generator=g) < 0.5).double()
    w = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)  # sum C: the Dice means agree
    theirs = monai.DiceFocalLoss(sigmoid=True, batch=True, weight=w, smooth_nr=1.0, smooth_dr=1.0, gamma=2.0)(x, t)
    ours = marsops.dice_focal_loss(x, t, weight=w, focal_weight=w, gamma=2.0, mode="multilabel", backend="reference")
    focal = monai.FocalLoss(gamma=2.0, weight=w)(x, t)
    dice = monai.DiceLoss(sigmoid=True, batch=True, weight=w, smooth_nr=1.0, smooth_dr=1.0)(x, t)
    torch.testing.assert_close(theirs, dice + focal, rtol=1e-6, atol=1e-8)  # MONAI's focal term: float32
    assert abs(float(ours - theirs)) > 1e-4


def test_convention_smp_shapes_and_soft_targets():
    """smp reshapes both tensors to (N, C, -1), so any shapes with the same element count pass;
    marsops wants the shapes of its mode. smp's intersection (S + T - |q - t|_1) / 2 equals sum q t
    on 0/1 targets only."""
    smp = _smp()
    x = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    t = torch.tensor([0, 1, 0])
    assert float(smp.DiceLoss("binary", from_logits=False)(x.view(1, 1, -1), t.view(1, 1, 1, -1))) == 1.0
    with pytest.raises(ValueError):
        marsops.dice_loss(x.view(1, 1, -1), t.view(1, 1, 1, -1), mode="binary", from_logits=False, backend="reference")
    g = torch.Generator().manual_seed(18)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    soft = torch.rand(x.shape, generator=g, dtype=torch.float64)
    hard = (soft > 0.5).double()
    for target, same in ((soft, False), (hard, True)):
        ours = marsops.dice_loss(x, target, smooth=1.0, mode="multilabel", backend="reference")
        theirs = smp.DiceLoss("multilabel", smooth=0.5)(x, target)
        assert (abs(float(ours - theirs)) < 1e-12) == same
