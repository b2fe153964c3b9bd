"""The Triton region sums against dense targets (marsops/triton/dense_region.py: Dice / Jaccard /
Tversky in binary, multi-label, soft-label and probability modes) against a float64 torch
reference: sums, gradients, bad-input detection, determinism. Under TRITON_INTERPRET=1 (set by
conftest.py without a GPU) they run on CPU tensors; with a GPU on CUDA tensors."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import marsops.triton
from emulated_cuda import ENABLED as EMULATED_CUDA
from helpers import HAS_GPU, requires_gpu

DEVICE = "cuda" if HAS_GPU else "cpu"
SKIP = ("a session of the emulated CUDA kernels" if EMULATED_CUDA
        else marsops.triton.unavailable_reason(DEVICE))  # None: Triton runs here
pytestmark = pytest.mark.skipif(SKIP is not None, reason=f"Triton does not run here: {SKIP}")
if SKIP is None:
    from marsops.triton.dense_region import MAX_C, dense_region_grad, dense_region_stats

IDENTITY, SIGMOID, SOFTMAX = 0, 1, 2
INT_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
X_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Units of roundoff of the gradient's dtype (it is computed in fp32, stored once in x's dtype).
UNIT = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


def _ignore_value(dtype):
    return 255 if dtype == torch.uint8 else -1 if dtype == torch.int8 else -100


def reference(x, target, activation, class_last, target_is_map, has_ignore, ignore_index, per_image, coef):
    """(stats, grad_x, grad_t) in float64 from the spec's formulas (autograd for the gradients), in
    the kernels' layouts. Elements the kernels must not read (invalid ones, every logit of a softmax
    pixel without a valid element) are replaced by 0 first: they may hold NaN."""
    xs = x.transpose(1, 2) if class_last else x  # (N, C, P) view
    N, C, P = xs.shape
    float_target = not target_is_map and target.is_floating_point()
    if target_is_map:
        y = target.long()
        keep = ~(has_ignore & (y == ignore_index))
        v = keep[:, None, :].expand(N, C, P)
        t = (torch.arange(C)[None, :, None] == torch.where(keep, y, -1)[:, None, :]).double()
    else:
        ts = target.transpose(1, 2) if class_last else target
        if float_target:
            v = torch.ones_like(ts, dtype=torch.bool)
            t = ts.double().clone().requires_grad_()
        else:
            k = ts.long()
            v = ~(has_ignore & (k == ignore_index))
            t = (k * v).double()
    if activation == SOFTMAX:
        x64 = torch.where(v.any(1, keepdim=True), xs.double(), 0.0).requires_grad_()
        q = torch.softmax(x64, 1)
    else:
        x64 = torch.where(v, xs.double(), 0.0).requires_grad_()
        q = torch.sigmoid(x64) if activation == SIGMOID else x64
    vq, vt = q * v, t * v
    stats = torch.stack([(vq * t).sum(2), vq.sum(2), vt.sum(2)], -1)  # (N, C, 3)
    if not per_image:
        stats = stats.sum(0, keepdim=True)
    loss = (stats * coef.double()).sum()
    inputs = [x64, t] if float_target else [x64]
    grads = torch.autograd.grad(loss, inputs)
    gx = grads[0].transpose(1, 2) if class_last else grads[0]
    gt = (grads[1].transpose(1, 2) if class_last else grads[1]) if float_target else None
    return stats.detach(), gx, gt


@st.composite
def cases(draw):
    N = draw(st.integers(1, 3))
    C = draw(st.integers(1, 9))
    P = draw(st.integers(1, 300))
    activation = draw(st.sampled_from([IDENTITY, SIGMOID, SOFTMAX]))
    class_last = draw(st.booleans())
    per_image = draw(st.booleans())
    x_dtype = draw(st.sampled_from(X_DTYPES))
    # The caller never passes softmax with a class map.
    kind = draw(st.sampled_from(["dense_int", "dense_float"] + (["map"] if activation != SOFTMAX else [])))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    g = torch.Generator().manual_seed(seed)
    if kind == "map":
        t_dtype = draw(st.sampled_from(INT_DTYPES))
    elif kind == "dense_int":
        t_dtype = draw(st.sampled_from(INT_DTYPES))
    else:
        t_dtype = draw(st.sampled_from(FLOAT_DTYPES))
    has_ignore = kind != "dense_float" and draw(st.booleans())
    ignore_index = _ignore_value(t_dtype) if has_ignore else draw(st.sampled_from([0, -100]))  # unused then

    x = torch.randn(N, C, P, generator=g) * 3
    if activation == IDENTITY:
        x = torch.rand(N, C, P, generator=g)
        x[torch.rand(N, C, P, generator=g) < 0.05] = 0.0
        x[torch.rand(N, C, P, generator=g) < 0.05] = 1.0
    if kind == "map":
        y = torch.randint(0, C, (N, P), generator=g)
        if has_ignore:
            ignored = torch.rand(N, P, generator=g) < 0.2
            y[ignored] = ignore_index
            x[ignored[:, None, :].expand(N, C, P) & (torch.rand(N, C, P, generator=g) < 0.5)] = float("nan")
        target = y.to(t_dtype)
    elif kind == "dense_int":
        k = torch.randint(0, 2, (N, C, P), generator=g)
        if has_ignore:
            ignored = torch.rand(N, C, P, generator=g) < 0.2
            whole = torch.rand(N, 1, P, generator=g) < 0.15  # pixels with every class ignored
            ignored |= whole
            k[ignored] = ignore_index
            # Only elements nothing reads hold NaN / inf: with softmax, the ignored pixels' logits.
            poison = (whole.expand(N, C, P) if activation == SOFTMAX else ignored) & (
                torch.rand(N, C, P, generator=g) < 0.6)
            x[poison] = float("nan")
            x[poison & (torch.rand(N, C, P, generator=g) < 0.3)] = float("inf")
        target = k.to(t_dtype)
    else:
        t = torch.rand(N, C, P, generator=g)
        t[t < 0.1] = 0.0
        t[t > 0.9] = 1.0
        target = t.to(t_dtype)
    x = x.to(x_dtype)
    if class_last:
        x = x.transpose(1, 2).contiguous()
        if kind != "map":
            target = target.transpose(1, 2).contiguous()
    coef = torch.randn(N if per_image else 1, C, 3, generator=g)
    return dict(x=x, target=target, activation=activation, class_last=class_last, target_is_map=kind == "map",
                has_ignore=has_ignore, ignore_index=ignore_index, per_image=per_image), coef


def _on_device(args, coef):
    return {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}, coef.to(DEVICE)


def _check(args, coef):
    dev_args, dev_coef = _on_device(args, coef)
    stats, ok = dense_region_stats(**dev_args)
    assert ok.shape == (1,) and ok.dtype == torch.int32 and ok.item() == 1
    assert stats.dtype == torch.float64
    grad_x, grad_t = dense_region_grad(**dev_args, coef=dev_coef, want_target_grad=True)
    ref_stats, ref_gx, ref_gt = reference(**args, coef=coef)
    x, target = args["x"], args["target"]
    N = x.shape[0]
    P = x.shape[1] if args["class_last"] else x.shape[2]
    # The kernels compute q, q t in fp32 (a few units of roundoff u = 2^-24 each) and add up to
    # BLOCK_P terms in fp32 before the float64 accumulation: the error of a sum of n terms in
    # [0, 1] is at most about (4 + log2(4096)) u n ~ 1e-6 n; 1e-5 n leaves room for exp's ulps.
    summed = (N if not args["per_image"] else 1) * P
    torch.testing.assert_close(stats.cpu(), ref_stats, rtol=0, atol=1e-5 * summed)
    if not target.is_floating_point():  # counts of 0/1 targets: exact in fp32 below 2**24
        assert torch.equal(stats[..., 2].cpu(), ref_stats[..., 2])

    # The gradient: fp32 arithmetic on terms of size up to |A| + |B| (softmax: a difference of
    # two such terms), rounded once to x's dtype.
    assert grad_x.dtype == x.dtype and grad_x.shape == x.shape and grad_x.is_contiguous()
    scale = coef[..., :2].abs().sum(-1).max().item() + 1e-3
    u = UNIT[x.dtype]
    torch.testing.assert_close(grad_x.double().cpu(), ref_gx, rtol=max(4 * u, 1e-5), atol=max(4 * u, 1e-5) * scale)
    assert torch.isfinite(grad_x).all()
    if args["has_ignore"]:  # invalid elements get exactly 0 (softmax: pixels without a valid element)
        xs = grad_x.cpu().transpose(1, 2) if args["class_last"] else grad_x.cpu()
        if args["target_is_map"]:
            zero = (target.long() == args["ignore_index"])[:, None, :].expand_as(xs)
        else:
            ts = target.transpose(1, 2) if args["class_last"] else target
            zero = ts.long() == args["ignore_index"]
            if args["activation"] == SOFTMAX:
                zero = zero.all(1, keepdim=True).expand_as(zero)
        assert (xs[zero] == 0).all()
    if ref_gt is not None:
        assert grad_t.dtype == torch.float32 and grad_t.shape == target.shape
        scale_t = coef[..., [0, 2]].abs().sum(-1).max().item() + 1e-3
        torch.testing.assert_close(grad_t.double().cpu(), ref_gt, rtol=1e-5, atol=1e-5 * scale_t)
    else:
        assert grad_t.numel() == 0
    grad_x2, grad_t2 = dense_region_grad(**dev_args, coef=dev_coef, want_target_grad=False)
    assert grad_t2.numel() == 0 and torch.equal(grad_x2, grad_x)


@settings(max_examples=30)
@given(cases())
def test_matches_reference(case):
    _check(*case)


@pytest.mark.parametrize("activation", [SIGMOID, SOFTMAX])
@pytest.mark.parametrize("class_last", [False, True], ids=["nc", "class_last"])
def test_many_classes(activation, class_last):
    """70 classes: one 128-class tile for softmax, two class chunks of 64 for sigmoid."""
    g = torch.Generator().manual_seed(1)
    N, C, P = 2, 70, 19
    x = torch.randn(N, C, P, generator=g)
    t = (torch.rand(N, C, P, generator=g) < 0.3).to(torch.uint8)
    t[0, :, 3] = 7  # a whole ignored pixel, with NaN logits
    x[0, :, 3] = float("nan")
    if class_last:
        x, t = x.transpose(1, 2).contiguous(), t.transpose(1, 2).contiguous()
    args = dict(x=x, target=t, activation=activation, class_last=class_last, target_is_map=False, has_ignore=True,
                ignore_index=7, per_image=True)
    _check(args, torch.randn(N, C, 3, generator=g))
    if activation == SIGMOID:  # a class map too
        y = torch.randint(0, C, (N, P), generator=g)
        y[0, 3] = -1  # the pixel with NaN logits
        _check(dict(args, target=y, target_is_map=True, ignore_index=-1), torch.randn(N, C, 3, generator=g))


def _bad_cases():
    """(name, args, ok expected): one per rule, on the last element of a P that is not a multiple
    of the block, in both layouts; and the same values where they are ignored (no error)."""
    N, C, P = 2, 3, 37
    for class_last in (False, True):
        def dense(values, dtype, activation=SIGMOID, x_last=None, ignore=None):
            x = torch.full((N, C, P), 0.5)
            t = torch.zeros(N, C, P, dtype=dtype)
            t[-1, -1, -1] = values
            if x_last is not None:
                x[-1, -1, -1] = x_last
            if class_last:
                x, t = x.transpose(1, 2).contiguous(), t.transpose(1, 2).contiguous()
            return dict(x=x, target=t, activation=activation, class_last=class_last, target_is_map=False,
                        has_ignore=ignore is not None, ignore_index=ignore if ignore is not None else 0,
                        per_image=False)

        def label_map(label, ignore=None):
            x = torch.zeros(N, C, P)
            y = torch.zeros(N, P, dtype=torch.int64)
            y[-1, -1] = label
            if class_last:
                x = x.transpose(1, 2).contiguous()
            return dict(x=x, target=y, activation=SIGMOID, class_last=class_last, target_is_map=True,
                        has_ignore=ignore is not None, ignore_index=ignore if ignore is not None else 0,
                        per_image=True)

        tag = "class_last" if class_last else "nc"
        yield f"label C {tag}", label_map(C), 0
        yield f"label -1 {tag}", label_map(-1), 0
        yield f"label -1 ignored {tag}", label_map(-1, ignore=-1), 1
        yield f"label 3 with another ignore_index {tag}", label_map(C, ignore=-100), 0
        yield f"int target 2 {tag}", dense(2, torch.int32), 0
        yield f"int target -1 {tag}", dense(-1, torch.int8), 0
        yield f"uint8 target 255 ignored {tag}", dense(255, torch.uint8, ignore=255), 1
        yield f"float target 1.5 {tag}", dense(1.5, torch.float32), 0
        yield f"float target -0.25 {tag}", dense(-0.25, torch.float16), 0
        yield f"float target nan {tag}", dense(float("nan"), torch.bfloat16), 0
        yield f"float64 target above 1 by 1e-12 {tag}", dense(1 + 1e-12, torch.float64), 0
        yield f"identity x 1.2 {tag}", dense(1, torch.uint8, IDENTITY, x_last=1.2), 0
        yield f"identity x -0.1 {tag}", dense(0, torch.uint8, IDENTITY, x_last=-0.1), 0
        yield f"identity x nan {tag}", dense(1, torch.uint8, IDENTITY, x_last=float("nan")), 0
        yield f"identity x 1.2 ignored {tag}", dense(9, torch.int16, IDENTITY, x_last=1.2, ignore=9), 1
        yield f"softmax int target 2 {tag}", dense(2, torch.int64, SOFTMAX), 0
        yield f"clean {tag}", dense(1, torch.float32, IDENTITY, x_last=1.0), 1


BAD = list(_bad_cases())


@pytest.mark.parametrize("args,expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_clears_ok(args, expected):
    dev_args, _ = _on_device(args, torch.zeros(0))
    stats, ok = dense_region_stats(**dev_args)
    assert ok.tolist() == [expected]


def test_deterministic():
    """Several programs per image (5 blocks of pixels, a 2-way split): bitwise equal run to run."""
    g = torch.Generator().manual_seed(2)
    N, C, P = 2, 3, 5000
    x = torch.randn(N, C, P, generator=g).to(DEVICE)
    t = torch.rand(N, C, P, generator=g).to(DEVICE)
    coef = torch.randn(1, C, 3, generator=g).to(DEVICE)
    for activation in (SIGMOID, SOFTMAX):
        args = dict(x=x, target=t, activation=activation, class_last=False, target_is_map=False, has_ignore=False,
                    ignore_index=0, per_image=False)
        s1, _ = dense_region_stats(**args)
        s2, _ = dense_region_stats(**args)
        assert torch.equal(s1, s2)
        g1 = dense_region_grad(**args, coef=coef, want_target_grad=True)
        g2 = dense_region_grad(**args, coef=coef, want_target_grad=True)
        assert torch.equal(g1[0], g2[0]) and torch.equal(g1[1], g2[1])


@pytest.mark.parametrize("shape", [(0, 3, 5), (2, 3, 0)], ids=["N=0", "P=0"])
@pytest.mark.parametrize("per_image", [False, True])
def test_empty(shape, per_image):
    x = torch.zeros(shape, device=DEVICE)
    args = dict(x=x, target=torch.zeros(shape, device=DEVICE), activation=SOFTMAX, class_last=False,
                target_is_map=False, has_ignore=False, ignore_index=0, per_image=per_image)
    stats, ok = dense_region_stats(**args)
    G = shape[0] if per_image else 1
    assert stats.shape == (G, 3, 3) and stats.dtype == torch.float64 and not stats.any() and ok.tolist() == [1]
    gx, gt = dense_region_grad(**args, coef=torch.zeros(G, 3, 3, device=DEVICE), want_target_grad=True)
    assert gx.shape == shape and gx.dtype == x.dtype and gt.shape == shape and gt.dtype == torch.float32


def test_softmax_class_limit():
    x = torch.zeros(1, MAX_C + 1, 2, device=DEVICE)
    args = dict(x=x, target=torch.zeros_like(x), activation=SOFTMAX, class_last=False, target_is_map=False,
                has_ignore=False, ignore_index=0, per_image=False)
    with pytest.raises(ValueError, match=f"up to {MAX_C} classes"):
        dense_region_stats(**args)
    with pytest.raises(ValueError, match=f"up to {MAX_C} classes"):
        dense_region_grad(**args, coef=torch.zeros(1, MAX_C + 1, 3, device=DEVICE), want_target_grad=False)


@requires_gpu
def test_offsets_past_2_31():
    """Element offsets c P + p up to 2**31 + 16: 32-bit index math would wrap (GPU only: the
    interpreter is too slow for 2**31 elements)."""
    P = 2 ** 30 + 8
    x = torch.zeros(1, 2, P, device="cuda", dtype=torch.float16)  # sigmoid 0.5 everywhere
    t = torch.zeros(1, 2, P, device="cuda", dtype=torch.uint8)
    t[0, 1, -3:] = 1
    args = dict(x=x, target=t, activation=SIGMOID, class_last=False, target_is_map=False, has_ignore=False,
                ignore_index=0, per_image=False)
    stats, ok = dense_region_stats(**args)
    assert ok.item() == 1
    assert stats.cpu().tolist() == [[[0.0, 0.5 * P, 0.0], [1.5, 0.5 * P, 3.0]]]
    coef = torch.tensor([[[0.0, 0.0, 0.0], [4.0, 0.0, 0.0]]], device="cuda")
    gx, _ = dense_region_grad(**args, coef=coef, want_target_grad=False)
    assert gx[0, 1, -3:].tolist() == [1.0] * 3 and gx[0, 1, -4].item() == 0.0 and gx[0, 0, -1].item() == 0.0
