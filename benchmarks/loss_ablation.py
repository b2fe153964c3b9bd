"""The loss ablation: train.py's recipe trained with each loss for several seeds, the same budget
for all (the same synthetic images, epochs, schedule; no early stopping), and the best
validation IoU of each run: the mean over classes 1-4 and per class, mean and spread over seeds.

    python -m benchmarks.loss_ablation [--seeds 2] [--epochs 8] [--synthetic-train 320]
        [--losses focal,dice_focal,ohem_focal,lovasz,generalized_dice] [--out runs/loss_ablation]

A seed sets the synthetic data, the split and the initial weights; every loss trains on the same
seeds, so the comparison is paired. The default budget (about 245 training images x 4 flips, 8
epochs: about 8k images seen) is sized from train.py's CPU rate on an idle 2-core machine (about 10
ms per image seen, README): about 90 s a run, 15-20 min for 5 losses x 2 seeds. It compares
early training (the CPU preset sees 37k images); raise --epochs / --synthetic-train for more.
Writes benchmarks/results/loss_ablation_<device>.json and .md, and prints the markdown table.
"""
import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

import train
from marsops.recipes.mars import checkpoint
from marsops.recipes.mars import losses as loss_table

from . import harness

LOSSES = ("focal", "dice_focal", "ohem_focal", "lovasz", "generalized_dice")
CLASSES = [name.replace("_", " ") for name in (c[len("iou_"):] for c in train.IOU_COLUMNS)]  # classes 1..4


def best_row(run_dir: Path) -> dict:
    """The metrics.csv row of the run's best validation epoch (best.pt's state says which)."""
    best_epoch = checkpoint.load(run_dir / "best.pt", required=("state",))["state"]["best_epoch"]
    with open(run_dir / "metrics.csv", newline="") as f:
        return next(r for r in csv.DictReader(f) if int(r["epoch"]) == best_epoch)


def spread(values):
    """(mean, min, max, std) of the finite values (NaN: a class never predicted nor present)."""
    kept = [v for v in values if v == v]
    if not kept:
        return float("nan"), float("nan"), float("nan"), float("nan")
    return (statistics.fmean(kept), min(kept), max(kept), statistics.stdev(kept) if len(kept) > 1 else 0.0)


def summarize(loss, runs):
    """One table row: mIoU and per-class IoU, each mean [min-max] over the seeds, and the std."""
    row = {"loss": loss, "seeds": len(runs)}
    columns = [("mIoU 1-4", "val_miou")] + [(name, col) for name, col in zip(CLASSES, train.IOU_COLUMNS)]
    for label, col in columns:
        mean, lo, hi, std = spread([float(r[col]) for r in runs])
        row[label] = mean
        row[f"{label} min-max"] = f"{lo:.3f}-{hi:.3f}"
        row[f"{label} std"] = std
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", default=",".join(LOSSES), help="comma-separated train.py --loss names")
    parser.add_argument("--seeds", type=int, default=2, help="runs per loss: seeds 0 .. SEEDS-1")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run (no early stopping)")
    parser.add_argument("--synthetic-train", type=int, default=320, help="synthetic training images per seed")
    parser.add_argument("--width", type=int, default=8, help="Multipath UNet width (the CPU preset's)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="leave out losses this marsops lacks (default: refuse to start)")
    parser.add_argument("--out", default="runs/loss_ablation", help="each call's runs go to a new OUT/<timestamp>")
    parser.add_argument("train_args", nargs="*", help="more train.py options, after --")
    args = parser.parse_args(argv)
    losses = [name for name in args.losses.split(",") if name]
    unknown = [name for name in losses if name not in loss_table.LOSSES]
    if unknown:
        parser.error(f"unknown losses {unknown}; train.py knows {list(loss_table.LOSSES)}")
    missing = [name for name in losses if not loss_table.available(name)]
    if missing and not args.skip_missing:
        parser.error(f"this marsops lacks {missing} (their functions: "
                     f"{[loss_table.LOSSES[n].function for n in missing]}); pass --skip-missing to run the others")
    losses = [name for name in losses if name not in missing]
    if args.seeds < 1 or args.epochs < 1 or args.synthetic_train < 1 or not losses:
        parser.error("--seeds, --epochs and --synthetic-train must be >= 1, and one loss must be left to run")
    budget = (f"{args.epochs} epochs, {args.synthetic_train} synthetic training images before cleaning and the "
              f"validation split, x4 flips, Multipath UNet width {args.width}, no early stopping"
              + (f", extra train.py options {args.train_args}" if args.train_args else ""))
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")  # train.py never reuses a run's folder
    runs, started = {}, time.perf_counter()
    for loss in losses:
        for seed in range(args.seeds):
            name = f"{loss}-seed{seed}"
            t0 = time.perf_counter()
            train.main(["--loss", loss, "--seed", str(seed), "--epochs", str(args.epochs), "--early-stop",
                        str(args.epochs), "--synthetic-train", str(args.synthetic_train), "--width", str(args.width),
                        "--no-progress", "--out", str(out), "--name", name, *args.train_args])
            row = best_row(out / name)
            runs.setdefault(loss, []).append(row)
            print(f"{name}: best val mIoU {float(row['val_miou']):.4f} at epoch {row['epoch']}, "
                  f"big rocks {float(row[train.IOU_COLUMNS[-1]]):.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = [summarize(loss, r) for loss, r in runs.items()]
    columns = ["loss", "seeds"] + [c for label in ["mIoU 1-4", *CLASSES] for c in (label, f"{label} min-max")]
    columns += ["mIoU 1-4 std", f"{CLASSES[-1]} std"]
    minutes = (time.perf_counter() - started) / 60
    table = (f"Best validation IoU per run (classes 1-4 scored; {CLASSES[-1]} = class 4), mean and min-max over "
             f"{args.seeds} seed(s). Budget per run: {budget}. {sum(map(len, runs.values()))} runs took "
             f"{minutes:.1f} min.\n\n" + harness.markdown_table(rows, columns))
    if missing:
        table += f"\nNot run (missing from this marsops): {', '.join(missing)}\n"
    print(table)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    extra = {"budget": budget, "seeds": args.seeds, "minutes": minutes, "skipped": missing,
             "runs": {loss: [dict(r) for r in rs] for loss, rs in runs.items()}}
    path = harness.save("loss_ablation", device, rows, extra)
    path.with_suffix(".md").write_text(table)
    print(f"saved {path} and {path.with_suffix('.md')}")
    return rows


if __name__ == "__main__":
    main()
