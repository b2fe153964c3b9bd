"""Focal loss forward+backward: every available backend against the eager reference,
torch.compile of the reference and peer libraries, at the report's batch and a large one; the
reference and marsops also on channels_last (NHWC) logits, as a channels_last model returns them.

    python -m benchmarks.bench_focal [--quick]
"""
import torch

import marsops
from marsops import reference

from . import harness

SHAPES = harness.sized({"report 256x5x64x128": (256, 5, 64, 128), "large 8x19x512x1024": (8, 19, 512, 1024)})


def candidates(device):
    """name -> loss(logits, target, weight) for everything that can run here."""
    fns = {"reference (eager)": lambda x, t, w: reference.focal_loss(x, t, w, 0.5, -100, "mean")}
    compiled = torch.compile(reference.focal_loss)
    fns["reference (torch.compile)"] = lambda x, t, w: compiled(x, t, w, 0.5, -100, "mean")
    for b in harness.kernel_backends(device, "focal_loss_forward"):
        fns[f"marsops {b}"] = lambda x, t, w, b=b: marsops.focal_loss(x, t, w, 0.5, backend=b)
    try:
        import kornia.losses

        # kornia's alpha is a scalar balance factor, not per-class weights: timed unweighted.
        fns["kornia focal_loss (unweighted)"] = lambda x, t, w: kornia.losses.focal_loss(
            x, t, alpha=None, gamma=0.5, reduction="mean")
    except ImportError:
        pass
    try:
        from segmentation_models_pytorch.losses import FocalLoss as SmpFocal

        smp = SmpFocal("multiclass", gamma=0.5)
        fns["smp FocalLoss (unweighted)"] = lambda x, t, w: smp(x, t)
    except ImportError:
        pass
    return fns


LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}


def nhwc_candidates(fns):
    """What is also timed on NHWC logits: the eager reference and marsops."""
    return {k: v for k, v in fns.items() if k == "reference (eager)" or k.startswith("marsops")}


def inputs(shape, device, layout="NCHW"):
    g = torch.Generator().manual_seed(0)
    n, c, h, w_ = shape
    logits = torch.randn(shape, generator=g).to(device).contiguous(memory_format=LAYOUTS[layout]).requires_grad_()
    target = torch.randint(0, c, (n, h, w_), generator=g).to(device)
    weight = (torch.tensor(harness.REPORT_WEIGHTS) if c == 5 else torch.rand(c, generator=g)).to(device)
    return logits, target, weight


def bench_shape(label, shape, device, fns, repeats, bandwidth, layout="NCHW"):
    logits, target, weight = inputs(shape, device, layout)
    min_bytes = logits.numel() * 4 * 2 + target.numel() * target.element_size()  # read x, y; write grad
    clone_bw = harness.clone_bandwidth_gbs(logits, device)  # of these logits, in this run
    rows = []
    for name, fn in fns.items():
        def step():
            fn(logits, target, weight).backward()
            logits.grad = None

        row = harness.measure_traffic(step, device, repeats, min_bytes, bandwidth, clone_bw, shape=label,
                                      layout=layout, impl=name)
        if "ms" in row:
            row["grad MB"] = logits.numel() * 4 / 2**20
        rows.append(row)
    base = {r["impl"]: r.get("ms") for r in rows}
    harness.add_speedups(rows, "vs eager", base.get("reference (eager)"))
    harness.add_speedups(rows, "vs compile", base.get("reference (torch.compile)"))
    return rows


def compare_layouts(rows, step_on, device, repeats):
    """'vs NCHW' of every NHWC row: its speed relative to the same impl on NCHW logits of the same
    shape, timed alternately (harness.paired_speedup), not from the two rows' separate timings.
    step_on(impl, shape_label, layout) -> the row's timed call."""
    for r in rows:
        if r.get("layout") == "NHWC" and "ms" in r:
            r["vs NCHW"] = harness.paired_speedup(step_on(r["impl"], r["shape"], "NCHW"),
                                                  step_on(r["impl"], r["shape"], "NHWC"), device, repeats)


def main(argv=None):
    args, device, bandwidth = harness.setup(__doc__, argv)
    fns = candidates(device)
    rows = []
    for label, shape in SHAPES.items():
        if args.quick and not label.startswith("report"):
            continue
        repeats = 5 if args.quick else 15
        rows += bench_shape(label, shape, device, fns, repeats, bandwidth)
        rows += bench_shape(label, shape, device, nhwc_candidates(fns), repeats, bandwidth, layout="NHWC")

    def step_on(impl, label, layout):
        logits, target, weight = inputs(SHAPES[label], device, layout)

        def step():
            fns[impl](logits, target, weight).backward()
            logits.grad = None

        return step

    compare_layouts(rows, step_on, device, 7 if args.quick else 15)
    cols = ["shape", "layout", "impl", "ms", "p20", "p80", "vs eager", "vs compile", "vs NCHW", "GB/s", "% copy bw",
            "% clone bw", "peak MB", "grad MB"]
    print(f"focal loss fwd+bwd, fp32, gamma 0.5, mean; device {device}; copy bandwidth {bandwidth:.1f} GB/s")
    print(harness.markdown_table(rows, cols))
    path = harness.save("focal", device, rows, {"copy_bandwidth_gbs": bandwidth})
    print(f"saved {path}")
    return rows


if __name__ == "__main__":
    main()
