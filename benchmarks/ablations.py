"""The report's ablations on the synthetic set, same split and budget (images seen), each a
train.py run with one choice changed from the default recipe:

    python -m benchmarks.ablations [--epochs 15] [--out runs/ablations]

Writes benchmarks/results/ablations_<device>.json and prints a markdown table.
"""
import argparse
import time
from pathlib import Path

import torch

import train

from . import harness

# name -> (flags, epoch multiplier so every run sees the same number of images)
VARIANTS = {
    "default: Multipath UNet, focal, background weight 0, flips": ([], 1),
    "UNet instead of Multipath UNet": (["--model", "unet"], 1),
    "cross-entropy instead of focal": (["--loss", "ce"], 1),
    "background weight 0.05 (inverse frequency) instead of 0": (["--background-weight", "0.05"], 1),
    "no flips (4x the epochs: same images seen)": (["--no-flips"], 4),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", default="runs/ablations", help="each call's runs go to a new OUT/<timestamp>")
    args = parser.parse_args(argv)
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")  # train.py never reuses a run's folder
    rows = []
    for name, (flags, mult) in VARIANTS.items():
        e = args.epochs * mult
        run_name = name.split(":")[0].split(" (")[0].replace(" ", "_")[:40]
        best = train.main([*flags, "--epochs", str(e), "--early-stop", str(6 * mult), "--lr-patience",
                           str(3 * mult), "--no-progress", "--out", str(out), "--name", run_name])
        rows.append({"variant": name, "val mIoU (classes 1-4)": best, "epochs": e})
        print(rows[-1], flush=True)
    print(harness.markdown_table(rows, ["variant", "val mIoU (classes 1-4)", "epochs"]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"saved {harness.save('ablations', device, rows)}")


if __name__ == "__main__":
    main()
