"""marsops in a MONAI project: a 3-D UNet trained on volumes with ``marsops.dice_ce_loss``,
every flip and the in-plane transpose drawn per sample by ``marsops.random_flip``, and scored
with and without dihedral test-time augmentation (``marsops.d4`` + ``marsops.d4_argmax``) by
``marsops.StreamingIoU``.

    pip install monai                 # in the README's ".[dev]" install already
    python examples/monai_unet3d.py [--steps 40]

The volumes are synthetic (a bright ellipsoid, class 1, holding a darker blob, class 2, in noise),
so nothing is downloaded.
"""
import argparse
import time

import torch
from monai.networks.nets import UNet

import marsops

NUM_CLASSES = 3


def volumes(n: int, size=(16, 32, 32), seed: int = 0):
    """(images (n, 1, D, H, W) float, labels (n, D, H, W) int64): an ellipsoid with a blob inside."""
    g = torch.Generator().manual_seed(seed)
    d, h, w = size
    zz, yy, xx = torch.meshgrid(torch.linspace(-1, 1, d), torch.linspace(-1, 1, h), torch.linspace(-1, 1, w),
                                indexing="ij")
    labels = torch.zeros(n, d, h, w, dtype=torch.int64)
    for i in range(n):
        centre = (torch.rand(3, generator=g) - 0.5) * 0.6
        radii = 0.35 + torch.rand(3, generator=g) * 0.3
        body = (((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
                + ((xx - centre[2]) / radii[2]) ** 2) < 1
        spot = centre + (torch.rand(3, generator=g) - 0.5) * radii
        blob = ((zz - spot[0]) ** 2 + (yy - spot[1]) ** 2 + (xx - spot[2]) ** 2) < (0.55 * radii.min()) ** 2
        labels[i][body] = 1
        labels[i][body & blob] = 2
    intensity = torch.tensor([0.0, 1.0, 0.4])[labels]
    images = intensity + 0.35 * torch.randn(labels.shape, generator=g)
    return images.unsqueeze(1), labels


def main() -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()

    train_x, train_y = volumes(32, seed=0)
    val_x, val_y = volumes(8, seed=1)
    model = UNet(spatial_dims=3, in_channels=1, out_channels=NUM_CLASSES, channels=(8, 16, 32), strides=(2, 2),
                 num_res_units=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)

    model.train()
    for step in range(args.steps):
        pick = torch.randint(0, len(train_x), (args.batch_size,), generator=generator)
        # Per sample: left-right, up-down and depth flips and the H/W transpose, each with p = 0.5
        # (image and label alike): the volume's 16 axis-aligned symmetries that keep D first.
        x, y, _ = marsops.random_flip(train_x[pick], train_y[pick], p_h=0.5, p_v=0.5, p_d=0.5, p_t=0.5,
                                      generator=generator)
        loss = marsops.dice_ce_loss(model(x), y)  # MONAI DiceCELoss(softmax=True, batch=True), fused
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")

    plain = marsops.StreamingIoU(NUM_CLASSES, classes=[1, 2])
    tta = marsops.StreamingIoU(NUM_CLASSES, classes=[1, 2])
    model.eval()
    with torch.no_grad():
        for x, y in zip(val_x.split(args.batch_size), val_y.split(args.batch_size)):
            plain.update(model(x), y)
            views = model(marsops.d4(x)[0])  # the 8 in-plane symmetries of each volume: (8N, C, D, H, W)
            tta.update(marsops.d4_argmax(views), y)  # undone, softmax-averaged and argmaxed in one pass
    for name, metric in (("plain", plain), ("d4 TTA", tta)):
        print(f"{name:7s} IoU per class:", " ".join(f"{v:.3f}" for v in metric.compute().iou.tolist()))
    print(f"MONAI 3-D UNet + marsops.dice_ce_loss, {args.steps} steps: val mIoU (classes 1, 2) = "
          f"{plain.compute().miou.item():.3f}, with d4 TTA = {tta.compute().miou.item():.3f} "
          f"({time.perf_counter() - start:.1f} s)")
    return tta.compute().miou.item()


if __name__ == "__main__":
    main()
