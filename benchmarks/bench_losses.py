"""Region (Dice, Dice + CE, Generalized Dice) and sigmoid losses, forward + backward: marsops against
the eager reference, torch.compile of the reference, MONAI, segmentation_models_pytorch and
torchvision, at the report's shape and a Cityscapes-size one. Time and peak memory.

    python -m benchmarks.bench_losses [--quick]
"""
import torch

import marsops
from marsops import reference

from . import harness

SHAPES = harness.sized({"report 256x5x64x128": (256, 5, 64, 128), "cityscapes 8x19x512x1024": (8, 19, 512, 1024)})
DICE = (2.0, 0.0, 1.0, 1.0)


def dice_candidates(device, c):
    """name -> loss(x, t) for the softmax Dice loss over the batch (smooth 1) and Dice + CE."""
    ones = torch.ones(c, device=device)
    fns = {
        "dice: reference (eager)": lambda x, t: reference.region_loss(x, t, ones, DICE, 1.0),
        "dice+ce: reference (eager)": lambda x, t: reference.region_loss(x, t, ones, DICE, 1.0, focal_lambda=1.0,
                                                                         focal_reduction="weighted_mean"),
    }
    compiled = torch.compile(reference.region_loss)
    fns["dice: reference (torch.compile)"] = lambda x, t: compiled(x, t, ones, DICE, 1.0)
    fns["dice+ce: reference (torch.compile)"] = lambda x, t: compiled(x, t, ones, DICE, 1.0, focal_lambda=1.0,
                                                                      focal_reduction="weighted_mean")
    for b in harness.kernel_backends(device, "region_stats"):
        fns[f"dice: marsops {b}"] = lambda x, t, b=b: marsops.dice_loss(x, t, backend=b)
        fns[f"dice+ce: marsops {b}"] = lambda x, t, b=b: marsops.dice_ce_loss(x, t, backend=b)
    try:
        import monai.losses

        dice = monai.losses.DiceLoss(softmax=True, to_onehot_y=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
        dice_ce = monai.losses.DiceCELoss(softmax=True, to_onehot_y=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
        fns["dice: MONAI DiceLoss"] = lambda x, t: dice(x, t.unsqueeze(1))
        fns["dice+ce: MONAI DiceCELoss"] = lambda x, t: dice_ce(x, t.unsqueeze(1))
    except ImportError:
        pass
    try:
        from segmentation_models_pytorch.losses import DiceLoss as SmpDice

        smp = SmpDice("multiclass", from_logits=True, smooth=1.0)
        fns["dice: smp DiceLoss"] = lambda x, t: smp(x, t)
    except ImportError:
        pass
    return fns


def gdl_candidates(device):
    """name -> loss(x, t) for the Generalized Dice loss (weights 1/T^2, smooth 1e-5, batch sums)."""
    fns = {"generalized dice: reference (eager)": lambda x, t: reference.generalized_dice_loss(x, t)}
    compiled = torch.compile(reference.generalized_dice_loss)
    fns["generalized dice: reference (torch.compile)"] = lambda x, t: compiled(x, t)
    for b in harness.kernel_backends(device, "region_stats"):
        fns[f"generalized dice: marsops {b}"] = lambda x, t, b=b: marsops.generalized_dice_loss(x, t, backend=b)
    try:
        import monai.losses

        gdl = monai.losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True, batch=True)
        fns["generalized dice: MONAI GeneralizedDiceLoss"] = lambda x, t: gdl(x, t.unsqueeze(1))
    except ImportError:
        pass
    return fns


def sigmoid_candidates(device):
    """name -> loss(x, t) for the sigmoid focal loss (alpha 0.25, gamma 2, mean) of 0/1 masks."""
    fns = {"sigmoid focal: reference (eager)": lambda x, t: reference.sigmoid_focal_loss(x, t, 0.25, 2.0)}
    compiled = torch.compile(reference.sigmoid_focal_loss)
    fns["sigmoid focal: reference (torch.compile)"] = lambda x, t: compiled(x, t, 0.25, 2.0)
    for b in harness.kernel_backends(device, "sigmoid_focal_loss_forward"):
        fns[f"sigmoid focal: marsops {b}"] = lambda x, t, b=b: marsops.sigmoid_focal_loss(x, t, backend=b)
    try:
        from torchvision.ops import sigmoid_focal_loss as tv

        fns["sigmoid focal: torchvision"] = lambda x, t: tv(x, t, reduction="mean")
        tv_compiled = torch.compile(tv)
        fns["sigmoid focal: torchvision (torch.compile)"] = lambda x, t: tv_compiled(x, t, reduction="mean")
    except ImportError:
        pass
    return fns


def bench_shape(label, shape, device, fns, make_target, repeats):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g).to(device).requires_grad_()
    target = make_target(shape, g).to(device)
    rows = []
    for name, fn in fns.items():
        loss_name, impl = name.split(": ", 1)

        def step():
            fn(logits, target).backward()
            logits.grad = None

        rows.append(harness.measure(step, device, repeats, loss=loss_name, shape=label, impl=impl))
    for loss_name in {r["loss"] for r in rows}:
        group = {r["impl"]: r.get("ms") for r in rows if r["loss"] == loss_name}
        eager = group.get("reference (eager)")
        compiled = group.get("reference (torch.compile)")
        same_loss = [r for r in rows if r["loss"] == loss_name]
        harness.add_speedups(same_loss, "vs eager", eager)
        harness.add_speedups(same_loss, "vs compile", compiled)
        harness.add_speedups(same_loss, "vs MONAI", next((ms for impl, ms in group.items() if impl.startswith("MONAI")),
                                                         None))
    return rows


def main(argv=None):
    args, device, _ = harness.setup(__doc__, argv)
    rows = []
    for label, shape in SHAPES.items():
        if args.quick and not label.startswith("report"):
            continue
        repeats = (5 if args.quick else 10) if label.startswith("report") else 3
        c = shape[1]
        rows += bench_shape(label, shape, device, dice_candidates(device, c),
                            lambda s, g: torch.randint(0, s[1], (s[0],) + s[2:], generator=g), repeats)
        rows += bench_shape(label, shape, device, gdl_candidates(device),
                            lambda s, g: torch.randint(0, s[1], (s[0],) + s[2:], generator=g), repeats)
        rows += bench_shape(label, shape, device, sigmoid_candidates(device),
                            lambda s, g: torch.randint(0, 2, s, generator=g).float(), repeats)
    cols = ["loss", "shape", "impl", "ms", "p20", "p80", "vs eager", "vs compile", "vs MONAI", "peak MB"]
    if device.type == "cuda":
        cols.append("launches")
    print(f"region and sigmoid losses, fwd+bwd, fp32; device {device}")
    print(harness.markdown_table(rows, cols))
    path = harness.save("losses", device, rows)
    print(f"saved {path}")
    return rows


if __name__ == "__main__":
    main()
