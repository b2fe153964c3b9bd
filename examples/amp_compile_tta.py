"""marsops in a plain PyTorch loop: bfloat16 autocast on the CPU, channels_last activations,
``torch.compile`` of the model and the loss together (marsops' ops compile with no graph break),
and flip test-time augmentation with ``marsops.flip4`` + ``marsops.flip4_argmax``.

    python examples/amp_compile_tta.py [--steps 30] [--no-compile]

The data are marsops' synthetic Mars terrain (64 x 128 grey images, 5 classes); the score is the
mean IoU over classes 1..4, as in the recipe; a few steps only show the API at work, so it stays
low (train.py's recipe reaches 0.68 after 15 epochs). No extra package is needed. The first step
compiles (about 20-30 s on 2 CPU cores, less once inductor's cache is warm).
"""
import argparse
import time

import torch
from torch import nn

import marsops
from marsops import data


class SmallSegNet(nn.Module):
    """A small encoder-decoder: two strided stages down, one upsampling stage, one skip connection
    (no normalisation layers: fewer kernels for torch.compile to generate and build)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 5, width: int = 16):
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU())

        self.stem = block(in_channels, width)
        self.down = nn.Sequential(block(width, 2 * width, 2), block(2 * width, 4 * width, 2))
        self.up = nn.Sequential(nn.Upsample(scale_factor=4, mode="bilinear"), block(4 * width, width))
        self.head = nn.Conv2d(2 * width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x)
        return self.head(torch.cat([skip, self.up(self.down(skip))], dim=1))


def main() -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-compile", action="store_true", help="run eagerly")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()

    images, masks, _, _ = data.generate(n_train=96, n_test=0, seed=0, outlier_fraction=0.0)
    x_all = torch.from_numpy(images).float().div_(255).unsqueeze(1).contiguous(memory_format=torch.channels_last)
    y_all = torch.from_numpy(masks).long()
    train_x, train_y, val_x, val_y = x_all[:64], y_all[:64], x_all[64:], y_all[64:]

    model = SmallSegNet(num_classes=data.NUM_CLASSES, width=8).to(memory_format=torch.channels_last)
    # The recipe's inverse-frequency class weights (background weighted as its frequency, not 0).
    weight = data.inverse_frequency_weights(train_y, data.NUM_CLASSES, background_weight=0.05).float()

    def train_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)  # bf16, channels_last: marsops reads it in place and computes in fp32
        return marsops.focal_loss(logits, y, weight=weight, gamma=0.5)

    step_fn = train_loss if args.no_compile else torch.compile(train_loss, fullgraph=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)

    model.train()
    for step in range(args.steps):
        pick = torch.randint(0, len(train_x), (args.batch_size,), generator=generator)
        loss = step_fn(train_x[pick], train_y[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == 0:
            print(f"step   0  loss {loss.item():.4f}  (the first step {'compiles' if not args.no_compile else 'runs'}: "
                  f"{time.perf_counter() - start:.1f} s so far)")
        elif step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")

    plain = marsops.StreamingIoU(data.NUM_CLASSES, classes=[1, 2, 3, 4])
    tta = marsops.StreamingIoU(data.NUM_CLASSES, classes=[1, 2, 3, 4])
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x, y in zip(val_x.split(32), val_y.split(32)):
            plain.update(model(x), y)
            views = model(marsops.flip4(x)[0])  # (4N, C, H, W): as is, left-right, up-down, both
            tta.update(marsops.flip4_argmax(views), y)  # flips undone, softmax averaged, argmax: one pass
    print(f"plain loop (bf16 autocast, channels_last, {'eager' if args.no_compile else 'torch.compile'}), "
          f"{args.steps} steps: val mIoU (classes 1..4) = {plain.compute().miou.item():.3f}, "
          f"with flip TTA = {tta.compute().miou.item():.3f} ({time.perf_counter() - start:.1f} s)")
    return tta.compute().miou.item()


if __name__ == "__main__":
    main()
