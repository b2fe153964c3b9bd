"""marsops in a segmentation_models_pytorch project: smp's Unet trained a few steps with
``marsops.DiceFocalLoss``, random flips from ``marsops.random_flip``, and scored with
``marsops.StreamingIoU`` (mean IoU over classes 1..4, counted on the device, no host sync).

    pip install segmentation-models-pytorch
    python examples/smp_unet.py [--steps 60]

The data are marsops' synthetic Mars terrain (64 x 128 grey images, 5 classes). The encoder
starts from random weights (``encoder_weights=None``): nothing is downloaded. 60 steps (about 8 s
on an idle 2-core CPU) reach a mean IoU near 0.25; train.py's recipe reaches 0.68 after 15 epochs.
"""
import argparse
import time

import segmentation_models_pytorch as smp
import torch

import marsops
from marsops import data


def mars_batches(n_train: int, n_val: int, seed: int = 0):
    """(train images, train masks, val images, val masks): float (N, 1, 64, 128) in [0, 1], int64 (N, 64, 128)."""
    images, masks, _, _ = data.generate(n_train=n_train + n_val, n_test=0, seed=seed, outlier_fraction=0.0)
    x = torch.from_numpy(images).float().div_(255).unsqueeze(1)
    y = torch.from_numpy(masks).long()
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def main() -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()

    train_x, train_y, val_x, val_y = mars_batches(n_train=64, n_val=32)
    # A small Unet (4 stages, narrow decoder) so that the example runs in seconds on a laptop CPU.
    model = smp.Unet("resnet18", encoder_weights=None, encoder_depth=4, decoder_channels=(64, 32, 16, 16),
                     in_channels=1, classes=data.NUM_CLASSES)
    model = model.to(memory_format=torch.channels_last)  # marsops reads channels_last logits in place
    # Dice over the scored classes plus a focal term: softmax, sums and gradient fused, no one-hot.
    criterion = marsops.DiceFocalLoss(classes=[1, 2, 3, 4], gamma=2.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)

    model.train()
    for step in range(args.steps):
        pick = torch.randint(0, len(train_x), (args.batch_size,), generator=generator)
        x, y, _ = marsops.random_flip(train_x[pick], train_y[pick], p_h=0.5, p_v=0.5, generator=generator)
        loss = criterion(model(x.contiguous(memory_format=torch.channels_last)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")

    metric = marsops.StreamingIoU(data.NUM_CLASSES, classes=[1, 2, 3, 4])
    model.eval()
    with torch.no_grad():
        for x, y in zip(val_x.split(args.batch_size), val_y.split(args.batch_size)):
            metric.update(model(x.contiguous(memory_format=torch.channels_last)), y)
    scores = metric.compute()
    print("val IoU per class:", " ".join(f"{name}={v:.3f}" for name, v in zip(data.CLASS_NAMES, scores.iou.tolist())))
    print(f"smp Unet + marsops.DiceFocalLoss, {args.steps} steps: val mIoU (classes 1..4) = {scores.miou.item():.3f} "
          f"({time.perf_counter() - start:.1f} s)")
    return scores.miou.item()


if __name__ == "__main__":
    main()
