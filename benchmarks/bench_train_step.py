"""A whole training step of the recipe: flip4 of 32 images to a batch of 128, Multipath UNet
forward + backward, focal loss, AdamW step and a StreamingIoU update, with marsops' kernels
against the same step with the reference ops.

    python -m benchmarks.bench_train_step [--quick] [--width 32]
"""
import argparse

import torch

import marsops
import model as models

from . import harness

REPORT_WEIGHTS = [0.0, 0.0359, 0.0523, 0.0663, 9.2720]


def make_step(backend, width, device):
    torch.manual_seed(0)
    net = models.MultipathUNet(width=width).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-3)
    crit = marsops.FocalLoss(torch.tensor(REPORT_WEIGHTS, device=device), gamma=0.5, backend=backend)
    metric = marsops.StreamingIoU(5, classes=[1, 2, 3, 4], device=device, backend=backend)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(32, 1, 64, 128, generator=g).to(device)
    masks = torch.randint(0, 5, (32, 64, 128), generator=g).to(device)

    def step():
        x, y = marsops.flip4(images, masks, backend=backend)
        logits = net(x.contiguous(memory_format=torch.channels_last))
        loss = crit(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        metric.update(logits.detach(), y)

    return step


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
        pair = []
        for backend in ("reference", "auto"):
            step = make_step(backend, width, device)
            med, p20, p80 = harness.time_ms(step, device, repeats=repeats, warmup=1)
            peak = harness.peak_extra_mb(step, device)
            label = "reference ops" if backend == "reference" else "marsops kernels (auto)"
            pair.append({"step": f"Multipath UNet w{width}, batch 128", "ops": label, "ms": med, "p20": p20,
                         "p80": p80, "images/s": 128 / (med * 1e-3), "peak MB": peak})
        pair[0]["speedup"], pair[1]["speedup"] = 1.0, pair[0]["ms"] / pair[1]["ms"]
        rows += pair
    print(f"training step; device {device}")
    print(harness.markdown_table(rows, ["step", "ops", "ms", "p20", "p80", "speedup", "images/s", "peak MB"]))
    print(f"saved {harness.save('train_step', device, rows, {'widths': widths})}")
    return rows


if __name__ == "__main__":
    main()
