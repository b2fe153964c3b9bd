"""Confusion matrix and StreamingIoU: every kernel against a numpy bincount oracle and the
reference, torch.argmax tie/NaN rules, streaming, merging, bad inputs."""
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import marsops
from marsops import reference
from helpers import assert_label_error, backend_ids, kernel_backends, numpy_confusion

BACKENDS = kernel_backends("confusion_matrix")
ALL = [("reference", "cpu")] + BACKENDS


@st.composite
def confusion_case(draw):
    n = draw(st.integers(1, 4))
    c = draw(st.integers(1, 19))
    spatial = draw(st.sampled_from([(), (1,), (9,), (3, 5), (4, 17), (2, 3, 4), (5, 40)]))
    ignore_index = draw(st.sampled_from([None, 255, -1, 0]))
    target_dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.uint8]))
    if target_dtype == torch.uint8 and ignore_index == -1:
        ignore_index = 255
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = torch.randn((n, c) + spatial, generator=g)
    if draw(st.booleans()):  # ties: rounded logits repeat values
        logits = logits.round()
    if draw(st.booleans()):
        logits = logits.movedim(1, -1).contiguous().movedim(-1, 1)  # non-contiguous
    target = torch.randint(0, c, (n,) + spatial, generator=g)
    if ignore_index is not None:
        target[torch.rand(target.shape, generator=g) < 0.2] = ignore_index
    return logits, target.to(target_dtype), c, ignore_index


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@given(case=confusion_case(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
def test_from_logits_matches_numpy_oracle(backend, device, case, dtype):
    logits, target, c, ignore_index = case
    logits = logits.to(device=device, dtype=dtype)
    got = marsops.confusion_matrix(logits, target.to(device), c, ignore_index, backend=backend)
    assert got.dtype == torch.int64 and got.shape == (c, c)
    expected = numpy_confusion(logits.float().argmax(1).cpu(), target, c, ignore_index)
    np.testing.assert_array_equal(got.cpu().numpy(), expected)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@given(case=confusion_case(), pred_dtype=st.sampled_from([torch.int64, torch.int32, torch.uint8]))
def test_from_labels_matches_numpy_oracle(backend, device, case, pred_dtype):
    logits, target, c, ignore_index = case
    pred = logits.argmax(1).to(pred_dtype)
    got = marsops.confusion_matrix(pred.to(device), target.to(device), c, ignore_index, backend=backend)
    np.testing.assert_array_equal(got.cpu().numpy(), numpy_confusion(pred, target, c, ignore_index))


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_argmax_ties_nan_and_infinities_follow_torch(backend, device):
    rows = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [float("nan"), 5.0, 1.0], [1.0, float("nan"), float("nan")],
                         [float("-inf"), float("-inf"), float("-inf")], [float("inf"), 1.0, float("inf")],
                         [-1.0, float("inf"), float("nan")]])
    logits = rows.unsqueeze(-1).to(device)  # (7, 3, 1)
    target = torch.zeros(7, 1, dtype=torch.long, device=device)
    got = marsops.confusion_matrix(logits, target, 3, backend=backend)
    expected = numpy_confusion(rows.argmax(1), target.cpu(), 3, None)
    np.testing.assert_array_equal(got.cpu().numpy(), expected)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@pytest.mark.parametrize("num_classes", [31, 32, 65, 150, 1000])
def test_many_classes_match_numpy_oracle(backend, device, num_classes):
    """Past 31 classes the Triton kernel counts with direct atomics instead of a per-program
    histogram; past 64 it takes the argmax over chunks of classes (ties and NaN across chunks)."""
    g = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(3, num_classes, 4, 7, generator=g).round()  # many ties
    logits[0, :, 0, 0] = 2.0  # all tied: class 0
    logits[0, num_classes - 1, 0, 1] = float("nan")  # a NaN in the last chunk wins
    logits[1, :, 0, 2] = float("-inf")
    target = torch.randint(0, num_classes, (3, 4, 7), generator=g)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = logits.to(device=device, dtype=dtype)
        got = marsops.confusion_matrix(x, target.to(device), num_classes, backend=backend)
        expected = numpy_confusion(x.float().argmax(1).cpu(), target, num_classes, None)
        np.testing.assert_array_equal(got.cpu().numpy(), expected)


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.channels_last_3d])
def test_channels_last_logits(backend, device, memory_format):
    """NHWC / NDHWC logits are counted in place, with torch.argmax's tie and NaN rules."""
    g = torch.Generator().manual_seed(0)
    shape = (3, 6, 5, 7) if memory_format == torch.channels_last else (2, 6, 3, 4, 5)
    logits = torch.randn(shape, generator=g).round()
    logits.view(-1)[::11] = float("nan")
    target = torch.randint(0, 6, (shape[0],) + shape[2:], generator=g)
    x = logits.contiguous(memory_format=memory_format).to(device)
    got = marsops.confusion_matrix(x, target.to(device), 6, backend=backend)
    np.testing.assert_array_equal(got.cpu().numpy(), numpy_confusion(logits.argmax(1), target, 6, None))


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_out_of_range_labels_raise(backend, device):
    setup = (f"logits = torch.randn(2, 3, 4, device='{device}')\n"
             f"target = torch.zeros(2, 4, dtype=torch.long, device='{device}')\ntarget[1, 1] = 3\n")
    assert_label_error(device, setup + f"marsops.confusion_matrix(logits, target, 3, backend='{backend}')",
                       "target contains")
    # ignored labels may lie outside [0, C)
    exec(setup + f"marsops.confusion_matrix(logits, target, 3, ignore_index=3, backend='{backend}')",
         {"torch": torch, "marsops": marsops})
    assert_label_error(device, f"pred = torch.zeros(2, 4, dtype=torch.long, device='{device}')\npred[0, 0] = -1\n"
                       f"marsops.confusion_matrix(pred, torch.zeros_like(pred), 3, backend='{backend}')",
                       "predictions contain")


@pytest.mark.parametrize("call,match", [
    (lambda: marsops.confusion_matrix(torch.randn(2, 4, 5), torch.zeros(2, 5, dtype=torch.long), 3), "does not match"),
    (lambda: marsops.confusion_matrix(torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long), 3),
     "does not match"),
    (lambda: marsops.confusion_matrix(torch.randn(2, 3), torch.zeros(2), 3), "integer"),
    (lambda: marsops.confusion_matrix(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), 0), "num_classes"),
    (lambda: marsops.confusion_matrix(torch.zeros(2, dtype=torch.bool), torch.zeros(2, dtype=torch.long), 2),
     "integer"),
    (lambda: marsops.confusion_matrix(torch.randn(2, 3), torch.zeros(2, dtype=torch.long, device="meta"), 3),
     "one device"),
])
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_empty_batch_and_deterministic_mode(backend, device):
    empty = marsops.confusion_matrix(torch.randn(0, 4, 3, device=device), torch.zeros(0, 3, dtype=torch.long,
                                                                                        device=device), 4,
                                     backend=backend)
    assert empty.shape == (4, 4) and empty.sum() == 0
    torch.use_deterministic_algorithms(True)
    try:
        x, t = torch.randn(4, 5, 33, device=device), torch.randint(0, 5, (4, 33), device=device)
        if backend != "reference" or device == "cpu":
            a = marsops.confusion_matrix(x, t, 5, backend=backend)
            assert torch.equal(a, marsops.confusion_matrix(x, t, 5, backend=backend))
    finally:
        torch.use_deterministic_algorithms(False)


def test_iou_hand_worked():
    # truth:      0 0 1 1 2 | pred: 0 1 1 1 0  -> class 0: tp 1, union 3 -> 1/3; class 1: tp 2, union 3 -> 2/3;
    # class 2: tp 0, union 1 -> 0; class 3: absent everywhere -> NaN, left out of the mean.
    target = torch.tensor([[0, 0, 1, 1, 2]])
    pred = torch.tensor([[0, 1, 1, 1, 0]])
    metric = marsops.StreamingIoU(4)
    metric.update(pred, target)
    r = metric.compute()
    torch.testing.assert_close(r.iou[:3], torch.tensor([1 / 3, 2 / 3, 0.0], dtype=torch.float64))
    assert torch.isnan(r.iou[3])
    torch.testing.assert_close(r.miou, torch.tensor(1 / 3, dtype=torch.float64))
    torch.testing.assert_close(r.precision[:2], torch.tensor([1 / 2, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(r.recall[:3], torch.tensor([1 / 2, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(r.pixel_accuracy, torch.tensor(3 / 5, dtype=torch.float64))
    # The report's score: classes 1..4 only (here 1..3; 3 is NaN): mean of 2/3 and 0.
    scored = marsops.StreamingIoU(4, classes=[1, 2, 3])
    scored.update(pred, target)
    torch.testing.assert_close(scored.compute().miou, torch.tensor(1 / 3, dtype=torch.float64))


@given(case=confusion_case(), splits=st.integers(1, 4))
def test_streaming_equals_one_shot_and_merge(case, splits):
    logits, target, c, ignore_index = case
    one_shot = marsops.StreamingIoU(c, ignore_index=ignore_index)
    one_shot.update(logits, target)
    streamed, merged = marsops.StreamingIoU(c, ignore_index=ignore_index), marsops.StreamingIoU(
        c, ignore_index=ignore_index)
    for i, (lx, lt) in enumerate(zip(logits.tensor_split(splits), target.tensor_split(splits))):
        streamed.update(lx, lt)
        part = marsops.StreamingIoU(c, ignore_index=ignore_index)
        part.update(lx, lt)
        merged.merge(part)
    assert torch.equal(streamed.matrix, one_shot.matrix) and torch.equal(merged.matrix, one_shot.matrix)
    a, b = streamed.compute(), one_shot.compute()
    torch.testing.assert_close(a.iou, b.iou, equal_nan=True)
    streamed.reset()
    assert streamed.matrix.sum() == 0


def test_streaming_iou_validates_classes_and_merge():
    with pytest.raises(ValueError, match="classes"):
        marsops.StreamingIoU(5, classes=[1, 5])
    with pytest.raises(ValueError, match="classes"):
        marsops.StreamingIoU(5).merge(marsops.StreamingIoU(4))


# sync() across processes: tests/test_edge_cases.py (section 8), whose first sync checks the summed
# counts and whose second checks that they are not summed again.


def _opcheck_samples(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 4, generator=g).to(device)
    t = torch.randint(0, 5, (2, 3, 4), generator=g).to(device)
    yield (x, t, 5, None)
    yield (x, t, 5, 0)
    yield (x.argmax(1), t, 5, 255)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=backend_ids(BACKENDS))
def test_opcheck(backend, device):
    op = torch.ops.marsops.confusion_matrix_triton if backend == "triton" else torch.ops.marsops.confusion_matrix
    for args in _opcheck_samples(device):
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    def f(x, t):
        return marsops.confusion_matrix(x, t, 5, backend="cpu")

    x, t = torch.randn(2, 5, 6, 7), torch.randint(0, 5, (2, 6, 7))
    assert torch.equal(torch.compile(f, fullgraph=True)(x, t), f(x, t))


# ---- checkpoints: state_dict / load_state_dict (issue 23) -------------------------------------------

def _saved_and_loaded(state):
    """state through torch.save and torch.load(weights_only=True), as a checkpoint takes it."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _assert_same_result(a, b):
    ra, rb = a.compute(), b.compute()
    assert torch.equal(ra.matrix, rb.matrix)
    for field in ("iou", "miou", "dice", "mdice", "precision", "recall", "pixel_accuracy"):
        torch.testing.assert_close(getattr(ra, field), getattr(rb, field), rtol=0, atol=0, equal_nan=True)


@given(case=confusion_case(), per_image=st.booleans(), scored=st.booleans(), splits=st.integers(1, 3))
def test_state_dict_round_trip_gives_identical_results_and_continues_exactly(case, per_image, scored, splits):
    logits, target, c, ignore_index = case
    classes = list(range(1, c)) if scored and c > 1 else None
    options = dict(classes=classes, ignore_index=ignore_index, per_image=per_image)
    saved = marsops.StreamingIoU(c, **options)
    parts = list(zip(logits.tensor_split(splits), target.tensor_split(splits)))
    saved.update(*parts[0])
    state = saved.state_dict()
    assert isinstance(state["matrix"], torch.Tensor) and state["matrix"] is saved.local  # torch's convention
    resumed = marsops.StreamingIoU(c, **options)
    counts = resumed.local
    resumed.load_state_dict(_saved_and_loaded(state))
    assert resumed.local is counts  # loaded in place: a captured CUDA graph keeps counting into it
    _assert_same_result(resumed, saved)
    for part in parts[1:]:  # the reports continue exactly
        saved.update(*part)
        resumed.update(*part)
    _assert_same_result(resumed, saved)
    if not per_image:
        whole = marsops.StreamingIoU(c, **options)
        whole.update(logits, target)
        _assert_same_result(resumed, whole)


@pytest.mark.parametrize("other,match", [
    (dict(num_classes=4, classes=[1, 2, 3]), "num_classes 5"),
    (dict(classes=[1, 2]), "classes"),
    (dict(classes=None), "classes"),
    (dict(ignore_index=None), "ignore_index 255"),
    (dict(ignore_index=0), "ignore_index 255"),
    (dict(per_image=True), "per_image"),
])
def test_load_state_dict_refuses_a_state_of_other_options_and_changes_nothing(other, match):
    saved = marsops.StreamingIoU(5, classes=[1, 2, 3, 4], ignore_index=255)
    saved.update(torch.randn(2, 5, 6), torch.randint(0, 5, (2, 6)))
    options = dict(num_classes=5, classes=[1, 2, 3, 4], ignore_index=255, per_image=False)
    options.update(other)
    target = marsops.StreamingIoU(options.pop("num_classes"), **options)
    target.update(torch.randn(1, target.num_classes, 3), torch.zeros(1, 3, dtype=torch.long))
    before = target.local.clone()
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(saved.state_dict())
    assert torch.equal(target.local, before)


def test_load_state_dict_refuses_what_is_not_a_metric_state():
    metric = marsops.StreamingIoU(3)
    state = metric.state_dict()
    with pytest.raises(TypeError, match="dict"):
        metric.load_state_dict([state])
    with pytest.raises(ValueError, match="missing"):
        metric.load_state_dict({k: v for k, v in state.items() if k != "matrix"})
    with pytest.raises(ValueError, match="int64 tensor of shape"):
        metric.load_state_dict(dict(state, matrix=state["matrix"].double()))
    with pytest.raises(ValueError, match="shape"):
        metric.load_state_dict(dict(state, image_sums=torch.zeros(3, 4, dtype=torch.float64)))


def test_a_synced_metric_saves_its_own_counts():
    """state_dict holds this process's counts (a sync()'s sum is a view for compute(), not state)."""
    metric = marsops.StreamingIoU(3)
    metric.update(torch.randn(2, 3, 5), torch.randint(0, 3, (2, 5)))
    metric._synced = metric.local * 2  # what sync() would leave with two equal processes
    state = metric.state_dict()
    assert torch.equal(state["matrix"], metric.local)
    other = marsops.StreamingIoU(3)
    other.load_state_dict(state)
    assert torch.equal(other.matrix, metric.local)


def test_torchmetrics_adapter_state_dict_is_consistent():
    pytest.importorskip("torchmetrics")
    from marsops.integrations import TorchmetricsIoU

    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(4, 5, 6, 7, generator=g), torch.randint(0, 5, (4, 6, 7), generator=g)
    t[0, 0] = 255
    metric = TorchmetricsIoU(5, classes=[1, 2, 3, 4], ignore_index=255)
    metric.update(x[:2], t[:2])
    state = _saved_and_loaded(metric.state_dict())
    assert torch.equal(state["confmat"], metric.confmat)
    streaming = marsops.StreamingIoU(5, classes=[1, 2, 3, 4], ignore_index=255)
    streaming.update(x[:2], t[:2])
    # the same options as StreamingIoU's state, and the same counts
    assert {k: streaming.state_dict()[k] for k in state["_extra_state"]} == state["_extra_state"]
    assert torch.equal(state["confmat"], streaming.state_dict()["matrix"])
    resumed = TorchmetricsIoU(5, classes=[1, 2, 3, 4], ignore_index=255)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.confmat, metric.confmat)
    for m in (metric, resumed):
        m.update(x[2:], t[2:])
    torch.testing.assert_close(resumed.compute(), metric.compute(), rtol=0, atol=0)
    for options, match in ((dict(num_classes=4), "num_classes 5"), (dict(num_classes=5, classes=[1, 2]), "classes"),
                           (dict(num_classes=5, classes=[1, 2, 3, 4]), "ignore_index 255")):
        other = TorchmetricsIoU(**options)
        before = other.confmat.clone()
        with pytest.raises(ValueError, match=match):
            other.load_state_dict(state)
        assert torch.equal(other.confmat, before)
    wrong = dict(state, confmat=torch.zeros(4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="shape"):
        TorchmetricsIoU(5, classes=[1, 2, 3, 4], ignore_index=255).load_state_dict(wrong)
