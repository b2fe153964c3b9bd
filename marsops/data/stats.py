"""Class statistics, the report's class weights and the train/validation split."""
from typing import Tuple

import torch

# The report's weights came out as [0, 0.0359, 0.0523, 0.0663, 9.2720]: each is ~0.01217 / share
# of the class (share = fraction of pixels after cleaning: 0.3390, 0.2328, 0.1838, 0.0013), so
# w_c = REPORT_SCALE / share_c reproduces them; background's weight is set by hand (0).
REPORT_SCALE = 0.01217


def class_counts(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(masks.reshape(-1).long(), minlength=num_classes)[:num_classes]


def class_shares(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = class_counts(masks, num_classes).double()
    return counts / counts.sum().clamp_min(1)


def inverse_frequency_weights(masks: torch.Tensor, num_classes: int, background_weight: float = 0.0,
                              scale: float = REPORT_SCALE) -> torch.Tensor:
    """w_c = scale / share_c for c >= 1 (0 for a class with no pixels), w_0 = background_weight."""
    shares = class_shares(masks, num_classes)
    w = torch.where(shares > 0, scale / shares.clamp_min(1e-12), torch.zeros_like(shares))
    w[0] = background_weight
    return w.float()


def split_indices(n: int, val_fraction: float = 0.2, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train, validation) index split. Do it before any augmentation, so no flipped copy of
    a validation image leaks into training (the report split after augmenting)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    return order[n_val:].sort().values, order[:n_val].sort().values
