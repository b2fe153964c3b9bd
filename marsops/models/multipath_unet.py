"""The report's Multipath UNet: a UNet whose bottleneck reads the encoder's features through
up to four parallel paths, concatenates them and fuses them with a conv, a Squeeze-and-Excitation
block and a residual add."""
from typing import Sequence

import torch
from torch import nn

from .parts import (ConvBNReLU, Decoder, DilatedSum, DoubleConv, Encoder, GlobalContext, ResidualBlock,
                    SqueezeExcite, check_input)

PATHS = ("plain", "residual", "context", "dilated")


def _path(name, cin, width):
    """(module, output channels) of one bottleneck path; widths as in the team's Keras model."""
    if name == "plain":
        return DoubleConv(cin, 8 * width), 8 * width
    if name == "residual":
        return ResidualBlock(cin, width), width
    if name == "context":
        return GlobalContext(cin, width), width
    if name == "dilated":
        return DilatedSum(cin, 8 * width), 8 * width
    raise ValueError(f"MultipathUNet: unknown path {name!r}; choose from {PATHS}")


class MultipathUNet(nn.Module):
    """Multipath UNet for (N, in_channels, H, W) images, H and W divisible by 8; returns logits.

    width: filters of the first encoder stage (the encoder has width, 2*width, 4*width);
    paths: which bottleneck paths are on (at least one), for ablations.
    """

    SIZE_DIVISOR = 8  # three 2x poolings

    def __init__(self, in_channels: int = 1, num_classes: int = 5, width: int = 32, paths: Sequence[str] = PATHS):
        super().__init__()
        if not paths:
            raise ValueError("MultipathUNet: at least one bottleneck path is needed")
        widths = (width, 2 * width, 4 * width)
        self.paths = tuple(paths)
        self.encoder = Encoder(in_channels, widths)
        built = [_path(p, widths[-1], width) for p in self.paths]
        self.branches = nn.ModuleList(m for m, _ in built)
        concat = sum(c for _, c in built)  # 576 = 8w + w + w + 8w with every path at width 32
        self.fuse = ConvBNReLU(concat, 16 * width)
        self.excite = SqueezeExcite(16 * width, reduction=16)
        self.decoder = Decoder(16 * width, widths[::-1])
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.SIZE_DIVISOR, "MultipathUNet")
        x, skips = self.encoder(x)
        fused = self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))
        x = fused + self.excite(fused)  # SE re-weighting with a residual add
        return self.head(self.decoder(x, skips))
