"""Every benchmark, one report:

    python -m benchmarks [--quick] [--readme]
    python -m benchmarks --smoke        every script at tiny sizes, results in a temporary folder (CI)

Runs the focal-loss, confusion-matrix, roofline (share of copy bandwidth), flip, fused loss+metric /
TTA, region / sigmoid loss, region modes (binary / multilabel) and training-step benchmarks, writes
benchmarks/results/report_<cpu|gpu>.md (machine, tables, shortfalls against the targets) and a
bar chart of the speedups (speedups_<cpu|gpu>.png); with --readme, replaces the README's
performance section with the report.
"""
import argparse
import os
import re
import tempfile
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
# Targets from the issues, for the report's shapes on the CPU.
TARGETS = [("focal fwd+bwd vs eager", 4.0), ("focal fwd+bwd vs torch.compile", 2.3),
           ("confusion from logits vs eager argmax+bincount", 20.0), ("flip4 vs cat of flips", 2.0),
           ("training step (width 8, train.py's CPU preset) vs reference ops", 1.0),
           ("focal fwd+bwd on NHWC vs NCHW logits", 1.0), ("confusion on NHWC vs NCHW logits", 1.0),
           ("OHEM focal fwd+bwd vs the sort rule (eager)", 5.0),
           ("Lovász per_image fwd+bwd vs smp LovaszLoss", 3.0),
           ("binary Dice fwd+bwd vs smp DiceLoss", 3.0), ("multilabel Dice fwd+bwd vs MONAI DiceLoss", 3.0)]


def _pick(rows, impl, shape_prefix="report", key="ms", **match):
    for r in rows:
        if r.get("impl", r.get("ops")) == impl and str(r.get("shape", r.get("step", ""))).startswith(shape_prefix) \
                and all(r.get(k) == v for k, v in match.items()) and key in r:
            return r[key]
    return None


def speedups(focal, confusion, flip, step, ohem, lovasz, backend, region_modes=()):
    impl = f"marsops {backend}"
    return {
        TARGETS[0][0]: _pick(focal, impl, key="vs eager"),
        TARGETS[1][0]: _pick(focal, impl, key="vs compile"),
        TARGETS[2][0]: _pick(confusion, impl, key="vs eager"),
        TARGETS[3][0]: _pick(flip, impl, key="speedup", op="flip4"),
        TARGETS[4][0]: _pick(step, "marsops kernels (auto)", shape_prefix="Multipath UNet w8", key="speedup"),
        TARGETS[5][0]: _pick(focal, impl, key="vs NCHW", layout="NHWC"),
        TARGETS[6][0]: _pick(confusion, impl, key="vs NCHW", layout="NHWC"),
        # the slower of its two settings
        TARGETS[7][0]: min(filter(None, (_pick(ohem, impl, key="vs sort rule", setting=s) for s in
                                         {r["setting"] for r in ohem})), default=None),
        TARGETS[8][0]: _pick(lovasz, impl, key="vs smp", per_image=True),
        TARGETS[9][0]: _pick(region_modes, impl, shape_prefix="binary", key="vs target base (paired)"),
        TARGETS[10][0]: _pick(region_modes, impl, shape_prefix="multilabel", key="vs target base (paired)"),
    }


def chart(values, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in values.items() if v]
    fig, ax = plt.subplots(figsize=(10, 3.4))
    bars = ax.barh(names, [values[n] for n in names], color="tab:orange")
    targets = dict(TARGETS)
    for name, bar in zip(names, bars):  # the measured ones only: a missing value has no bar
        target = targets[name]
        ax.plot([target, target], [bar.get_y(), bar.get_y() + bar.get_height()], color="k", lw=2)
    ax.bar_label(bars, fmt="%.1fx", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("speedup (black tick: target)")
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="report shapes only, fewer repeats, small model")
    parser.add_argument("--readme", action="store_true", help="write the report into README.md")
    parser.add_argument("--smoke", action="store_true",
                        help="check that every benchmark runs: tiny sizes, two runs each, no README, results in a "
                             "temporary folder unless MARSOPS_BENCH_RESULTS names one (harness.smoke)")
    args = parser.parse_args(argv)
    if args.smoke:
        if args.readme:
            parser.error("--smoke measures nothing worth a README: drop --readme")
        os.environ["MARSOPS_BENCH_SMOKE"] = "1"
        os.environ.setdefault("MARSOPS_BENCH_RESULTS", tempfile.mkdtemp(prefix="marsops-bench-smoke-"))
    # Imported here: in smoke mode their shapes are sized when they load.
    from . import (bench_confusion, bench_flip, bench_focal, bench_fused, bench_losses, bench_lovasz, bench_ohem,
                   bench_region_modes, bench_roofline, bench_train_step, harness)

    flags = ["--quick"] if args.quick else []
    device = harness.device_from_env()
    tag = "gpu" if device.type == "cuda" else "cpu"
    focal = bench_focal.main(flags)
    confusion = bench_confusion.main(flags)
    roofline = bench_roofline.main(flags)
    flip = bench_flip.main(flags)
    fused = bench_fused.main(flags)
    losses = bench_losses.main(flags)
    ohem = bench_ohem.main(flags)
    lovasz = bench_lovasz.main(flags)
    region_modes = bench_region_modes.main(flags)
    step = bench_train_step.main(flags)
    backend = "cuda" if device.type == "cuda" else "cpu"
    ups = speedups(focal, confusion, flip, step, ohem, lovasz, backend, region_modes)
    m = harness.machine(device)
    where = m.get("gpu") or f"{m['cpu']}, {m['threads']} threads ({m['cpu_capability']})"
    lines = [f"Measured on {where}, torch {m['torch']}{' (quick mode)' if args.quick else ''}.", "",
             "| target (report's shapes) | measured | target | met |", "|---|---|---|---|"]
    for name, target in TARGETS:
        got = ups[name]
        lines.append(f"| {name} | {got:.2f}x | {target}x | {'yes' if got and got >= target else 'NO'} |"
                     if got else f"| {name} | n/a | {target}x | n/a |")
    gpu = ["launches"] if device.type == "cuda" else []  # kernels + memsets + copies per call
    sections = [("Focal loss, forward + backward (fp32, gamma 0.5, report weights, mean)", focal,
                 ["shape", "layout", "impl", "ms", "p20", "p80", "vs eager", "vs compile", "vs NCHW", "GB/s",
                  "% copy bw", "% clone bw", "peak MB"] + gpu),
                ("Confusion matrix from logits", confusion,
                 ["shape", "layout", "impl", "ms", "p20", "p80", "vs eager", "vs NCHW", "GB/s", "% copy bw", "% clone bw",
                  "peak MB"] + gpu),
                ("Memory roofline of the fused kernels (issue 26): share of the bandwidth of x.clone() and of "
                 "x.copy_ on the same logits, timed in the same interleaved rounds", roofline, bench_roofline.COLUMNS),
                ("Flips (fp32 images + int64 masks)", flip,
                 ["op", "shape", "impl", "ms", "p20", "p80", "speedup", "GB/s", "% copy bw", "peak MB"] + gpu),
                ("One read of the logits: loss + confusion counts, and flip-TTA evaluation", fused,
                 ["part", "shape", "impl", "ms", "p20", "p80", "vs eager", "vs loss alone", "GB/s", "peak MB"] + gpu),
                ("Region and sigmoid losses, forward + backward (fp32)", losses,
                 ["loss", "shape", "impl", "ms", "p20", "p80", "vs eager", "vs compile", "peak MB"] + gpu),
                ("OHEM focal loss, forward + backward (fp32, gamma 0.5)", ohem,
                 ["setting", "impl", "ms", "p20", "p80", "vs sort rule", "vs compiled sort rule", "peak MB"] + gpu),
                ("Lovász-Softmax loss, forward + backward (fp32)", lovasz,
                 ["shape", "per_image", "impl", "ms", "p20", "p80", "vs smp", "vs smp (paired)", "peak MB"]),
                ("Region losses, binary / multilabel modes, forward + backward (fp32)", region_modes,
                 ["shape", "impl", "ms", "p20", "p80", "vs eager", "vs smp", "vs smp compiled", "vs MONAI",
                  "vs MONAI compiled", "vs target base (paired)", "peak MB"] + gpu),
                ("Training step", step, ["step", "ops", "ms", "p20", "p80", "speedup", "images/s", "peak MB",
                                         "host syncs/step"])]
    for title, rows, cols in sections:
        lines += ["", f"**{title}**", "", harness.markdown_table(rows, cols).rstrip()]
    lines += ["", f"![speedups](benchmarks/results/speedups_{tag}.png)"]
    report = "\n".join(lines) + "\n"
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    (harness.RESULTS / f"report_{tag}.md").write_text(report)
    chart(ups, harness.RESULTS / f"speedups_{tag}.png", f"marsops speedups on {where}")
    print(report)
    if args.readme:
        text = README.read_text()
        start, end = f"<!-- benchmarks:{tag}:start -->", f"<!-- benchmarks:{tag}:end -->"
        if start not in text:
            raise SystemExit(f"README.md has no {start} marker")
        README.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{report}{end}", text,
                                 flags=re.S))
        print(f"updated {README}")


if __name__ == "__main__":
    main()
