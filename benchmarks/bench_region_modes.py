"""Region losses in the binary and multilabel modes (issue 27), forward + backward, fp32: marsops
against the eager reference, segmentation_models_pytorch's DiceLoss and MONAI's DiceLoss (and
torch.compile of those two), and the multiclass class-map Dice (the fused path the modes left
unchanged) against its dense one-hot form. Time, peak memory, and each target's speedup measured in
the same run: from the rows' medians, and from alternating runs (harness.paired_speedup).

    python -m benchmarks.bench_region_modes [--quick]

Targets (CPU): binary Dice at 256x1x64x128 3x smp DiceLoss(mode="binary"); multilabel Dice at
64x8x64x128 3x MONAI DiceLoss(sigmoid=True). Every candidate computes the same loss (checked
before timing): marsops smooth 1 = smp smooth 0.5 (smp's Dice adds its smooth to I, marsops' to
2I) = MONAI smooth_nr = smooth_dr = 1 with batch=True.
"""
import torch

import marsops
from marsops import reference

from . import harness

SHAPES = harness.sized({"binary 256x1x64x128": (256, 1, 64, 128), "multilabel 64x8x64x128": (64, 8, 64, 128),
                        "multiclass 64x8x64x128": (64, 8, 64, 128)})
# (shape label prefix, baseline impl, target speedup of marsops' compiled backend over it)
TARGETS = [("binary", "smp DiceLoss", 3.0), ("multilabel", "MONAI DiceLoss", 3.0)]


def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def candidates(mode, device, compile_peers):
    """impl -> loss(x, t): the Dice loss over the batch, smooth 1 (see the module docstring)."""
    fns = {}
    if mode == "multiclass":  # t: a class map; the dense rows get its one-hot form
        for b in harness.kernel_backends(device, "region_stats"):
            fns[f"marsops {b} (class map)"] = lambda x, t, b=b: marsops.dice_loss(x, t["map"], backend=b)
        for b in harness.kernel_backends(device, "dense_region_stats"):
            fns[f"marsops {b} (one-hot)"] = lambda x, t, b=b: marsops.dice_loss(x, t["onehot"], backend=b)
        fns["reference (eager, class map)"] = lambda x, t: marsops.dice_loss(x, t["map"], backend="reference")
        try:
            import monai.losses

            monai = monai.losses.DiceLoss(softmax=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
            fns["MONAI DiceLoss (one-hot)"] = lambda x, t: monai(x, t["onehot"])
        except ImportError:
            pass
        return fns
    fns["reference (eager)"] = lambda x, t: marsops.dice_loss(x, t, mode=mode, backend="reference")
    for b in harness.kernel_backends(device, "dense_region_stats"):
        fns[f"marsops {b}"] = lambda x, t, b=b: marsops.dice_loss(x, t, mode=mode, backend=b)
    try:
        from segmentation_models_pytorch.losses import DiceLoss as SmpDice

        smp = SmpDice(mode, from_logits=True, smooth=0.5)
        fns["smp DiceLoss"] = lambda x, t: smp(x, t)
        if compile_peers:
            smp_compiled = _compiled(smp)
            fns["smp DiceLoss (torch.compile)"] = lambda x, t: smp_compiled(x, t)
    except ImportError:
        pass
    try:
        import monai.losses

        monai = monai.losses.DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
        fns["MONAI DiceLoss"] = lambda x, t: monai(x, t)
        if compile_peers:
            monai_compiled = _compiled(monai)
            fns["MONAI DiceLoss (torch.compile)"] = lambda x, t: monai_compiled(x, t)
    except ImportError:
        pass
    return fns


def _inputs(label, shape, device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g).to(device).requires_grad_()
    if label.startswith("multiclass"):
        labels = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g).to(device)
        onehot = torch.nn.functional.one_hot(labels, shape[1]).movedim(-1, 1).float().contiguous()
        return logits, {"map": labels, "onehot": onehot}
    return logits, (torch.rand(shape, generator=g) < 0.3).float().to(device)  # 0/1 masks as float


def _check_same_loss(fns, logits, target):
    """Every candidate gives the first one's value (fp32: rtol 1e-4), else the comparison is void."""
    values = {impl: float(fn(logits, target).detach()) for impl, fn in fns.items()}
    first = next(iter(values.values()))
    bad = {impl: v for impl, v in values.items() if abs(v - first) > 1e-4 * abs(first) + 1e-6}
    if bad:
        raise AssertionError(f"candidates disagree on the loss: {values}")
    return first


def main(argv=None):
    args, device, _ = harness.setup(__doc__, argv)
    repeats = 5 if args.quick else 15
    # torch.compile of the peers: tens of seconds per shape to compile; skipped in smoke mode.
    compile_peers = not harness.smoke()
    rows = []
    for label, shape in SHAPES.items():
        mode = label.split()[0]
        logits, target = _inputs(label, shape, device)
        fns = candidates(mode, device, compile_peers)
        _check_same_loss(fns, logits, target)
        steps = {}
        for impl, fn in fns.items():
            def step(fn=fn):
                fn(logits, target).backward()
                logits.grad = None

            steps[impl] = step
            rows.append(harness.measure(step, device, repeats, shape=label, impl=impl))
        same = [r for r in rows if r["shape"] == label]
        by_impl = {r["impl"]: r.get("ms") for r in same}
        harness.add_speedups(same, "vs eager", by_impl.get("reference (eager)") or by_impl.get(
            "reference (eager, class map)"))
        harness.add_speedups(same, "vs smp", by_impl.get("smp DiceLoss"))
        harness.add_speedups(same, "vs smp compiled", by_impl.get("smp DiceLoss (torch.compile)"))
        harness.add_speedups(same, "vs MONAI", by_impl.get("MONAI DiceLoss") or by_impl.get("MONAI DiceLoss (one-hot)"))
        harness.add_speedups(same, "vs MONAI compiled", by_impl.get("MONAI DiceLoss (torch.compile)"))
        for prefix, base, _ in TARGETS:  # alternating runs for the targets' ratios
            if label.startswith(prefix) and base in steps:
                for r in same:
                    if r["impl"].startswith("marsops") and "ms" in r:
                        r["vs target base (paired)"] = harness.paired_speedup(steps[base], steps[r["impl"]], device,
                                                                              repeats=repeats)
    cols = ["shape", "impl", "ms", "p20", "p80", "vs eager", "vs smp", "vs smp compiled", "vs MONAI",
            "vs MONAI compiled", "vs target base (paired)", "peak MB"]
    if device.type == "cuda":
        cols.append("launches")
    print(f"region losses in the binary / multilabel modes, fwd+bwd, fp32; device {device}")
    print(harness.markdown_table(rows, cols))
    verdicts = []
    backend = "cuda" if device.type == "cuda" else "cpu"
    for prefix, base, target in TARGETS:
        row = next((r for r in rows if r["shape"].startswith(prefix) and r["impl"] == f"marsops {backend}"), None)
        got = None if row is None else row.get("vs target base (paired)")
        median = None if row is None else row.get("vs smp" if base.startswith("smp") else "vs MONAI")
        met = got is not None and got >= target
        verdicts.append({"target": f"{prefix} Dice fwd+bwd vs {base}", "paired": got, "medians": median,
                         "goal": target, "met": met})
        print(f"target: {prefix} Dice vs {base} >= {target}x: "
              + ("n/a" if got is None else f"{got:.2f}x paired ({median:.2f}x from medians): "
                 f"{'met' if met else 'NOT met'}"))
    path = harness.save("region_modes", device, rows, extra={"targets": verdicts})
    print(f"saved {path}")
    return rows


if __name__ == "__main__":
    main()
