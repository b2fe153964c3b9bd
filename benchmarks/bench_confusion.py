"""Confusion matrix from logits (argmax fused): every available backend against eager
argmax + bincount, torch.compile of it and torchmetrics, at the report's batch and a large one;
eager and marsops also on channels_last (NHWC) logits.

    python -m benchmarks.bench_confusion [--quick]
"""
import torch

import marsops

from . import harness
from .bench_focal import LAYOUTS, compare_layouts

SHAPES = harness.sized({"report 256x5x64x128": (256, 5, 64, 128), "large 8x19x512x1024": (8, 19, 512, 1024)})


def eager(x, t, c):
    return torch.bincount(t.flatten() * c + x.argmax(1).flatten(), minlength=c * c).view(c, c)


def candidates(device, num_classes):
    fns = {"eager argmax+bincount": eager}
    compiled = torch.compile(eager, dynamic=False)
    fns["torch.compile(argmax+bincount)"] = compiled
    for b in harness.kernel_backends(device, "confusion_matrix"):
        fns[f"marsops {b}"] = lambda x, t, c, b=b: marsops.confusion_matrix(x, t, c, backend=b)
    try:
        from torchmetrics.classification import MulticlassJaccardIndex

        metric = MulticlassJaccardIndex(num_classes, average=None).to(device)

        def tm(x, t, c):
            metric.update(x, t)
            return metric.confmat

        fns["torchmetrics MulticlassJaccardIndex.update"] = tm
    except ImportError:
        pass
    return fns


def main(argv=None):
    args, device, bandwidth = harness.setup(__doc__, argv)
    rows = []
    for label, (n, c, h, w) in SHAPES.items():
        if args.quick and not label.startswith("report"):
            continue
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, h, w, generator=g).to(device)
        t = torch.randint(0, c, (n, h, w), generator=g).to(device)
        bytes_read = x.numel() * 4 + t.numel() * 8
        fns = candidates(device, c)
        for layout, memory_format in LAYOUTS.items():
            xl = x.contiguous(memory_format=memory_format)
            clone_bw = harness.clone_bandwidth_gbs(xl, device)  # of these logits, in this run
            shape_rows = [harness.measure_traffic(lambda: fn(xl, t, c), device, 5 if args.quick else 11, bytes_read,
                                                  bandwidth, clone_bw, shape=label, layout=layout, impl=name)
                          for name, fn in fns.items()
                          if layout == "NCHW" or name.startswith("eager") or name.startswith("marsops")]
            harness.add_speedups(shape_rows, "vs eager", shape_rows[0].get("ms"))
            rows += shape_rows

    def step_on(impl, label, layout):
        n, c, h, w = SHAPES[label]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, h, w, generator=g).to(device).contiguous(memory_format=LAYOUTS[layout])
        t = torch.randint(0, c, (n, h, w), generator=g).to(device)
        fn = candidates(device, c)[impl]
        return lambda: fn(x, t, c)

    compare_layouts(rows, step_on, device, 7 if args.quick else 15)
    print(f"confusion matrix from fp32 logits; device {device}; copy bandwidth {bandwidth:.1f} GB/s")
    print(harness.markdown_table(rows, ["shape", "layout", "impl", "ms", "p20", "p80", "vs eager", "vs NCHW", "GB/s",
                                        "% copy bw", "% clone bw", "peak MB"]))
    print(f"saved {harness.save('confusion', device, rows, {'copy_bandwidth_gbs': bandwidth})}")
    return rows


if __name__ == "__main__":
    main()
