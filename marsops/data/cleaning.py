"""Outlier cleaning: masks repeated identically many times (the course's 110 "alien" images
share one mask) and degenerate (constant) images."""
import hashlib
from dataclasses import dataclass, field

import torch


@dataclass
class CleaningReport:
    kept: torch.Tensor  # indices of the images kept, ascending
    repeated_mask_groups: list = field(default_factory=list)  # lists of indices sharing one mask
    constant_images: list = field(default_factory=list)

    @property
    def removed(self) -> int:
        return sum(len(g) for g in self.repeated_mask_groups) + len(self.constant_images)

    def summary(self) -> str:
        groups = ", ".join(f"{len(g)} images (first {g[0]})" for g in self.repeated_mask_groups) or "none"
        return (f"removed {self.removed} of {self.removed + len(self.kept)}: identical-mask groups: {groups}; "
                f"constant images: {len(self.constant_images)}")


def find_outliers(images: torch.Tensor, masks: torch.Tensor, min_repeats: int = 10,
                  min_std: float = 1e-3) -> CleaningReport:
    """Flags every image whose mask occurs at least `min_repeats` times identically, and images
    whose pixel standard deviation is below `min_std` (on the [0, 1] scale)."""
    groups = {}
    for i, m in enumerate(masks.cpu().contiguous()):
        groups.setdefault(hashlib.sha1(m.numpy().tobytes()).hexdigest(), []).append(i)
    repeated = sorted((g for g in groups.values() if len(g) >= min_repeats), key=lambda g: g[0])
    flat = images.reshape(images.shape[0], -1).float()
    constant = torch.nonzero(flat.std(dim=1) < min_std).flatten().tolist() if flat.shape[1] > 1 else []
    drop = set(constant).union(*repeated) if repeated else set(constant)
    constant = [i for i in constant if not any(i in g for g in repeated)]
    kept = torch.tensor(sorted(set(range(images.shape[0])) - drop), dtype=torch.long)
    return CleaningReport(kept=kept, repeated_mask_groups=repeated, constant_images=constant)
