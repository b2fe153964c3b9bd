"""OHEM focal loss, forward + backward: marsops (counting, no sort) against the sort-based rule in
plain PyTorch (mmsegmentation's OHEMPixelSampler: sort every valid p_t), eager and torch.compile,
and the float64 reference. Two settings: the issue's defaults (min_kept 100,000 per image: with
64x128 images every pixel but the surest is kept) and a selective one (min_kept 1,000 of 8,192).

    python -m benchmarks.bench_ohem [--quick]
"""
import torch
import torch.nn.functional as F

import marsops

from . import harness

SHAPES = harness.sized({"report 256x5x64x128": (256, 5, 64, 128)})
SETTINGS = {"defaults (thresh 0.7, min_kept 100000)": (0.7, 100_000), "selective (thresh 0.7, min_kept 1000)":
            (0.7, 1000)}
GAMMA = 0.5


def sort_rule(x, t, gamma, thresh, min_kept, ignore_index=-100):
    """OHEM as plain PyTorch does it: p_t, a sort of the valid ones for s[k], the kept mask, and the
    mean focal term over the kept pixels."""
    logp = F.log_softmax(x, 1)
    valid = t != ignore_index
    logpt = logp.gather(1, t.masked_fill(~valid, 0).unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        pt = logpt.exp()
        s = pt[valid].sort().values
        k = min(min_kept * x.shape[0], s.numel() - 1)
        tau = max(thresh, s[k].item()) if s.numel() else thresh
        kept = valid & (pt < tau)
    term = -(1 - logpt.exp()).clamp_min(0) ** gamma * logpt
    return (term * kept).sum() / kept.sum().clamp_min(1)


def candidates(device, thresh, min_kept):
    fns = {"sort rule (eager)": lambda x, t: sort_rule(x, t, GAMMA, thresh, min_kept)}
    compiled = torch.compile(sort_rule)
    fns["sort rule (torch.compile)"] = lambda x, t: compiled(x, t, GAMMA, thresh, min_kept)
    fns["marsops reference (float64)"] = lambda x, t: marsops.ohem_focal_loss(x, t, GAMMA, thresh, min_kept,
                                                                              backend="reference")
    for b in harness.kernel_backends(device, "ohem_select"):
        fns[f"marsops {b}"] = lambda x, t, b=b: marsops.ohem_focal_loss(x, t, GAMMA, thresh, min_kept, backend=b)
    return fns


def main(argv=None):
    args, device, _ = harness.setup(__doc__, argv)
    rows = []
    for label, shape in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(shape, generator=g).to(device).requires_grad_()
        target = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g).to(device)
        for setting, (thresh, min_kept) in SETTINGS.items():
            group = []
            for impl, fn in candidates(device, thresh, min_kept).items():
                def step():
                    fn(logits, target).backward()
                    logits.grad = None

                group.append(harness.measure(step, device, 5 if args.quick else 10, shape=label, setting=setting,
                                             impl=impl))
            harness.add_speedups(group, "vs sort rule", next(r.get("ms") for r in group if r["impl"] ==
                                                             "sort rule (eager)"))
            harness.add_speedups(group, "vs compiled sort rule", next(r.get("ms") for r in group if r["impl"] ==
                                                                      "sort rule (torch.compile)"))
            rows += group
    print(f"OHEM focal loss (gamma {GAMMA}), fwd+bwd, fp32; device {device}")
    print(harness.markdown_table(rows, ["shape", "setting", "impl", "ms", "p20", "p80", "vs sort rule",
                                        "vs compiled sort rule", "peak MB"]))
    path = harness.save("ohem", device, rows)
    print(f"saved {path}")
    return rows


if __name__ == "__main__":
    main()
