"""A whole training step of the recipe, as train.py runs it (marsops/recipes/mars/loop.py's
make_step): flip4 of 32 images to a batch of 128, Multipath UNet forward + backward, the focal
loss counting the training confusion matrix in the same pass, and an AdamW step; marsops' kernels
against the same step with the reference ops, and with marsops fed NCHW copies of the model's channels_last logits
(what the kernels did before they read channels_last in place). Also counts the host reads
(synchronisations on a GPU) per step.

    python -m benchmarks.bench_train_step [--quick] [--width 32]
"""
import argparse

import torch

import marsops
from marsops import models
from marsops.recipes.mars import loop

from . import harness

# The images of one step before flip4 (a batch of 128 after it), and of the host-sync count's epoch.
STEP_IMAGES, EPOCH_IMAGES = harness.sized({"step": (32, 1, 64, 128), "epoch": (64, 1, 64, 128)}).values()


def make_step(backend, width, device, nchw_logits=False):
    torch.manual_seed(0)
    net = models.MultipathUNet(width=width).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-3)
    crit = marsops.FocalLoss(torch.tensor(harness.REPORT_WEIGHTS, device=device), gamma=0.5, backend=backend)
    if nchw_logits:
        focal = crit
        crit = lambda logits, y, **kw: focal(logits.contiguous(), y, **kw)  # noqa: E731
    metric = marsops.StreamingIoU(5, classes=[1, 2, 3, 4], device=device, backend=backend)
    train_step = loop.make_step(net, crit, opt, device, metric=metric)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(STEP_IMAGES, generator=g).to(device)
    masks = torch.randint(0, 5, (STEP_IMAGES[0],) + STEP_IMAGES[2:], generator=g).to(device)

    def step():
        x, y = marsops.flip4(images, masks, backend=backend)
        return train_step(x.contiguous(memory_format=torch.channels_last), y)

    return step


def host_syncs_per_step(backend, width, device, batch=16):
    """Host reads per step of train.py's epoch loop (the optimizer's host-side step counters not
    counted), over an epoch of EPOCH_IMAGES in batches of `batch`."""
    torch.manual_seed(0)
    net = models.MultipathUNet(width=width).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    crit = marsops.FocalLoss(torch.tensor(harness.REPORT_WEIGHTS, device=device), gamma=0.5, backend=backend)
    metric = marsops.StreamingIoU(5, device=device, backend=backend)
    step = loop.make_step(net, crit, opt, device, metric=metric)
    images = torch.rand(EPOCH_IMAGES, device=device)
    masks = torch.randint(0, 5, (EPOCH_IMAGES[0],) + EPOCH_IMAGES[2:], device=device)
    with harness.HostReads() as reads:
        loop.train_one_epoch(net, step, images, masks, batch, torch.Generator().manual_seed(0), device)
    return reads.device_reads() / -(-EPOCH_IMAGES[0] // batch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="width 8, fewer repeats")
    parser.add_argument("--width", type=int, action="append",
                        help="model width (repeatable); default 8 (train.py's CPU preset) and 32 (the report)")
    args = parser.parse_args(argv)
    device = harness.device_from_env()
    widths = args.width or ([8] if args.quick else [8, 32])
    repeats = 3 if args.quick else 5
    rows = []
    for width in widths:
        group = []
        for backend, nchw, label in (("reference", False, "reference ops"),
                                     ("auto", True, "marsops kernels (auto), logits copied to NCHW"),
                                     ("auto", False, "marsops kernels (auto)")):
            step = make_step(backend, width, device, nchw_logits=nchw)
            med, p20, p80 = harness.time_ms(step, device, repeats=repeats, warmup=1)
            peak = harness.peak_extra_mb(step, device)
            group.append({"step": f"Multipath UNet w{width}, batch 128", "ops": label, "ms": med, "p20": p20,
                          "p80": p80, "images/s": 128 / (med * 1e-3), "peak MB": peak})
        syncs = {b: host_syncs_per_step(b, width, device) for b in ("reference", "auto")}
        for row in group:
            row["speedup"] = group[0]["ms"] / row["ms"]
            row["host syncs/step"] = syncs["reference" if row is group[0] else "auto"]
        rows += group
    print(f"training step; device {device}")
    print(harness.markdown_table(rows, ["step", "ops", "ms", "p20", "p80", "speedup", "images/s", "peak MB",
                                        "host syncs/step"]))
    print(f"saved {harness.save('train_step', device, rows, {'widths': widths})}")
    return rows


if __name__ == "__main__":
    main()
