"""Outlier cleaning: one mask shared by different images (the course's 110 "alien" images share
one mask) and degenerate (constant) images.

The rule needs no count threshold, so it holds for a subset or a small set as well as for the
whole course data: two different photographs never get the same hand-drawn mask pixel for
pixel, so a mask that labels two or more different images is a placeholder, and every image
carrying it is flagged. A mask of a single class (an all-soil or all-sky picture) can repeat
honestly and is left alone, as are exact duplicates (the same image with the same mask).
"""
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
        return (f"removed {self.removed} of {self.removed + len(self.kept)}: shared-mask groups: {groups}; "
                f"constant images: {len(self.constant_images)}")


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest()


def find_outliers(images: torch.Tensor, masks: torch.Tensor, min_repeats: int = 2,
                  min_std: float = 1e-3) -> CleaningReport:
    """Flags every image whose mask (of two or more classes) is shared identically by at least
    `min_repeats` different images, and images whose pixel standard deviation is below `min_std`
    (on the [0, 1] scale). The default `min_repeats=2` is the rule of the module docstring."""
    if min_repeats < 2:
        raise ValueError(f"find_outliers: min_repeats must be >= 2 (a mask always matches itself), got {min_repeats}")
    if not (isinstance(images, torch.Tensor) and isinstance(masks, torch.Tensor)):
        raise TypeError("find_outliers: images and masks must be tensors")
    if images.dim() < 3 or masks.dim() < 2 or images.shape[0] != masks.shape[0] or \
            tuple(images.shape[-2:]) != tuple(masks.shape[-2:]):
        raise ValueError(f"find_outliers: images (N, [1,] H, W) and masks (N, H, W) must match, got images "
                         f"{tuple(images.shape)} and masks {tuple(masks.shape)}")
    masks, images = masks.cpu(), images.cpu()
    hashed = images.view(torch.int16) if images.dtype == torch.bfloat16 else images  # numpy has no bfloat16
    groups = {}
    for i, m in enumerate(masks):
        if m.numel() and bool((m != m.flatten()[0]).any()):  # single-class masks repeat honestly
            groups.setdefault(_digest(m), []).append(i)
    repeated = []
    for g in groups.values():
        distinct_images = {_digest(hashed[i]) for i in g}
        if len(g) >= min_repeats and len(distinct_images) >= 2:
            repeated.append(g)
    repeated.sort(key=lambda g: g[0])
    pixels = images[0].numel() if images.shape[0] else 0
    constant = []
    if pixels > 1:
        std = images.reshape(images.shape[0], pixels).float().std(dim=1)
        constant = torch.nonzero(std < min_std).flatten().tolist()
    in_groups = {i for g in repeated for i in g}
    constant = [i for i in constant if i not in in_groups]
    kept = torch.tensor(sorted(set(range(images.shape[0])) - in_groups - set(constant)), dtype=torch.long)
    return CleaningReport(kept=kept, repeated_mask_groups=repeated, constant_images=constant)
