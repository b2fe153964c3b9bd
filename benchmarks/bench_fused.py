"""One read of the logits: (a) the focal loss (forward + backward) with the confusion matrix
counted in the same pass, against the loss alone, the loss then confusion_matrix (two passes),
eager PyTorch (log_softmax + nll, argmax, bincount) and torchmetrics; (b) flip TTA evaluation in
one pass (StreamingIoU.update_flip4) against flip4_merge + argmax + confusion_matrix and eager
torch. At the report's shape and a Cityscapes-size one.

    python -m benchmarks.bench_fused [--quick]
"""
import torch

import marsops
from marsops import reference

from . import harness

LOSS_SHAPES = harness.sized({"report 256x5x64x128": (256, 5, 64, 128), "cityscapes 8x19x512x1024": (8, 19, 512, 1024)})
TTA_SHAPES = harness.sized({"report 4x128x5x64x128": (128, 5, 64, 128),
                            "cityscapes 4x2x19x512x1024": (2, 19, 512, 1024)})


def eager_confusion(x, t, c):
    return torch.bincount(t.flatten() * c + x.argmax(1).flatten(), minlength=c * c).view(c, c)


def loss_candidates(device, c):
    """name -> fn(x, t, w, cm): a loss (for backward) and the counts added to cm."""
    fns = {"eager: log_softmax+nll focal, argmax+bincount": lambda x, t, w, cm: (
        cm.add_(eager_confusion(x.detach(), t, c)), reference.focal_loss(x, t, w, 0.5))[1]}
    for b in harness.kernel_backends(device, "focal_loss_forward"):
        fns[f"marsops {b}: loss alone"] = lambda x, t, w, cm, b=b: marsops.focal_loss(x, t, w, 0.5, backend=b)
        fns[f"marsops {b}: loss, then confusion_matrix"] = lambda x, t, w, cm, b=b: (
            cm.add_(marsops.confusion_matrix(x.detach(), t, c, backend=b)),
            marsops.focal_loss(x, t, w, 0.5, backend=b))[1]
        fns[f"marsops {b}: loss with confusion (one pass)"] = lambda x, t, w, cm, b=b: marsops.focal_loss(
            x, t, w, 0.5, backend=b, confusion=cm)
    try:
        from torchmetrics.classification import MulticlassJaccardIndex

        metric = MulticlassJaccardIndex(c, average=None).to(device)
        fns["marsops loss alone + torchmetrics update"] = lambda x, t, w, cm: (
            metric.update(x.detach(), t), marsops.focal_loss(x, t, w, 0.5))[1]
    except ImportError:
        pass
    return fns


def tta_candidates(device, c):
    """name -> fn(outputs, target, cm)."""

    def eager(y, t, cm):
        p = y.softmax(1)
        a, b, cc, d = p.chunk(4)
        merged = (a + b.flip(-1) + cc.flip(-2) + d.flip(-2, -1)) / 4
        cm.add_(eager_confusion(merged, t, c))

    fns = {"eager: softmax, torch.flip, mean, argmax, bincount": eager}
    for b in harness.kernel_backends(device, "views_argmax"):
        fns[f"marsops {b}: flip4_merge + argmax + confusion_matrix"] = lambda y, t, cm, b=b: cm.add_(
            marsops.confusion_matrix(marsops.flip4_merge(y.softmax(1), backend=b).argmax(1), t, c, backend=b))
        metric = marsops.StreamingIoU(c, device=device, backend=b)

        def fused(y, t, cm, metric=metric):
            metric.update_flip4(y, t)

        fns[f"marsops {b}: update_flip4 (one pass)"] = fused
    return fns


def bench_loss(label, shape, device, repeats, bandwidth):
    n, c, h, w = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device).requires_grad_()
    t = torch.randint(0, c, (n, h, w), generator=g).to(device)
    weight = (torch.tensor(harness.REPORT_WEIGHTS) if c == 5 else torch.rand(c, generator=g)).to(device)
    cm = torch.zeros(c, c, dtype=torch.int64, device=device)
    min_bytes = x.numel() * 4 * 2 + t.numel() * t.element_size()  # read logits and labels, write the gradient
    candidates = loss_candidates(device, c)

    def step_of(fn):
        def step():
            fn(x, t, weight, cm).backward()
            x.grad = None

        return step

    rows = [harness.measure_traffic(step_of(fn), device, repeats, min_bytes, bandwidth, part="loss + confusion",
                                    shape=label, impl=name) for name, fn in candidates.items()]
    harness.add_speedups(rows, "vs eager", rows[0].get("ms"))
    for r in rows:
        if "ms" in r:
            alone = r["impl"].split(":")[0] + ": loss alone"
            if alone in candidates and r["impl"].startswith("marsops ") and ":" in r["impl"]:
                # time relative to the loss alone, from alternating runs (harness.paired_speedup)
                r["vs loss alone"] = 1.0 / harness.paired_speedup(step_of(candidates[alone]),
                                                                  step_of(candidates[r["impl"]]), device, repeats)
    return rows


def bench_tta(label, shape, device, repeats, bandwidth):
    n, c, h, w = shape
    g = torch.Generator().manual_seed(0)
    y = torch.randn((4 * n, c, h, w), generator=g).to(device)
    t = torch.randint(0, c, (n, h, w), generator=g).to(device)
    cm = torch.zeros(c, c, dtype=torch.int64, device=device)
    min_bytes = y.numel() * 4 + t.numel() * t.element_size()
    rows = [harness.measure_traffic(lambda: fn(y, t, cm), device, repeats, min_bytes, bandwidth, part="TTA evaluation",
                                    shape=label, impl=name) for name, fn in tta_candidates(device, c).items()]
    harness.add_speedups(rows, "vs eager", rows[0].get("ms"))
    return rows


def main(argv=None):
    args, device, bandwidth = harness.setup(__doc__, argv)
    repeats = 5 if args.quick else 11
    rows = []
    for label, shape in LOSS_SHAPES.items():
        if not (args.quick and not label.startswith("report")):
            rows += bench_loss(label, shape, device, repeats, bandwidth)
    for label, shape in TTA_SHAPES.items():
        if not (args.quick and not label.startswith("report")):
            rows += bench_tta(label, shape, device, repeats, bandwidth)
    cols = ["part", "shape", "impl", "ms", "p20", "p80", "vs eager", "vs loss alone", "GB/s", "% copy bw", "peak MB"]
    if device.type == "cuda":
        cols.append("launches")
    print(f"fused loss + metric and TTA evaluation, fp32; device {device}; copy bandwidth {bandwidth:.1f} GB/s")
    print(harness.markdown_table(rows, cols))
    print(f"saved {harness.save('fused', device, rows, {'copy_bandwidth_gbs': bandwidth})}")
    return rows


if __name__ == "__main__":
    main()
