"""Command line for the Mars data:

    python -m marsops.data synth PATH.npz [--n-train 2615 --n-test 1000 --seed 0]
    python -m marsops.data inspect PATH [--grid samples.png --min-repeats 2]
"""
import argparse
import sys
import time

from . import (CLASS_NAMES, DataError, class_shares, find_outliers, inverse_frequency_weights, load,
               write_npz)


def synth(args):
    t0 = time.perf_counter()
    outliers = write_npz(args.path, args.n_train, args.n_test, args.seed)
    print(f"wrote {args.path}: {args.n_train} training + {args.n_test} test images, {len(outliers)} planted "
          f"outliers, in {time.perf_counter() - t0:.1f} s")


def inspect(args):
    data = load(args.path)
    print(f"{args.path}: {len(data.images)} training images {tuple(data.images.shape[1:])}, "
          f"{0 if data.test_images is None else len(data.test_images)} test images")
    report = find_outliers(data.images, data.masks, min_repeats=args.min_repeats)
    print(report.summary())
    kept = data.masks[report.kept]
    shares = class_shares(kept, len(CLASS_NAMES))
    weights = inverse_frequency_weights(kept, len(CLASS_NAMES))
    print("class          share    weight (background 0, inverse frequency)")
    for name, s, w in zip(CLASS_NAMES, shares.tolist(), weights.tolist()):
        print(f"  {name:11s} {100 * s:6.2f} %  {w:.4f}")
    if args.grid:
        from .plots import colour_masks, save_grid

        idx = report.kept[: args.rows]
        images, masks = data.images[idx, 0].numpy(), colour_masks(data.masks[idx].numpy())
        save_grid(args.grid, images, [lambda i: images[i], lambda i: masks[i]], ["image", "mask"], rows=args.rows)
        print(f"saved {args.grid}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m marsops.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synth", help="write a synthetic data set in the course's npz format")
    p.add_argument("path")
    p.add_argument("--n-train", type=int, default=2615)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=synth)
    p = sub.add_parser("inspect", help="class distribution, outliers and a picture of samples")
    p.add_argument("path", help="a course-format npz or a folder with images/ and masks/ PNGs")
    p.add_argument("--grid", help="save a PNG grid of samples with colour-coded masks")
    p.add_argument("--rows", type=int, default=6)
    p.add_argument("--min-repeats", type=int, default=2)
    p.set_defaults(fn=inspect)
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except DataError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
