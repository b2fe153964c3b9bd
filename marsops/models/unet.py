"""A plain UNet of the same depth and widths as the Multipath UNet: the report's baseline."""
import torch
from torch import nn

from .parts import Decoder, DoubleConv, Encoder, check_input


class UNet(nn.Module):
    """Three-stage UNet for (N, in_channels, H, W) images, H and W divisible by 8; returns logits."""

    SIZE_DIVISOR = 8  # three 2x poolings

    def __init__(self, in_channels: int = 1, num_classes: int = 5, width: int = 32):
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.encoder = Encoder(in_channels, widths)
        self.bottleneck = DoubleConv(widths[-1], 8 * width)
        self.decoder = Decoder(8 * width, widths[::-1])
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.SIZE_DIVISOR, "UNet")
        x, skips = self.encoder(x)
        return self.head(self.decoder(self.bottleneck(x), skips))
