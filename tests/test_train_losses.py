"""train.py --loss: a tiny run with every loss this marsops has, the table's options reach each
marsops function, the metric is counted for losses that do not count it themselves, resume and
--tune keep the loss, and bad loss options are refused."""
import csv
import json
import math

import pytest
import torch

import marsops
import train
from marsops.recipes.mars import losses as loss_table

TINY = ["--synthetic-train", "64", "--synthetic-test", "6", "--width", "4", "--batch-size", "32", "--no-progress",
        "--lr", "3e-3", "--early-stop", "50", "--threads", "1"]
PRESENT = [name for name in loss_table.LOSSES if loss_table.available(name)]
MISSING = [name for name in loss_table.LOSSES if not loss_table.available(name)]


def run(tmp_path, *extra):
    return train.main([*TINY, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "runs"), *extra])


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One synthetic data set for every run of this module (generating it is most of a tiny run)."""
    path = tmp_path_factory.mktemp("cache")
    train.main([*TINY, "--cache", str(path), "--out", str(path / "warm"), "--epochs", "1"])
    return path


@pytest.mark.parametrize("loss", PRESENT)
def test_a_tiny_run_with_every_loss(tmp_path, cache, loss):
    """One epoch: finite losses, a training mIoU (the metric counted by the loss or the criterion),
    a validation score, and the loss name in the run's configuration."""
    best = train.main([*TINY, "--cache", str(cache), "--out", str(tmp_path / "runs"), "--epochs", "1",
                       "--name", loss, "--loss", loss])
    run_dir = tmp_path / "runs" / loss
    (row,) = read_metrics(run_dir)
    assert math.isfinite(float(row["train_loss"])) and math.isfinite(float(row["val_loss"]))
    assert 0 <= float(row["train_miou"]) <= 1 and 0 <= float(row["val_miou"]) <= 1
    assert best == pytest.approx(float(row["val_miou"]), abs=1e-6)
    assert json.loads((run_dir / "config.json").read_text())["loss"] == loss


def test_every_present_loss_is_tested_and_the_table_names_the_brief_s_losses():
    assert set(loss_table.LOSSES) == {"focal", "ce", "dice", "jaccard", "tversky", "dice_focal", "dice_ce",
                                      "generalized_dice", "ohem_focal", "lovasz"}
    assert not MISSING and set(PRESENT) == set(loss_table.LOSSES)


def criterion_for(argv):
    args = train.parse_args(argv)
    weights = torch.tensor([0.0, 0.0359, 0.0523, 0.0663, 9.2720])
    return args, weights, loss_table.build(args, weights)


@pytest.mark.parametrize("argv,expected", [
    (["--loss", "focal", "--gamma", "1.5"],
     lambda x, t, w: marsops.focal_loss(x, t, w, gamma=1.5)),
    (["--loss", "ce"], lambda x, t, w: torch.nn.functional.cross_entropy(x, t.long(), weight=w)),
    (["--loss", "dice", "--dice-smooth", "0.5"], lambda x, t, w: marsops.dice_loss(x, t, weight=w, smooth=0.5)),
    (["--loss", "dice", "--region-weights", "uniform"], lambda x, t, w: marsops.dice_loss(x, t)),
    (["--loss", "jaccard"], lambda x, t, w: marsops.jaccard_loss(x, t, weight=w)),
    (["--loss", "tversky", "--tversky-alpha", "0.2", "--tversky-beta", "0.8"],
     lambda x, t, w: marsops.tversky_loss(x, t, 0.2, 0.8, weight=w)),
    (["--loss", "dice_focal", "--gamma", "2"],
     lambda x, t, w: marsops.dice_focal_loss(x, t, weight=w, focal_weight=w, gamma=2.0)),
    (["--loss", "dice_ce"], lambda x, t, w: marsops.dice_ce_loss(x, t, weight=w, ce_weight=w)),
    (["--loss", "generalized_dice"], lambda x, t, w: marsops.generalized_dice_loss(x, t)),
    (["--loss", "generalized_dice", "--gdl-weight-type", "simple", "--dice-smooth", "0.5"],
     lambda x, t, w: marsops.generalized_dice_loss(x, t, smooth=0.5, weight_type="simple")),
    (["--loss", "ohem_focal", "--ohem-thresh", "0.6", "--ohem-min-kept", "20"],
     lambda x, t, w: marsops.ohem_focal_loss(x, t, gamma=0.5, thresh=0.6, min_kept=20, weight=w)),
    (["--loss", "lovasz", "--lovasz-per-image"], lambda x, t, w: marsops.lovasz_softmax_loss(x, t, per_image=True)),
])
def test_the_table_passes_the_options_and_class_weights(argv, expected):
    args, weights, criterion = criterion_for(argv)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, 8, generator=g)
    t = torch.randint(0, 5, (2, 8, 8), generator=g).to(torch.uint8)
    torch.testing.assert_close(criterion(x, t), expected(x, t, weights))


@pytest.mark.parametrize("loss", [name for name in PRESENT if name != "focal"])
def test_losses_without_a_fused_metric_update_the_metric_themselves(loss):
    _, _, criterion = criterion_for(["--loss", loss])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 8, 8, generator=g)
    t = torch.randint(0, 5, (2, 8, 8), generator=g).to(torch.uint8)
    metric = marsops.StreamingIoU(5, classes=[1, 2, 3, 4])
    expected = marsops.StreamingIoU(5, classes=[1, 2, 3, 4])
    expected.update(x, t)
    criterion(x, t, confusion=metric)
    assert torch.equal(metric.matrix, expected.matrix) and metric.matrix.sum() == t.numel()


def test_a_loss_this_marsops_lacks_is_refused_by_name(monkeypatch, capsys):
    """A table line whose function marsops does not have (yet): refused when chosen, naming it."""
    monkeypatch.setitem(loss_table.LOSSES, "future", loss_table.Loss("future_loss", lambda a, w: {}))
    with pytest.raises(SystemExit):
        train.parse_args(["--loss", "future"])
    assert "marsops.future_loss" in capsys.readouterr().err
    train.parse_args(["--loss", "dice"])  # the others are unaffected


@pytest.mark.parametrize("flags,match", [
    (["--ohem-thresh", "1.5"], "--ohem-thresh"), (["--ohem-thresh", "nan"], "--ohem-thresh"),
    (["--ohem-min-kept", "-1"], "--ohem-min-kept"), (["--dice-smooth", "-1"], "--dice-smooth"),
    (["--dice-smooth", "inf"], "--dice-smooth"), (["--tversky-alpha", "0", "--tversky-beta", "0"], "not both"),
    (["--tversky-beta", "-1"], "--tversky-beta"), (["--gdl-weight-type", "cube"], "invalid choice"),
    (["--loss", "hinge"], "invalid choice"),
])
def test_bad_loss_options_are_refused(flags, match, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(flags)
    assert match in capsys.readouterr().err


def test_resume_keeps_the_loss_and_its_options(tmp_path, cache):
    out = tmp_path / "runs"
    common = [*TINY, "--cache", str(cache), "--out", str(out)]
    train.main([*common, "--epochs", "1", "--name", "g", "--loss", "generalized_dice", "--gdl-weight-type", "simple"])
    train.main(["--resume", str(out / "g"), "--epochs", "2", "--no-progress", "--threads", "1"])
    assert [int(r["epoch"]) for r in read_metrics(out / "g")] == [1, 2]
    config = json.loads((out / "g" / "config.json").read_text())
    assert config["loss"] == "generalized_dice" and config["gdl_weight_type"] == "simple"
    with pytest.raises(SystemExit, match="--loss"):  # the loss is the run's: not changed on resume
        train.main(["--resume", str(out / "g"), "--epochs", "3", "--loss", "focal"])


def test_resume_of_a_run_saved_before_the_loss_options_existed(tmp_path, cache):
    """A config.json without the new options resumes with their defaults."""
    out = tmp_path / "runs"
    train.main([*TINY, "--cache", str(cache), "--out", str(out), "--epochs", "1", "--name", "old"])
    path = out / "old" / "config.json"
    config = json.loads(path.read_text())
    for key in ("region_weights", "dice_smooth", "tversky_alpha", "tversky_beta", "gdl_weight_type", "ohem_thresh",
                "ohem_min_kept", "lovasz_per_image"):
        del config[key]
    path.write_text(json.dumps(config))
    train.main(["--resume", str(out / "old"), "--epochs", "2", "--no-progress", "--threads", "1"])
    assert len(read_metrics(out / "old")) == 2


def test_tune_with_another_loss(tmp_path, cache):
    pytest.importorskip("optuna", reason="optuna is the optional 'tune' extra")
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    train.main([*TINY, "--cache", str(cache), "--out", str(tmp_path / "runs"), "--epochs", "1", "--tune", "1",
                "--storage", storage, "--study-name", "d", "--loss", "dice_focal"])
    (trial,) = optuna.load_study(study_name="d", storage=storage).trials
    assert trial.value is not None
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "config.json").read_text())["loss"] == "dice_focal"
