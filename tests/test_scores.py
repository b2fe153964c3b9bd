"""Dice / F1 / F-beta from the confusion matrix, the per-image mode of StreamingIoU, and the
torchmetrics adapter: against torchmetrics and MONAI (oracles we did not write) where installed,
hand-worked cases and a per-image loop written here."""
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import marsops
from helpers import backend_ids, kernel_backends

ALL = [("reference", "cpu")] + kernel_backends("confusion_matrix")


def _batch(seed=0, n=4, c=5, shape=(6, 7), ignore=255):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c) + shape, generator=g)
    t = torch.randint(0, c, (n,) + shape, generator=g)
    t[0, 0] = ignore
    return x, t


@pytest.mark.parametrize("backend,device", ALL, ids=backend_ids(ALL))
def test_dice_f1_fbeta_match_torchmetrics(backend, device):
    tm = pytest.importorskip("torchmetrics.classification")
    x, t = _batch()
    metric = marsops.StreamingIoU(5, ignore_index=255, backend=backend)
    metric.update(x.to(device), t.to(device))
    r = metric.compute()
    for oracle, ours in ((tm.MulticlassJaccardIndex(5, average="none", ignore_index=255), r.iou),
                         (tm.MulticlassF1Score(5, average="none", ignore_index=255), r.dice),
                         (tm.MulticlassFBetaScore(2.0, num_classes=5, average="none", ignore_index=255), r.fbeta(2.0)),
                         (tm.MulticlassFBetaScore(0.5, num_classes=5, average="none", ignore_index=255),
                          r.fbeta(0.5))):
        oracle.update(x, t)
        torch.testing.assert_close(ours.cpu().float(), oracle.compute())


def test_dice_hand_worked_and_empty_class_rule():
    # truth: 0 0 1 1 2 | pred: 0 1 1 1 0 -> dice 0: 2*1/(2+2) = 1/2; 1: 2*2/(2+3) = 4/5; 2: 0; 3: absent -> NaN
    metric = marsops.StreamingIoU(4, classes=[1, 2, 3])
    metric.update(torch.tensor([[0, 1, 1, 1, 0]]), torch.tensor([[0, 0, 1, 1, 2]]))
    r = metric.compute()
    torch.testing.assert_close(r.dice[:3], torch.tensor([0.5, 0.8, 0.0], dtype=torch.float64))
    assert torch.isnan(r.dice[3]) and torch.isnan(r.fbeta(3.0)[3])
    torch.testing.assert_close(r.mdice, torch.tensor(0.4, dtype=torch.float64))  # mean of 0.8 and 0, 3 left out
    torch.testing.assert_close(r.fbeta(1.0)[:3], r.dice[:3])
    # F-beta of class 1 (tp 2, fp 1, fn 0) with beta 2: 5 * 2 / (5 * 2 + 4 * 0 + 1)
    assert float(r.fbeta(2.0)[1]) == pytest.approx(10 / 11)
    with pytest.raises(ValueError, match="beta"):
        r.fbeta(0.0)


def _per_image_oracle(pred, target, num_classes, ignore_index):
    """Per image, per class: IoU and Dice where the class is in the image's truth or prediction;
    then the mean over those images. A plain numpy loop."""
    iou = [[] for _ in range(num_classes)]
    dice = [[] for _ in range(num_classes)]
    for p, t in zip(pred.reshape(len(pred), -1).numpy(), target.reshape(len(target), -1).numpy()):
        keep = t != ignore_index
        p, t = p[keep], t[keep]
        for c in range(num_classes):
            inter, union = np.sum((p == c) & (t == c)), np.sum((p == c) | (t == c))
            if union:
                iou[c].append(inter / union)
                dice[c].append(2 * inter / (np.sum(p == c) + np.sum(t == c)))
    mean = lambda v: np.mean(v) if v else np.nan  # noqa: E731
    return np.array([mean(v) for v in iou]), np.array([mean(v) for v in dice])


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 5), c=st.integers(1, 6), batches=st.integers(1, 3))
def test_per_image_mode_matches_a_per_image_loop(seed, n, c, batches):
    g = torch.Generator().manual_seed(seed)
    metric = marsops.StreamingIoU(c, ignore_index=-1, per_image=True)
    preds, targets = [], []
    for _ in range(batches):
        x = torch.randn(n, c, 3, 4, generator=g)
        t = torch.randint(-1, c, (n, 3, 4), generator=g)  # -1: ignored
        metric.update(x, t)
        preds.append(x.argmax(1))
        targets.append(t)
    iou, dice = _per_image_oracle(torch.cat(preds), torch.cat(targets), c, -1)
    r = metric.compute()
    np.testing.assert_allclose(r.iou.numpy(), iou, equal_nan=True)
    np.testing.assert_allclose(r.dice.numpy(), dice, equal_nan=True)
    # precision, recall, pixel accuracy stay data-set scores
    data_set = marsops.StreamingIoU(c, ignore_index=-1)
    for p, t in zip(preds, targets):
        data_set.update(p, t)
    torch.testing.assert_close(r.precision, data_set.compute().precision, equal_nan=True)


def test_per_image_mode_matches_monai():
    metrics = pytest.importorskip("monai.metrics")
    x, t = _batch(seed=1, ignore=-100)
    t[0, 0] = 0
    C = x.shape[1]
    metric = marsops.StreamingIoU(C, per_image=True)
    metric.update(x, t)
    onehot = lambda v: torch.nn.functional.one_hot(v, C).movedim(-1, 1)  # noqa: E731
    # Every class appears in every image's truth here, so MONAI's empty rule (by truth) agrees with ours.
    assert all((t[i] == c).any() for i in range(len(t)) for c in range(C))
    iou = metrics.compute_iou(onehot(x.argmax(1)), onehot(t), ignore_empty=True).mean(0)
    dice = metrics.compute_dice(onehot(x.argmax(1)), onehot(t), ignore_empty=True).mean(0)
    torch.testing.assert_close(metric.compute().iou, iou.double())
    torch.testing.assert_close(metric.compute().dice, dice.double())


def test_per_image_mode_refuses_batch_level_updates_and_mismatched_merges():
    per = marsops.StreamingIoU(3, per_image=True)
    with pytest.raises(ValueError, match="per_image"):
        per.update_flip4(torch.randn(4, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="per_image"):
        marsops.focal_loss(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), confusion=per)
    with pytest.raises(ValueError, match="per_image"):
        per.merge(marsops.StreamingIoU(3))
    with pytest.raises(ValueError, match="outside"):
        per.update(torch.randn(1, 3, 2), torch.tensor([[0, 3]]))
    per.update(torch.randn(2, 3, 4), torch.randint(0, 3, (2, 4)))
    other = marsops.StreamingIoU(3, per_image=True)
    other.merge(per)
    torch.testing.assert_close(other.compute().iou, per.compute().iou, equal_nan=True)
    per.reset()
    assert per.matrix.sum() == 0 and torch.isnan(per.compute().iou).all()


def test_torchmetrics_adapter():
    pytest.importorskip("torchmetrics")
    from marsops.integrations import TorchmetricsIoU

    x, t = _batch(seed=2)
    metric = TorchmetricsIoU(5, classes=[1, 2, 3, 4], ignore_index=255)
    reference = marsops.StreamingIoU(5, classes=[1, 2, 3, 4], ignore_index=255)
    for i in range(2):
        metric.update(x[2 * i:2 * i + 2], t[2 * i:2 * i + 2])
    reference.update(x, t)
    torch.testing.assert_close(metric.compute(), reference.compute().miou)
    torch.testing.assert_close(metric.scores().dice, reference.compute().dice)
    dice = TorchmetricsIoU(5, ignore_index=255, score="dice")
    batch_value = dice(x, t)  # torchmetrics' forward: this batch's score, and accumulated
    torch.testing.assert_close(batch_value, marsops.scores(marsops.confusion_matrix(x, t, 5, 255)).mdice)
    metric.reset()
    assert metric.confmat.sum() == 0
    with pytest.raises(ValueError, match="score"):
        TorchmetricsIoU(5, score="f2")
    with pytest.raises(ValueError, match="classes"):
        TorchmetricsIoU(5, classes=[7])
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.randn(2, 4, 3), torch.zeros(2, 3, dtype=torch.long))


# ---- found by the second review -----------------------------------------------------------------

def test_a_computed_result_does_not_change_with_later_updates():
    metric = marsops.StreamingIoU(3)
    t = torch.tensor([[0, 1, 2, 2]])
    metric.update(t, t)
    result = metric.compute()
    before = (result.matrix.clone(), result.fbeta(1.0).clone())
    metric.update(torch.tensor([[1, 1, 1, 1]]), t)
    metric.reset()
    assert torch.equal(result.matrix, before[0]) and torch.equal(result.fbeta(1.0), before[1])


def test_scores_checks_classes_and_reads_a_generator_once():
    m = torch.tensor([[5, 1, 0], [2, 7, 1], [0, 3, 4]])
    listed = marsops.scores(m, [1, 2])
    generated = marsops.scores(m, (c for c in [1, 2]))
    assert generated.classes == (1, 2)
    for a, b in ((listed.miou, generated.miou), (listed.mdice, generated.mdice),
                 (listed.mean_fbeta(1.0), generated.mean_fbeta(1.0))):
        assert torch.equal(a, b) and torch.isfinite(a)
    for bad in ([-1], [3], [1, 1]):
        with pytest.raises(ValueError, match="subset"):
            marsops.scores(m, bad)
    with pytest.raises(TypeError):
        marsops.scores(m, [1.5])


def test_fbeta_tends_to_recall():
    r = marsops.scores(torch.tensor([[5, 1, 0], [2, 7, 1], [0, 3, 4]]))
    for beta in (float("inf"), 1e200, 1e152, 1e100):  # 1e152: b^2 finite, (1 + b^2) TP would overflow
        torch.testing.assert_close(r.fbeta(beta), r.recall)


def test_an_ignore_index_that_is_a_class_is_left_out_of_the_mean_as_torchmetrics():
    tm = pytest.importorskip("torchmetrics.classification")
    x, t = _batch(c=4, ignore=0)
    t[t == 0] = 1
    t[:, :2] = 0  # the ignored label: some pixels of "class 0", no truth for it
    metric = marsops.StreamingIoU(4, ignore_index=0)
    metric.update(x, t)
    assert metric.classes == (1, 2, 3)
    oracle = tm.MulticlassJaccardIndex(4, ignore_index=0, average="macro")
    oracle.update(x, t)
    torch.testing.assert_close(metric.compute().miou.float(), oracle.compute(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (0, 3)])
def test_per_image_update_of_an_empty_batch_counts_nothing(shape):
    metric = marsops.StreamingIoU(3, per_image=True)
    metric.update(torch.randn(shape), torch.zeros((0,) + shape[2:], dtype=torch.long))
    assert metric.local.sum() == 0 and metric.local_images.sum() == 0


def test_per_image_update_compiles_with_fullgraph():
    x, t = _batch(c=5)
    eager, compiled = marsops.StreamingIoU(5, per_image=True), marsops.StreamingIoU(5, per_image=True)
    eager.update(x, t.clamp_max(4))
    torch.compile(compiled.update, fullgraph=True)(x, t.clamp_max(4))
    assert torch.equal(eager.local_images, compiled.local_images) and torch.equal(eager.local, compiled.local)


@pytest.mark.parametrize("call,error,match", [
    (lambda: marsops.StreamingIoU(3, per_image="no"), TypeError, "True or False"),
    (lambda: marsops.StreamingIoU(3, classes=3), TypeError, "sequence of class indices"),
    (lambda: marsops.StreamingIoU(3, backend="bogus"), ValueError, "unknown backend"),
    (lambda: marsops.flip4_argmax(torch.randn(4, 3, 4, 4), softmax="no"), TypeError, "True or False"),
    (lambda: marsops.confusion_matrix(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), 2**31),
     ValueError, "num_classes must be in"),
])
def test_loose_arguments_are_refused(call, error, match):
    with pytest.raises(error, match=match):
        call()
