"""Lovász-Softmax loss, forward + backward: marsops against the float64 reference and
segmentation_models_pytorch's LovaszLoss (Berman's code), per_image True and False, at the report's
shape. Time, peak memory, and the speedup over smp measured in the same run: from the two rows'
medians, and from alternating runs (harness.paired_speedup: the median of each pair's ratio).

    python -m benchmarks.bench_lovasz [--quick]
"""
import torch

import marsops
from marsops import reference

from . import harness

SHAPES = harness.sized({"report 256x5x64x128": (256, 5, 64, 128)})


def candidates(device, per_image):
    """impl -> loss(x, t) (classes "present", no ignored label: smp's conventions)."""
    fns = {"reference (eager, fp64)": lambda x, t: reference.lovasz_softmax_loss(x, t, per_image=per_image)}
    try:
        from segmentation_models_pytorch.losses import LovaszLoss

        smp = LovaszLoss("multiclass", per_image=per_image)
        fns["smp LovaszLoss"] = lambda x, t: smp(x, t)
    except ImportError:
        pass
    for b in harness.kernel_backends(device, "lovasz_softmax_forward"):
        fns[f"marsops {b}"] = lambda x, t, b=b: marsops.lovasz_softmax_loss(x, t, per_image=per_image, backend=b)
    return fns


def main(argv=None):
    args, device, _ = harness.setup(__doc__, argv)
    rows = []
    for label, shape in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(shape, generator=g).to(device).requires_grad_()
        target = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g).to(device)
        repeats = 3 if args.quick else 5  # smp takes seconds per call here
        for per_image in (True, False):
            steps = {}
            for impl, fn in candidates(device, per_image).items():
                def step(fn=fn):
                    fn(logits, target).backward()
                    logits.grad = None

                steps[impl] = step
                rows.append(harness.measure(step, device, repeats, shape=label, per_image=per_image, impl=impl))
            same = [r for r in rows if r["per_image"] == per_image]
            smp_ms = next((r.get("ms") for r in same if r["impl"] == "smp LovaszLoss"), None)
            harness.add_speedups(same, "vs smp", smp_ms)
            if smp_ms:  # and from alternating runs, robust to a machine whose load drifts
                for r in same:
                    if r["impl"].startswith("marsops") and "ms" in r:
                        r["vs smp (paired)"] = harness.paired_speedup(steps["smp LovaszLoss"], steps[r["impl"]],
                                                                      device, repeats=repeats)
    cols = ["shape", "per_image", "impl", "ms", "p20", "p80", "vs smp", "vs smp (paired)", "peak MB"]
    print(f"Lovász-Softmax loss, fwd+bwd, fp32 logits; device {device}")
    print(harness.markdown_table(rows, cols))
    path = harness.save("lovasz", device, rows)
    print(f"saved {path}")
    return rows


if __name__ == "__main__":
    main()
