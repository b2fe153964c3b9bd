"""benchmarks/loss_ablation.py end to end at a tiny budget: the table, the JSON and markdown files,
the best epoch's per-class IoU read back from the run; a loss marsops lacks is refused by name."""
import json

import pytest

from benchmarks import harness, loss_ablation
from marsops.recipes.mars import losses as loss_table


def test_a_tiny_ablation_writes_its_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    rows = loss_ablation.main(["--losses", "generalized_dice", "--seeds", "1", "--epochs", "1", "--synthetic-train",
                               "64", "--width", "4", "--out", str(tmp_path / "runs"), "--", "--cache",
                               str(tmp_path / "cache"), "--threads", "1", "--batch-size", "32"])
    (row,) = rows
    assert row["loss"] == "generalized_dice" and row["seeds"] == 1
    assert 0 <= row["mIoU 1-4"] <= 1 and "big rocks" in row
    saved = json.loads(next((tmp_path / "results").glob("loss_ablation_*.json")).read_text())
    assert "1 epochs" in saved["budget"] and len(saved["runs"]["generalized_dice"]) == 1
    assert "| generalized_dice | 1 |" in next((tmp_path / "results").glob("loss_ablation_*.md")).read_text()
    assert "Budget per run" in capsys.readouterr().out


def test_missing_losses_are_refused_unless_skipped(monkeypatch, capsys):
    monkeypatch.setitem(loss_table.LOSSES, "future", loss_table.Loss("future_loss", lambda a, w: {}))
    with pytest.raises(SystemExit):
        loss_ablation.main(["--losses", "focal,future"])
    err = capsys.readouterr().err
    assert "future" in err and "--skip-missing" in err
    with pytest.raises(SystemExit):
        loss_ablation.main(["--losses", "focal,hinge"])
    assert "unknown losses" in capsys.readouterr().err
