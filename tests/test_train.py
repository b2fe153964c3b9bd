"""train.py end to end on tiny synthetic data: files written, loss falls, kill-and-resume gives
the same state as an uninterrupted run, prediction CSV, bad flags, a 2-process DDP smoke run."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import marsops
import train
from marsops.recipes.mars import checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--synthetic-train", "64", "--synthetic-test", "6", "--width", "4", "--batch-size", "32", "--no-progress",
        "--lr", "3e-3", "--early-stop", "50", "--threads", "1"]


def run(tmp_path, *extra):
    return train.main([*TINY, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "runs"), *extra])


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_end_to_end_writes_every_file_and_the_loss_falls(tmp_path):
    best = run(tmp_path, "--epochs", "4", "--name", "a")
    run_dir = tmp_path / "runs" / "a"
    for name in ("config.json", "metrics.csv", "curves.png", "predictions.png", "confusion.png", "best.pt", "last.pt"):
        assert (run_dir / name).stat().st_size > 0, name
    rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert best == pytest.approx(max(float(r["val_miou"]) for r in rows), abs=1e-6)
    assert json.loads((run_dir / "config.json").read_text())["gamma"] == 0.5
    ckpt = checkpoint.load(run_dir / "best.pt")
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "state", "rng"}


@pytest.fixture
def restore_determinism():
    """--deterministic changes process-wide torch settings; later tests get them back."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2:]


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, restore_determinism):
    run(tmp_path, "--epochs", "3", "--name", "straight", "--deterministic")
    run(tmp_path, "--epochs", "2", "--name", "killed", "--deterministic")  # as if killed after epoch 2
    train.main(["--resume", str(tmp_path / "runs" / "killed"), "--epochs", "3", "--no-progress", "--threads", "1",
                "--deterministic"])
    a = checkpoint.load(tmp_path / "runs" / "straight" / "last.pt")
    b = checkpoint.load(tmp_path / "runs" / "killed" / "last.pt")
    assert a["state"] == b["state"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [r["val_miou"] for r in read_metrics(tmp_path / "runs" / "straight")] == [
        r["val_miou"] for r in read_metrics(tmp_path / "runs" / "killed")]
    # the training metric travels in the checkpoint and continues exactly
    assert a["train_metric"].keys() == b["train_metric"].keys()
    assert torch.equal(a["train_metric"]["matrix"], b["train_metric"]["matrix"])
    assert [r["train_miou"] for r in read_metrics(tmp_path / "runs" / "straight")] == [
        r["train_miou"] for r in read_metrics(tmp_path / "runs" / "killed")]


def test_checkpoints_carry_the_training_metric_and_a_resumed_run_restores_it(tmp_path, capsys):
    run(tmp_path, "--epochs", "1", "--name", "m")
    run_dir = tmp_path / "runs" / "m"
    ckpt = checkpoint.load(run_dir / "last.pt")  # weights_only: the metric's state is tensors and plain values
    metric = marsops.StreamingIoU(train.NUM_CLASSES, classes=train.SCORED_CLASSES)
    metric.load_state_dict(ckpt["train_metric"])
    train_miou = metric.compute().miou.item()
    assert f"{train_miou:.6f}" == read_metrics(run_dir)[-1]["train_miou"]
    capsys.readouterr()
    train.main(["--resume", str(run_dir), "--epochs", "1"])  # nothing left to train: it reports the metric it loaded
    assert f"train mIoU {train_miou:.4f})" in capsys.readouterr().out
    ckpt["train_metric"]["num_classes"] = 4  # a checkpoint whose metric does not fit: a clear error
    torch.save(ckpt, run_dir / "last.pt")
    with pytest.raises(SystemExit, match="training metric does not fit this run.*num_classes 4"):
        train.main(["--resume", str(run_dir), "--epochs", "1"])


def test_predict_writes_the_course_csv(tmp_path):
    run(tmp_path, "--epochs", "1", "--name", "p")
    run_dir = tmp_path / "runs" / "p"
    train.main(["--predict", str(run_dir), "--tta"])
    lines = (run_dir / "submission.csv").read_text().splitlines()
    assert lines[0] == "id," + ",".join(map(str, range(64 * 128)))
    assert len(lines) == 7 and all(len(line.split(",")) == 8193 for line in lines[1:])
    import numpy as np

    assert np.load(run_dir / "predictions.npz")["predictions"].shape == (6, 64, 128)


@pytest.mark.parametrize("flags,match", [
    (["--batch-size", "30"], "multiple of 4"),
    (["--paths", "plain,magic"], "unknown"),
    (["--gamma", "-1"], "gamma"),
    (["--model", "segformer"], "invalid choice"),
])
def test_bad_flags_fail_fast(flags, match, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(flags)
    assert match in capsys.readouterr().err


def test_bad_data_fails_with_a_clear_message(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(SystemExit, match="truncated or corrupt"):
        run(tmp_path, "--data", str(tmp_path / "bad.npz"), "--epochs", "1")


def test_nan_loss_stops_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run(tmp_path, "--epochs", "2", "--name", "nan", "--lr", "1e30")
    assert exc.value.code == 1
    assert "training loss is nan" in capsys.readouterr().out


def test_nan_loss_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    run(tmp_path, "--epochs", "1", "--name", "good")
    run_dir = tmp_path / "runs" / "good"
    before = checkpoint.load(run_dir / "last.pt")

    def diverge(*args, **kwargs):
        raise train.loop.NonFiniteLoss("training loss is nan (batch of 32)")

    monkeypatch.setattr(train.loop, "train_one_epoch", diverge)
    with pytest.raises(SystemExit):
        train.main(["--resume", str(run_dir), "--epochs", "2", "--no-progress"])
    assert "last good checkpoint" in capsys.readouterr().out
    after = checkpoint.load(run_dir / "last.pt")
    assert after["state"]["epoch"] == 1
    for k in before["model"]:
        assert torch.equal(before["model"][k], after["model"][k])


def test_ddp_two_processes_gloo(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    # gloo on CPU whatever the machine has (two processes on one GPU would need gloo too).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), *TINY, "--epochs", "1", "--cache", str(tmp_path / "cache"),
           "--out", str(tmp_path / "runs"), "--name", "ddp", "--device", "cpu"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_metrics(tmp_path / "runs" / "ddp")) == 1


def test_tune_runs_trials_into_a_shared_storage(tmp_path):
    pytest.importorskip("optuna", reason="optuna is the optional 'tune' extra")
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    run(tmp_path, "--epochs", "1", "--tune", "2", "--storage", storage, "--study-name", "s")
    study = optuna.load_study(study_name="s", storage=storage)
    assert len(study.trials) == 2 and all(t.value is not None for t in study.trials)
    assert set(study.best_params) == {"lr", "weight_decay", "gamma", "batch_size", "width"}


def test_batches_pair_up_across_processes_and_evaluation_sees_every_sample():
    from marsops.recipes.mars import loop

    for n, batch, world in ((196, 512, 2), (153, 64, 2), (100, 32, 3), (7, 2, 3)):
        per_rank = [loop.batches(n, batch, torch.Generator().manual_seed(0), rank=r, world=world) for r in range(world)]
        assert len({len(b) for b in per_rank}) == 1 and all(len(b) > 0 for b in per_rank)
        seen = torch.cat([i for b in [loop.shard(n, batch, r, world) for r in range(world)] for i in b])
        assert sorted(seen.tolist()) == list(range(n))
    with pytest.raises(ValueError, match="cannot be shared"):
        loop.batches(1, 4, None, rank=0, world=2)


def test_tune_goes_on_after_a_diverging_trial(tmp_path, monkeypatch):
    pytest.importorskip("optuna", reason="optuna is the optional 'tune' extra")
    import optuna

    real = train.loop.train_one_epoch
    calls = {"n": 0}

    def first_trial_diverges(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise train.loop.NonFiniteLoss("training loss is nan")
        return real(*args, **kwargs)

    monkeypatch.setattr(train.loop, "train_one_epoch", first_trial_diverges)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    run(tmp_path, "--epochs", "1", "--tune", "2", "--storage", storage, "--study-name", "d")
    states = [t.state for t in optuna.load_study(study_name="d", storage=storage).trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]


def test_val_fraction_zero_is_refused(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--val-fraction", "0"])
    assert "--val-fraction" in capsys.readouterr().err


# ---- bad options, bad run folders, bad checkpoints: one clear line each -------------------------

@pytest.mark.parametrize("flags,match", [
    (["--gamma", "nan"], "--gamma"), (["--lr", "inf"], "--lr"), (["--lr", "nan"], "--lr"),
    (["--weight-decay", "-1"], "--weight-decay"), (["--background-weight", "nan"], "--background-weight"),
    (["--background-weight", "-5"], "--background-weight"), (["--lr-factor", "2"], "--lr-factor"),
    (["--lr-factor", "-0.5"], "--lr-factor"), (["--lr-patience", "-1"], "--lr-patience"),
    (["--early-stop", "0"], "--early-stop"), (["--min-repeats", "1"], "--min-repeats"),
    (["--synthetic-train", "-5"], "--synthetic-train"), (["--synthetic-train", "0"], "--synthetic-train"),
    (["--threads", "0"], "--threads"), (["--threads", "-1"], "--threads"), (["--device", "gpu"], "--device"),
    (["--backend", "bogus"], "invalid choice"), (["--tune", "0"], "--tune"),
    (["--storage", "sqlite:///x.db"], "--storage"), (["--predict", "a", "--resume", "a"], "separate modes"),
    (["--predict", "a", "--tune", "3"], "separate modes"), (["--device", "mps"], "--device"),
    (["--device", "meta"], "--device"), (["--device", "cpu:1"], "--device"), (["--seed", str(2**70)], "--seed"),
    (["--device", "cpu", "--backend", "cuda"], "--backend cuda cannot run on --device cpu"),
])
def test_nonsense_values_are_refused(flags, match, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(flags)
    assert match in capsys.readouterr().err


def test_out_and_cache_must_be_folders(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for flag in ("--out", "--cache"):
        for folder in (tmp_path / "file", tmp_path / "file" / "below"):
            with pytest.raises(SystemExit):
                train.parse_args([flag, str(folder)])
            assert "is a file, not a folder" in capsys.readouterr().err


def test_resume_keeps_the_saved_epochs_and_refuses_options_it_cannot_change(tmp_path):
    run(tmp_path, "--epochs", "1", "--name", "r")
    run_dir = tmp_path / "runs" / "r"
    with pytest.raises(SystemExit, match="--lr, --preset cannot be given"):
        train.main(["--resume", str(run_dir), "--lr", "5", "--preset", "report"])
    train.main(["--resume", str(run_dir)])  # no --epochs: the run's own 1, already done; not the preset's 15
    assert [r["epoch"] for r in read_metrics(run_dir)] == ["1"]
    with pytest.raises(SystemExit, match="--epochs cannot be given"):
        train.main(["--predict", str(run_dir), "--epochs", "3"])


def test_a_new_run_does_not_reuse_a_folder_that_holds_one(tmp_path):
    run(tmp_path, "--epochs", "1", "--name", "dup")
    with pytest.raises(SystemExit, match="already holds a run"):
        run(tmp_path, "--epochs", "1", "--name", "dup")
    assert [r["epoch"] for r in read_metrics(tmp_path / "runs" / "dup")] == ["1"]


def test_resume_of_an_early_stopped_run_does_not_train_on(tmp_path):
    run(tmp_path, "--epochs", "2", "--name", "es")
    run_dir = tmp_path / "runs" / "es"
    ckpt = checkpoint.load(run_dir / "last.pt")
    ckpt["state"].update(epoch=2, best_epoch=1)  # epoch 2 did not improve: with --early-stop 1, stopped
    checkpoint.atomic_save(ckpt, run_dir / "last.pt")
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "early_stop": 1}))
    train.main(["--resume", str(run_dir), "--epochs", "5"])
    assert checkpoint.load(run_dir / "last.pt")["state"]["epoch"] == 2
    assert len(read_metrics(run_dir)) == 2


def test_resume_drops_metrics_rows_past_the_checkpoint(tmp_path):
    """A kill between an epoch's metrics row and its last.pt leaves a row the resumed run writes again."""
    run(tmp_path, "--epochs", "1", "--name", "k")
    run_dir = tmp_path / "runs" / "k"
    with open(run_dir / "metrics.csv") as f:
        lines = f.read().splitlines()
    (run_dir / "metrics.csv").write_text("\n".join(lines + ["2" + lines[1][1:]]) + "\n")  # epoch 2's row, no last.pt
    train.main(["--resume", str(run_dir), "--epochs", "2"])
    assert [r["epoch"] for r in read_metrics(run_dir)] == ["1", "2"]


@pytest.mark.parametrize("damage,match", [
    (lambda p: p.write_bytes(p.read_bytes()[:3000]), "unreadable checkpoint"),
    (lambda p: p.write_bytes(b""), "unreadable checkpoint"),
    (lambda p: p.write_bytes(os.urandom(4096)), "unreadable checkpoint|refused"),
    (lambda p: torch.save({"model": {}, "hook": subprocess.Popen}, p), "refused"),  # pickles a class
    (lambda p: torch.save({"model": {}}, p), "not a train.py checkpoint"),
])
def test_a_damaged_checkpoint_is_one_clear_error(tmp_path, damage, match):
    run(tmp_path, "--epochs", "1", "--name", "c")
    run_dir = tmp_path / "runs" / "c"
    damage(run_dir / "last.pt")
    with pytest.raises(SystemExit, match=match):
        train.main(["--resume", str(run_dir), "--epochs", "2"])


def test_a_checkpoint_of_another_model_or_a_corrupt_config_is_one_clear_error(tmp_path):
    run(tmp_path, "--epochs", "1", "--name", "w4")
    run(tmp_path, "--epochs", "1", "--name", "w8", "--width", "8")
    w4, w8 = tmp_path / "runs" / "w4", tmp_path / "runs" / "w8"
    (w8 / "best.pt").write_bytes((w4 / "best.pt").read_bytes())
    with pytest.raises(SystemExit, match="do not fit its multipath_unet of width 8"):
        train.main(["--predict", str(w8)])
    (w4 / "config.json").write_text('{"width": 4,')
    with pytest.raises(SystemExit, match="not a readable run configuration"):
        train.main(["--resume", str(w4), "--epochs", "2"])


def test_data_the_model_cannot_take_or_too_small_to_split_is_refused(tmp_path):
    from marsops import data

    g = np.random.default_rng(0)
    data.save_npz(tmp_path / "odd.npz", g.integers(0, 255, (8, 60, 124)), g.integers(0, 5, (8, 60, 124)))
    with pytest.raises(SystemExit, match="divisible by 8"):
        run(tmp_path, "--data", str(tmp_path / "odd.npz"), "--epochs", "1")
    data.save_npz(tmp_path / "two.npz", g.integers(0, 255, (2, 64, 128)), g.integers(0, 5, (2, 64, 128)))
    with pytest.raises(SystemExit, match="too few for both a training and a validation set"):
        run(tmp_path, "--data", str(tmp_path / "two.npz"), "--epochs", "1")


def test_first_epoch_divergence_says_no_checkpoint_was_written(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(tmp_path, "--epochs", "1", "--name", "inf", "--lr", "1e30")
    out = capsys.readouterr().out
    assert "No checkpoint was written" in out and "last.pt" not in out


def test_resume_checks_the_saved_configuration_too(tmp_path):
    run(tmp_path, "--epochs", "1", "--name", "edited")
    run_dir = tmp_path / "runs" / "edited"
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "gamma": -1.0}))  # edited by hand
    with pytest.raises(SystemExit, match="--gamma must be a finite number"):
        train.main(["--resume", str(run_dir), "--epochs", "2"])


def test_a_run_that_died_in_its_first_epoch_starts_over_under_its_name(tmp_path):
    with pytest.raises(SystemExit):
        run(tmp_path, "--epochs", "1", "--name", "div", "--lr", "1e30")
    run_dir = tmp_path / "runs" / "div"
    with pytest.raises(SystemExit, match="has no checkpoint: it stopped during its first epoch"):
        train.main(["--resume", str(run_dir)])
    run(tmp_path, "--epochs", "1", "--name", "div")
    assert [r["epoch"] for r in read_metrics(run_dir)] == ["1"]
    assert json.loads((run_dir / "config.json").read_text())["lr"] == 3e-3


def test_new_run_folders_are_reserved_and_never_shared(tmp_path):
    first, second = train.new_run_dir(tmp_path, None, "s-trial0"), train.new_run_dir(tmp_path, None, "s-trial0")
    assert (first.name, second.name) == ("s-trial0", "s-trial0-2") and first.is_dir() and second.is_dir()


def test_tune_trials_get_free_folders_and_resume_as_plain_runs(tmp_path, monkeypatch):
    pytest.importorskip("optuna", reason="optuna is the optional 'tune' extra")
    seen = []
    monkeypatch.setattr(train, "train", lambda args, log, run_base: seen.append((args, run_base)) or 0.5)
    for _ in range(2):  # a second call into the same --out: in-memory studies number their trials from 0 again
        run(tmp_path, "--epochs", "1", "--tune", "1")
    assert [base for _, base in seen] == ["marsops-trial0", "marsops-trial0"]
    assert all(a.name is None and a.tune is None and a.storage is None for a, _ in seen)


@pytest.mark.parametrize("key,value", [("model", "foo"), ("lr", None), ("paths", 5), ("device", 3),
                                       ("loss", "hinge"), ("width", "4"), ("no_flips", "yes"),
                                       ("lr_patience", None)])
def test_a_saved_configuration_of_the_wrong_type_or_choice_is_one_clear_error(tmp_path, key, value):
    run(tmp_path, "--epochs", "1", "--name", "cfg")
    run_dir = tmp_path / "runs" / "cfg"
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, key: value}))
    for call in (["--resume", str(run_dir), "--epochs", "2"], ["--predict", str(run_dir)]):
        with pytest.raises(SystemExit, match=f"{key} = .* is not a valid"):
            train.main(call)


def test_resume_with_an_empty_metrics_file_writes_its_header_again(tmp_path):
    run(tmp_path, "--epochs", "1", "--name", "empty")
    run_dir = tmp_path / "runs" / "empty"
    (run_dir / "metrics.csv").write_text("")
    train.main(["--resume", str(run_dir), "--epochs", "2"])
    assert [r["epoch"] for r in read_metrics(run_dir)] == ["2"]


def test_predict_without_test_images_is_one_clear_error(tmp_path):
    train.main([*TINY, "--synthetic-test", "0", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "runs"),
                "--epochs", "1", "--name", "t0"])
    with pytest.raises(SystemExit, match="no test_set images"):
        train.main(["--predict", str(tmp_path / "runs" / "t0")])
