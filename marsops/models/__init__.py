"""Segmentation models of the Mars-terrain recipe (the Multipath UNet and a plain UNet), picked by
name with build_model()."""
from torch import nn

from .multipath_unet import PATHS, MultipathUNet
from .unet import UNet

MODELS = {"multipath_unet": MultipathUNet, "unet": UNet}


def build_model(name: str, **kwargs) -> nn.Module:
    """A model from MODELS by name; kwargs go to its constructor."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "PATHS", "MultipathUNet", "UNet", "build_model", "count_parameters"]
