"""Class-last (channels_last) logits on the C++ CPU kernels: the layout only changes how a block of
pixels is loaded and stored (fp32 blocks of up to 32 classes through copies specialised for their
class count: register transposes on AVX2 and AVX-512, scalar loops otherwise), never the formulas, so every result must equal the same logits' in NCHW, for every
class count, dtype and tail length: the counts exactly, the losses and gradients up to the one
thing that may differ, the compiler contracting a * b + c into an FMA in one layout's
instantiation and not the other's (a few fp32 roundings, so at most one rounding of the output
dtype, or an fp32-sized absolute difference where a result is a cancellation like 1 - p).
The reference comparisons live in the per-op tests."""
import os

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import marsops
from helpers import EMULATED_CUDA, kernel_backends, numpy_confusion, run_under_cpu_capability

pytestmark = pytest.mark.skipif(("cpu", "cpu") not in kernel_backends("focal_loss_forward"),
                                reason="the C++ CPU kernels are not built")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@st.composite
def cases(draw):
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 40))  # past the 32 classes of the specialised copies
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 40))  # tails of every length next to 16-pixel blocks
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    return n, c, h, w, dtype, seed


def make(n, c, h, w, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, h, w, generator=g) * 4).to(dtype)
    y = torch.randint(0, c, (n, h, w), generator=g)
    y[torch.rand(y.shape, generator=g) < 0.2] = -100
    return x, y


def assert_same(a, b):
    """Equal up to one rounding of the output dtype, or 1e-6 of the largest value (fp32 roundings
    of intermediate values near a cancellation)."""
    if a.dtype == torch.int64:
        assert torch.equal(a, b)
        return
    eps = torch.finfo(a.dtype).eps
    scale = a.double().abs().max().item() if a.numel() else 0.0
    torch.testing.assert_close(b.double(), a.double(), rtol=2 * eps, atol=1e-6 * scale + 1e-30)


def focal_outputs(x, y, c):
    x = x.detach().requires_grad_()
    cm = torch.zeros(c, c, dtype=torch.int64)
    loss = marsops.focal_loss(x, y, torch.linspace(0.5, 2, c), gamma=0.5, label_smoothing=0.1, backend="cpu",
                              confusion=cm)
    loss.backward()
    none = marsops.focal_loss(x.detach(), y, gamma=2.0, reduction="none", backend="cpu")
    # The gradient again without the confusion count (the kernel's other compiled copy) and
    # without label smoothing.
    x2 = x.detach().requires_grad_()
    marsops.focal_loss(x2, y, gamma=2.0, reduction="sum", backend="cpu").backward()
    return loss.detach(), x.grad, cm, none, x2.grad


# Every class count with a specialised copy (1..32) and two past it, each dtype, with full blocks
# and a tail (33 pixels per image); the hypothesis tests draw other shapes.
EVERY_C = [(c, dtype) for c in range(1, 35) for dtype in DTYPES]


@pytest.mark.parametrize("c,dtype", EVERY_C, ids=[f"C{c}-{str(d)[6:]}" for c, d in EVERY_C])
def test_every_class_count_agrees_in_both_layouts(c, dtype):
    check_focal_and_confusion(2, c, 3, 11, dtype, seed=c)
    check_region("dice_focal_loss", (2, c, 3, 11, dtype, c), per_image=c % 2 == 0)


# The process runs the kernels of the best CPU capability; each capability has its own transposes
# (AVX-512: pairwise permutes up to 8 classes, 16x16 squares to 32; AVX2: 8x8 squares to 32), so the
# class counts are checked again under each of the others, in a child process
# (ATEN_CPU_CAPABILITY is read once per process).
OTHER_CAPABILITIES = ["default", "avx2"]


@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") is not None, reason="already the child process")
@pytest.mark.parametrize("capability", OTHER_CAPABILITIES)
def test_every_class_count_agrees_under_every_cpu_capability(capability):
    out = run_under_cpu_capability(capability, __file__, "test_every_class_count_agrees_in_both_layouts or "
                                   "test_long_class_last_segments_agree or test_bad_label_in_a_full_block")
    assert f"{len(EVERY_C) + len(LONG_C) + len(BAD_LABEL_CASES)} passed" in out


# The CUDA kernels read class-last logits in place too (a pixel's classes contiguous): run on the
# emulation (.ci/emulate_cuda, a MARSOPS_EMULATED_CUDA=1 session), they must agree across layouts
# the same way; they compute in fp32.
EMULATED_C = [(c, dtype) for c, dtype in EVERY_C if dtype != torch.float64] if EMULATED_CUDA else []


@pytest.mark.parametrize("c,dtype", EMULATED_C, ids=[f"cuda_emulated-C{c}-{str(d)[6:]}" for c, d in EMULATED_C])
def test_emulated_cuda_class_counts_agree_in_both_layouts(c, dtype):
    check_focal_and_confusion(2, c, 3, 11, dtype, seed=c)


@given(cases())
def test_focal_and_confusion_agree_in_both_layouts(case):
    check_focal_and_confusion(*case)


def check_focal_and_confusion(n, c, h, w, dtype, seed):
    x, y = make(n, c, h, w, dtype, seed)
    x_last = x.contiguous(memory_format=torch.channels_last)
    assert x_last.stride(1) == 1 or c == 1 or h * w == 1  # the layout is really class-last
    for a, b in zip(focal_outputs(x, y, c), focal_outputs(x_last, y, c)):
        assert_same(a, b)
    assert torch.equal(marsops.confusion_matrix(x, y, c, ignore_index=-100, backend="cpu"),
                       marsops.confusion_matrix(x_last, y, c, ignore_index=-100, backend="cpu"))
    check_argmax_special_values(x, y, c, seed)


def check_argmax_special_values(x, y, c, seed):
    """torch.argmax's rules (the first maximum; a NaN wins over any number, the first NaN over
    later ones) in full SIMD blocks and tails, in both layouts, against numpy's count of
    torch.argmax: blocks with infinities of one sign, of both signs, and with NaNs (the SIMD
    argmax redoes a block with a NaN by the rule; class-last fp32 blocks of 16-32 classes take
    argmax_tree.h with AVX2 and AVX-512, its own NaN check)."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, 12, x.shape, generator=g)
    infinities = x.masked_fill(pick == 0, float("inf"))
    mixed = infinities.masked_fill(pick == 1, float("-inf"))
    nans = mixed.clone()
    nans.view(-1)[seed % 5::7] = float("nan")
    for special in (infinities, mixed, nans):
        expected = numpy_confusion(special.argmax(1), y, c, -100)
        for logits in (special, special.contiguous(memory_format=torch.channels_last)):
            got = marsops.confusion_matrix(logits, y, c, ignore_index=-100, backend="cpu")
            np.testing.assert_array_equal(got.numpy(), expected)


LONG_C = [5, 8, 16, 19, 32]


@pytest.mark.parametrize("c", LONG_C)
def test_long_class_last_segments_agree(c):
    """The class-last count visits the blocks of a long segment from its two halves in turn when a
    block spans five cache lines or more (confusion_kernel.h, two_stream_block: AVX-512 from 5
    classes, AVX2 from 10). 24 images of 360 pixels make segments of 22 blocks (AVX-512) or 45
    (AVX2), some cut by the 8192-pixel chunks, so blocks are visited out of order."""
    check_focal_and_confusion(24, c, 9, 40, torch.float32, seed=c)


BAD_C = [2, 5, 8, 16, 17]
BAD_LABEL_CASES = [(c, label, hw, where) for c in BAD_C for label in (-1, "C")
                   for hw, where in (((4, 16), (2, 9)), ((9, 40), (7, 10)))]


@pytest.mark.parametrize("c,label,hw,where", BAD_LABEL_CASES)
def test_bad_label_in_a_full_block_is_refused_in_both_layouts(c, label, hw, where):
    """Class-last fp32 logits with int64 labels and up to 16 classes are counted with C a
    compile-time constant; a bad label inside a full SIMD block goes through its own branch. In
    the 9x40 images it sits at pixel 290: block 18 of 22 with AVX-512, 36 of 45 with AVX2, in the
    second of the two streams where the blocks are that wide (see above)."""
    x, y = make(2, c, *hw, torch.float32, seed=c)
    bad = c if label == "C" else label
    y[1, where[0], where[1]] = bad
    for logits in (x, x.contiguous(memory_format=torch.channels_last)):
        with pytest.raises(ValueError, match=f"contains label {bad}, outside"):
            marsops.confusion_matrix(logits, y, c, ignore_index=-100, backend="cpu")


@given(cases(), st.sampled_from(["dice_loss", "jaccard_loss", "dice_focal_loss", "dice_ce_loss", "tversky_loss"]),
       st.booleans())
def test_region_losses_agree_in_both_layouts(case, name, per_image):
    check_region(name, case, per_image)


def check_region(name, case, per_image):
    n, c, h, w, dtype, seed = case
    x, y = make(n, c, h, w, dtype, seed)
    results = []
    for logits in (x, x.contiguous(memory_format=torch.channels_last)):
        leaf = logits.detach().requires_grad_()
        loss = getattr(marsops, name)(leaf, y, per_image=per_image, backend="cpu")
        loss.backward()
        results.append((loss.detach(), leaf.grad))
    for a, b in zip(*results):
        assert_same(a, b)
