"""Building blocks of the UNets."""
import torch
from torch import nn


class ConvBNReLU(nn.Sequential):
    """3x3 (or k x k) convolution, batch norm, ReLU."""

    def __init__(self, cin, cout, kernel_size=3, dilation=1):
        super().__init__(nn.Conv2d(cin, cout, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation,
                                   bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DoubleConv(nn.Sequential):
    """Two ConvBNReLU: the unit of every encoder and decoder stage."""

    def __init__(self, cin, cout):
        super().__init__(ConvBNReLU(cin, cout), ConvBNReLU(cout, cout))


class Up(nn.Module):
    """2x transposed-conv upsampling, concatenation with the encoder's skip features, DoubleConv."""

    def __init__(self, cin, skip, cout):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.conv = DoubleConv(cout + skip, cout)

    def forward(self, x, skip):
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class Encoder(nn.Module):
    """Stages of DoubleConv, each followed by 2x2 max-pooling; returns (features, skips)."""

    def __init__(self, in_channels, widths):
        super().__init__()
        self.stages = nn.ModuleList(DoubleConv(cin, cout) for cin, cout in zip((in_channels,) + widths[:-1], widths))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
            x = self.pool(x)
        return x, skips


class Decoder(nn.Module):
    """Up stages that consume the encoder's skips from the deepest up."""

    def __init__(self, cin, widths):
        super().__init__()
        self.ups = nn.ModuleList(Up(c_in, w, w) for c_in, w in zip((cin,) + widths[:-1], widths))

    def forward(self, x, skips):
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return x


class ResidualBlock(nn.Module):
    """Two ConvBNReLU with a 1x1 projection shortcut."""

    def __init__(self, cin, cout):
        super().__init__()
        self.body = nn.Sequential(ConvBNReLU(cin, cout), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class DilatedSum(nn.Module):
    """Multiscale path: 3x3 convolutions at several dilations on the same input, summed."""

    def __init__(self, cin, cout, dilations=(1, 2, 4)):
        super().__init__()
        self.branches = nn.ModuleList(ConvBNReLU(cin, cout, dilation=d) for d in dilations)

    def forward(self, x):
        return sum(branch(x) for branch in self.branches)


class GlobalContext(nn.Module):
    """Global average pool, dense layer, 1x1 convolution, broadcast back to the input's size."""

    def __init__(self, cin, cout):
        super().__init__()
        self.dense = nn.Sequential(nn.Linear(cin, cout), nn.ReLU(inplace=True))
        self.proj = nn.Sequential(nn.Conv2d(cout, cout, 1), nn.ReLU(inplace=True))

    def forward(self, x):
        g = self.dense(x.mean(dim=(2, 3)))[:, :, None, None]
        return self.proj(g).expand(-1, -1, x.shape[2], x.shape[3])


class SqueezeExcite(nn.Module):
    """Channel re-weighting (Hu et al. 2018) with the given reduction."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels),
                                  nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x.mean(dim=(2, 3)))[:, :, None, None]


def check_input(x, divisor, name):
    """Clear error for inputs the encoder cannot halve `log2(divisor)` times."""
    if x.dim() != 4:
        raise ValueError(f"{name}: expected input (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[-2] % divisor or x.shape[-1] % divisor:
        raise ValueError(f"{name}: height and width must be divisible by {divisor}, got {tuple(x.shape[-2:])}")
