"""Flip augmentation: every kernel against torch.flip (an oracle we did not write) and the
reference, image/mask consistency, reproducibility, TTA merge, gradients, bad inputs."""
import pytest
import torch
from hypothesis import given, strategies as st

import marsops
from helpers import backend_ids, kernel_backends

BACKENDS = kernel_backends("flip_views")
ALL = [("reference", "cpu")] + BACKENDS
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8]


@st.composite
def batch(draw, dtypes=DTYPES):
    n = draw(st.integers(0, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 11))
    channels = draw(st.sampled_from([None, 1, 3]))
    dtype = draw(st.sampled_from(dtypes))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    shape = (n, h, w) if channels is None else (n, channels, h, w)
    images = (torch.rand(shape, generator=g) * 255).to(dtype)
    if layout == "channels_last" and channels is not None:
        images = images.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        images = torch.cat([images, images], dim=-1)[..., ::2]  # a view with stride 2 along W
    masks = torch.randint(0, 5, (n, h, w), generator=g).to(draw(st.sampled_from([torch.uint8, torch.int32,
                                                                                  torch.int64])))
    return images, masks


def torch_flip4(x):
    return torch.cat([x, x.flip(-1), x.flip(-2), x.flip(-2, -1)])


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@given(pair=batch())
def test_flip4_matches_torch_flip(backend, device, pair):
    images, masks = (t.to(device) for t in pair)
    out_images, out_masks = marsops.flip4(images, masks, backend=backend)
    assert out_images.dtype == images.dtype and out_masks.dtype == masks.dtype
    assert torch.equal(out_images.cpu(), torch_flip4(pair[0]))
    assert torch.equal(out_masks.cpu(), torch_flip4(pair[1]))
    only_images, none = marsops.flip4(images, backend=backend)
    assert none is None and torch.equal(only_images, out_images)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@given(pair=batch(dtypes=[torch.float32, torch.float64, torch.float16]))
def test_flip4_merge_inverts_flip4_and_matches_torch(backend, device, pair):
    images = pair[0].to(device)
    stacked, _ = marsops.flip4(images, backend=backend)
    merged = marsops.flip4_merge(stacked, backend=backend)
    assert merged.shape == images.shape and torch.equal(merged.cpu(), pair[0].contiguous())
    # Distinct views: the merge is the mean of each view flipped back.
    views = torch.randn((4 * pair[0].shape[0],) + tuple(pair[0].shape[1:]), dtype=torch.float64)
    a, b, c, d = views.chunk(4)
    expected = (a + b.flip(-1) + c.flip(-2) + d.flip(-2, -1)) / 4
    torch.testing.assert_close(marsops.flip4_merge(views.to(device), backend=backend).cpu(), expected)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@given(pair=batch(), seed=st.integers(0, 1000), p_h=st.sampled_from([0.0, 0.5, 1.0]),
       p_v=st.sampled_from([0.0, 0.3, 1.0]))
def test_random_flip_matches_torch_flip_and_keeps_pairs(backend, device, pair, seed, p_h, p_v):
    images, masks = (t.to(device) for t in pair)
    gen = torch.Generator(device=device).manual_seed(seed)
    out_images, out_masks, flips = marsops.random_flip(images, masks, p_h, p_v, generator=gen, backend=backend)
    assert flips.shape == (images.shape[0], 4) and flips.dtype == torch.bool
    assert not flips[:, 2:].any()  # no depth flips or transposes asked for
    if p_h in (0.0, 1.0):
        assert bool((flips[:, 0] == bool(p_h)).all())
    for i, (lr, ud, _, _) in enumerate(flips.tolist()):
        dims = [d for d, on in ((-1, lr), (-2, ud)) if on]
        expected_image = pair[0][i].flip(dims) if dims else pair[0][i]
        expected_mask = pair[1][i].flip(dims) if dims else pair[1][i]
        assert torch.equal(out_images[i].cpu(), expected_image)
        assert torch.equal(out_masks[i].cpu(), expected_mask)
    # Reproducible with a generator.
    again = marsops.random_flip(images, masks, p_h, p_v, generator=torch.Generator(device=device).manual_seed(seed),
                                backend=backend)
    assert torch.equal(again[2], flips) and torch.equal(again[0], out_images)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_masks_built_from_images_still_match_after_random_flip(backend, device):
    """Masks made from the images (a threshold) must equal the threshold of the flipped images."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 7, 10, generator=g).to(device)
    masks = (images[:, 0] > 0.5).to(torch.int64)
    out_images, out_masks, flips = marsops.random_flip(images, masks, generator=torch.Generator(device).manual_seed(3),
                                                       backend=backend)
    assert torch.equal(out_masks, (out_images[:, 0] > 0.5).to(torch.int64))
    assert flips[:, :2].any() and not flips[:, :2].all()


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_gradients_flow_through_flips(backend, device):
    x = torch.randn(3, 2, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    fns = [lambda x: marsops.flip4(x, backend=backend)[0],
           lambda x: marsops.flip4_merge(torch.cat([x, x * 2, x * 3, x * 4]), backend=backend),
           lambda x: marsops.random_flip(x, generator=torch.Generator(device).manual_seed(1), backend=backend)[0]]
    for fn in fns:
        assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_bool_and_odd_shapes(backend, device):
    x = torch.rand(2, 1, 1, 5, device=device) > 0.5  # H = 1
    out, _ = marsops.flip4(x, backend=backend)
    assert torch.equal(out.cpu(), torch_flip4(x.cpu()))


@pytest.mark.parametrize("call,match", [
    (lambda: marsops.flip4(torch.rand(2, 5)), "images must be"),
    (lambda: marsops.flip4(torch.rand(2, 1, 4, 5), torch.zeros(2, 4, 6, dtype=torch.long)), "does not match"),
    (lambda: marsops.flip4(torch.rand(2, 1, 4, 5), torch.zeros(2, 4, 5)), "integer"),
    (lambda: marsops.flip4(torch.rand(2, 4, 5), torch.zeros(2, 4, 5, dtype=torch.long, device="meta")), "one device"),
    (lambda: marsops.flip4_merge(torch.rand(6, 2, 4, 5)), "4-view batch"),
    (lambda: marsops.flip4_merge(torch.zeros(4, 2, 4, 5, dtype=torch.long)), "floating"),
    (lambda: marsops.random_flip(torch.rand(2, 4, 5), p_h=1.5), "p_h"),
])
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def _opcheck_samples(device):
    x = torch.randn(2, 3, 4, 5, device=device)
    flags = torch.tensor([1, 2], dtype=torch.uint8, device=device)
    yield "flip_views", (x.clone().requires_grad_(), [0, 1, 2, 3], False)
    yield "flip_views", (torch.randint(0, 5, (2, 4, 5), device=device), [0, 3], False)
    yield "flip_views", (torch.randn(2, 3, 4, 5, 5, device=device, requires_grad=True), list(range(8)), True)
    yield "flip_views", (torch.randn(2, 3, 5, 5, device=device, requires_grad=True), [0, 9, 10, 11], False)
    yield "flip_views_sum", (torch.randn(8, 3, 4, 5, device=device, requires_grad=True), [0, 1, 2, 3], False, 0.25)
    yield "flip_views_sum", (torch.randn(8, 2, 5, 5, device=device, requires_grad=True), [0, 8, 9, 11], False, 0.25)
    yield "flip_by_flags", (x.clone().requires_grad_(), flags, False)
    yield "flip_by_flags", (torch.randn(2, 3, 5, 5, device=device, requires_grad=True),
                            torch.tensor([9, 14], dtype=torch.uint8, device=device), True)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_opcheck(backend, device):
    for name, args in _opcheck_samples(device):
        op = getattr(torch.ops.marsops, name + ("_triton" if backend == "triton" else ""))
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    def f(x, m):
        images, masks = marsops.flip4(x, m, backend="cpu")
        return marsops.flip4_merge(images * 2, backend="cpu"), masks

    x, m = torch.randn(2, 1, 6, 8), torch.randint(0, 5, (2, 6, 8))
    got, got_m = torch.compile(f, fullgraph=True)(x, m)
    assert torch.equal(got, x * 2) and torch.equal(got_m, torch_flip4(m))


def _free_memory_gb():
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        return 0.0


@pytest.mark.skipif(_free_memory_gb() < 8, reason="needs 8 GB of free memory")
@pytest.mark.parametrize("backend,device", [(b, d) for b, d in BACKENDS if b != "triton" or d == "cuda"],
                         ids=backend_ids([(b, d) for b, d in BACKENDS if b != "triton" or d == "cuda"]))
def test_index_math_past_2_to_the_31(backend, device):
    """A uint8 batch of just over 2**31 elements: the last rows land where torch.flip puts them
    (32-bit index math would wrap). The interpreter is too slow for this; Triton runs it on GPUs."""
    n, h, w = 2, 32768, 32769  # 2 * 32768 * 32769 = 2**31 + 65536 elements
    x = torch.empty((n, h, w), dtype=torch.uint8, device=device)
    x[:, :2].random_(0, 255)
    x[:, -2:].random_(0, 255)
    flags = torch.tensor([3, 1], dtype=torch.uint8, device=device)
    out = getattr(torch.ops.marsops, "flip_by_flags" + ("_triton" if backend == "triton" else ""))(x, flags, False)
    assert torch.equal(out[1, -1], x[1, -1].flip(-1))  # left-right only
    assert torch.equal(out[0, -1], x[0, 0].flip(-1))   # both: the first row, reversed, ends up last
    assert torch.equal(out[0, 0], x[0, -1].flip(-1))
    if device == "cuda":  # flip4 writes 4 blocks: k * total passes 2**31 already at total > 2**31 / 3
        y = x.view(-1)[: 2**31 // 3 + 4096].view(1, 1, -1)
        y4 = getattr(torch.ops.marsops, "flip_views" + ("_triton" if backend == "triton" else ""))(y, [0, 1, 2, 3],
                                                                                                  False)
        assert torch.equal(y4[3, 0, -8:], y[0, 0, :8].flip(-1))
        del y4, out
        suffix = "_triton" if backend == "triton" else ""
        z = torch.arange(2**31 // 3 + 4096, device=device).remainder(251).half().view(1, 1, -1)  # integers: exact
        z4 = getattr(torch.ops.marsops, "flip_views" + suffix)(z, [0, 1, 2, 3], False)
        merged = getattr(torch.ops.marsops, "flip_views_sum" + suffix)(z4, [0, 1, 2, 3], False, 0.25)
        assert torch.equal(merged[0, 0, -8:], z[0, 0, -8:]) and torch.equal(merged[0, 0, :8], z[0, 0, :8])



# ---- volumes, dihedral symmetries ---------------------------------------------------------------

def torch_view(x, code):
    """An oracle for a view, from torch.rot90 / torch.flip: transpose first (bit 3), then flips."""
    if code & 8:
        x = x.transpose(-2, -1)
    dims = [d for d, bit in ((-3, 4), (-2, 2), (-1, 1)) if code & bit]
    return x.flip(dims) if dims else x


def test_the_d4_views_are_the_eight_symmetries_of_the_square():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    rotations = [torch.rot90(x, k, (-2, -1)) for k in range(4)]
    symmetries = rotations + [r.transpose(-2, -1) for r in rotations]
    views = [torch_view(x, code) for code in marsops.augment.D4_VIEWS]
    assert all(any(torch.equal(v, s) for s in symmetries) for v in views)
    assert all(any(torch.equal(v, s) for v in views) for s in symmetries)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@pytest.mark.parametrize("dims", [(-3, -2, -1), (-3,), (-3, -1), (-1,), (-2, -1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.bool, torch.float16])
def test_volume_flips_match_torch_flip(backend, device, dims, dtype):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(2, 3, 4, 5, 6, generator=g) * 100).to(dtype)  # (N, C, D, H, W)
    masks = torch.randint(0, 5, (2, 4, 5, 6), generator=g)  # (N, D, H, W)
    views = marsops.augment.flip_views_for(dims)
    assert len(views) == 2 ** len(dims)
    out_images, out_masks = marsops.flip4(images.to(device), masks.to(device), dims=dims, backend=backend)
    assert torch.equal(out_images.cpu(), torch.cat([torch_view(images, c) for c in views]))
    assert torch.equal(out_masks.cpu(), torch.cat([torch_view(masks, c) for c in views]))
    if dtype.is_floating_point:
        merged = marsops.flip4_merge(out_images.float(), dims=dims, backend=backend)
        torch.testing.assert_close(merged.cpu(), images.float())


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@pytest.mark.parametrize("shape", [(3, 2, 5, 5), (2, 4, 4), (1, 1, 1, 1)])
def test_d4_matches_torch_and_merges_back(backend, device, shape):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(shape, generator=g)
    masks = torch.randint(0, 5, (shape[0],) + shape[-2:], generator=g)
    out, out_masks = marsops.d4(images.to(device), masks.to(device), backend=backend)
    expected = torch.cat([torch_view(images, c) for c in marsops.augment.D4_VIEWS])
    assert torch.equal(out.cpu(), expected)
    assert torch.equal(out_masks.cpu(), torch.cat([torch_view(masks, c) for c in marsops.augment.D4_VIEWS]))
    torch.testing.assert_close(marsops.d4_merge(out, backend=backend).cpu(), images)
    # distinct views: the merge is the mean of each view mapped back
    views = torch.randn((8 * shape[0],) + shape[1:], generator=g, dtype=torch.float64)
    back = [torch_view(v, marsops.reference.inverse_view(c)) for v, c in zip(views.chunk(8), marsops.augment.D4_VIEWS)]
    torch.testing.assert_close(marsops.d4_merge(views.to(device), backend=backend).cpu(), sum(back) / 8)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_gradients_flow_through_views(backend, device):
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
    vol = torch.randn(2, 1, 3, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    fns = [(lambda x: marsops.d4(x, backend=backend)[0], x),
           (lambda x: marsops.d4_merge(torch.cat([x * (k + 1) for k in range(8)]), backend=backend), x),
           (lambda x: marsops.random_flip(x, p_h=0.5, p_v=0.5, p_t=0.5, backend=backend,
                                          generator=torch.Generator(device).manual_seed(2))[0], x),
           (lambda v: marsops.flip4(v, dims=(-3, -2, -1), backend=backend)[0], vol),
           (lambda v: marsops.random_flip(v, p_d=0.5, generator=torch.Generator(device).manual_seed(3),
                                          backend=backend)[0], vol)]
    for fn, arg in fns:
        assert torch.autograd.gradcheck(fn, (arg,), fast_mode=True)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_random_views_of_volumes_and_squares(backend, device):
    g = torch.Generator().manual_seed(4)
    vol = torch.randn(16, 2, 3, 4, 4, generator=g)
    masks = torch.randint(0, 5, (16, 3, 4, 4), generator=g)
    out, out_masks, flips = marsops.random_flip(vol.to(device), masks.to(device), p_d=0.5, p_t=0.5,
                                                generator=torch.Generator(device).manual_seed(5), backend=backend)
    assert flips[:, 2].any() and flips[:, 3].any() and not flips[:, 2].all()
    for i, (lr, ud, depth, tr) in enumerate(flips.tolist()):
        code = lr * 1 | ud * 2 | depth * 4 | tr * 8
        assert torch.equal(out[i].cpu(), torch_view(vol[i], code))
        assert torch.equal(out_masks[i].cpu(), torch_view(masks[i], code))


@pytest.mark.parametrize("call,error,match", [
    (lambda: marsops.d4(torch.rand(2, 1, 4, 5)), ValueError, "square"),
    (lambda: marsops.d4_merge(torch.rand(8, 1, 4, 5)), ValueError, "square"),
    (lambda: marsops.flip4(torch.rand(2, 4, 5), dims=(-3, -1)), ValueError, "D, H, W"),
    (lambda: marsops.flip4(torch.rand(2, 1, 4, 5), dims=(0, -1)), ValueError, "subset"),
    (lambda: marsops.flip4(torch.rand(2, 1, 4, 5), dims=(-1, -1)), ValueError, "subset"),
    (lambda: marsops.flip4(torch.rand(2, 1, 4, 5), dims=()), ValueError, "subset"),
    (lambda: marsops.random_flip(torch.rand(2, 1, 4, 5), p_t=0.5), ValueError, "square"),
    (lambda: marsops.random_flip(torch.rand(2, 4, 5), p_d=0.5), ValueError, "D, H, W"),
    (lambda: marsops.flip4_merge(torch.rand(6, 1, 3, 4, 5), dims=(-3, -2, -1)), ValueError, "8-view"),
])
def test_bad_view_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---- found by the second review -----------------------------------------------------------------

def test_dims_given_as_tensors_are_checked_for_duplicates():
    x = torch.randn(2, 1, 4, 5)
    with pytest.raises(ValueError, match="subset"):
        marsops.flip4(x, dims=torch.tensor([-1, -1]))
    assert torch.equal(marsops.flip4(x, dims=torch.tensor([-2, -1]))[0], marsops.flip4(x)[0])


def test_reference_flips_work_under_torch_func():
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    jac = torch.func.jacrev(lambda z: marsops.flip4(z, backend="reference")[0])(x)
    assert jac.shape == (8, 1, 3, 3, 2, 1, 3, 3) and jac.sum() == 4 * x.numel()  # each view: a permutation
    torch.func.jvp(lambda z: marsops.flip4_merge(z, backend="reference"), (x.repeat(4, 1, 1, 1),),
                   (torch.ones(8, 1, 3, 3, dtype=torch.float64),))


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_float8_images_flip_on_every_backend(backend, device):
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("no float8 in this torch")
    x = torch.randn(3, 2, 4, 5, device=device).to(torch.float8_e4m3fn)
    bits = x.view(torch.uint8)
    out = marsops.flip4(x, backend=backend)[0]
    assert torch.equal(out.view(torch.uint8), torch.cat([bits, bits.flip(-1), bits.flip(-2), bits.flip(-2, -1)]))
    flags = torch.tensor([1, 2, 3], dtype=torch.uint8, device=device)
    op = marsops.reference.flip_by_flags if backend == "reference" else getattr(
        torch.ops.marsops, "flip_by_flags" + ("_triton" if backend == "triton" else ""))
    flipped = op(x, flags, False).view(torch.uint8)
    assert torch.equal(flipped[2], bits[2].flip(-2, -1)) and torch.equal(flipped[0], bits[0].flip(-1))
