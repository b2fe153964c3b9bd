"""A synthetic Mars-terrain data set in the course's format, deterministic from a seed.

Each 64x128 grayscale image has a background band at the top (sky or an unlabelled area with a
wavy edge), then blobby regions of soil, bedrock and sand, and now and then a big rock. The
classes differ in texture more than in brightness, so a model must look at texture: fine-grained
soil with pebbles, bedrock plates with dark cracks, sand ripples, big rocks shaded from the top
left with a cast shadow. Per-image brightness and contrast vary and noise is added. Pixel shares
aim at the course's (after cleaning): 24.31 / 33.90 / 23.28 / 18.38 / 0.13 %. A few percent of
training images are "outliers": terrain with a pasted alien picture, all sharing one mask, as in
the course data.
"""
import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .course import PathLike, save_npz

BACKGROUND, SOIL, BEDROCK, SAND, ROCK = range(5)
COURSE_SHARES = (0.2431, 0.3390, 0.2328, 0.1838, 0.0013)
OUTLIER_FRACTION = 110 / 2615
# Biases on the smooth class fields, tuned so the argmax gives soil/bedrock/sand in the course's
# proportions of the terrain (0.448 / 0.308 / 0.243).
_FIELD_BIAS = torch.tensor([0.28, 0.02, -0.12])


def smooth_noise(n, channels, height, width, cells, g):
    """Smooth random fields: a coarse grid of normals upsampled bicubically, unit variance-ish."""
    grid = torch.randn(n, channels, cells, max(1, cells * width // height), generator=g)
    return F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)


def _coords(n, height, width):
    y = torch.arange(height, dtype=torch.float32).view(1, height, 1).expand(n, height, width)
    x = torch.arange(width, dtype=torch.float32).view(1, 1, width).expand(n, height, width)
    return y, x


def _labels(n, height, width, g):
    y, x = _coords(n, height, width)
    horizon = (0.2431 * height - 0.35) + torch.empty(n, 1, 1).uniform_(-6, 6, generator=g)
    wave = 2.5 * F.interpolate(torch.randn(n, 1, 6, generator=g), size=width, mode="linear",
                               align_corners=False).view(n, 1, width)
    fields = smooth_noise(n, 3, height, width, 4, g) + _FIELD_BIAS.view(1, 3, 1, 1)
    labels = fields.argmax(1) + SOIL
    labels[y < horizon + wave] = BACKGROUND
    # Big rocks: about one image in four gets an ellipse of radius 2-5 px below the horizon.
    has_rock = torch.rand(n, generator=g) < 0.26
    cy = horizon.view(n) + 6 + torch.rand(n, generator=g) * (height - horizon.view(n) - 10)
    cx = 6 + torch.rand(n, generator=g) * (width - 12)
    ry, rx = 2 + 2.5 * torch.rand(n, generator=g), 2.5 + 3 * torch.rand(n, generator=g)
    d = ((y - cy.view(n, 1, 1)) / ry.view(n, 1, 1)) ** 2 + ((x - cx.view(n, 1, 1)) / rx.view(n, 1, 1)) ** 2
    rocks = (d <= 1) & has_rock.view(n, 1, 1)
    ds = ((y - cy.view(n, 1, 1) - 1.5) / ry.view(n, 1, 1)) ** 2 + ((x - cx.view(n, 1, 1) - 2.5) / rx.view(n, 1, 1)) ** 2
    shadows = (ds <= 1.1) & has_rock.view(n, 1, 1) & ~rocks
    labels[rocks] = ROCK
    shade = ((cy.view(n, 1, 1) - y) / ry.view(n, 1, 1) + (cx.view(n, 1, 1) - x) / rx.view(n, 1, 1)) * 0.08
    return labels, shadows, shade, horizon


def _render(labels, shadows, shade, horizon, g):
    n, height, width = labels.shape
    y, x = _coords(n, height, width)
    img = torch.zeros(n, height, width)
    fine = torch.randn(n, height, width, generator=g)
    # Background: a dark sky with a vertical gradient, or (one image in four) a flat unlabelled area.
    sky = 0.18 + 0.25 * y / horizon.clamp_min(1) + 0.02 * fine
    unlabelled = torch.rand(n, 1, 1, generator=g) < 0.25
    sky = torch.where(unlabelled, 0.08 + 0.01 * fine, sky)
    # Soil: medium, fine-grained, with small bright pebbles.
    pebbles = (torch.rand(n, height, width, generator=g) < 0.02).float()
    soil = 0.46 + 0.07 * fine + 0.22 * F.max_pool2d(pebbles.unsqueeze(1), 3, 1, 1).squeeze(1) * pebbles.bernoulli(
        0.9, generator=g) + 0.12 * F.avg_pool2d(pebbles.unsqueeze(1), 3, 1, 1).squeeze(1)
    # Bedrock: plates of slowly varying brightness cut by dark cracks.
    plates = smooth_noise(n, 1, height, width, 6, g).squeeze(1)
    cracks = (torch.sin(plates * 7.0).abs() < 0.12).float()
    bedrock = 0.52 + 0.06 * plates - 0.2 * cracks + 0.015 * fine
    # Sand: smooth ripples with a per-image direction and wavelength.
    angle = torch.rand(n, 1, 1, generator=g) * math.pi
    wavelength = 4 + 3 * torch.rand(n, 1, 1, generator=g)
    phase = (x * torch.cos(angle) + y * torch.sin(angle)) * (2 * math.pi / wavelength)
    sand = 0.5 + 0.09 * torch.sin(phase + 0.8 * smooth_noise(n, 1, height, width, 3, g).squeeze(1)) + 0.01 * fine
    # Big rocks: bright, lit from the top left.
    rock = 0.66 + shade + 0.02 * fine
    for cls, tex in ((BACKGROUND, sky), (SOIL, soil), (BEDROCK, bedrock), (SAND, sand), (ROCK, rock)):
        img = torch.where(labels == cls, tex, img)
    img = torch.where(shadows, img * 0.55, img)
    # Per-image exposure: brightness and contrast, then sensor noise.
    gain = 0.75 + 0.5 * torch.rand(n, 1, 1, generator=g)
    offset = 0.08 * torch.randn(n, 1, 1, generator=g)
    img = (img - 0.45) * gain + 0.45 + offset + 0.03 * torch.randn(n, height, width, generator=g)
    return (img.clamp(0, 1) * 255).round()


def _alien(n, height, width, g):
    """A pasted picture: a bright disc with concentric rings, somewhere in the frame."""
    y, x = _coords(n, height, width)
    cy, cx = torch.rand(n, 1, 1, generator=g) * height, torch.rand(n, 1, 1, generator=g) * width
    r = ((y - cy) ** 2 + (x - cx) ** 2).sqrt()
    return r < 18, 0.5 + 0.5 * torch.cos(r * 1.3)


def terrain(n, height=64, width=128, seed=0, chunk=512):
    """n images (float64 in 0..255) and masks (uint8), generated in chunks."""
    g = torch.Generator().manual_seed(seed)
    images, masks = [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        labels, shadows, shade, horizon = _labels(m, height, width, g)
        images.append(_render(labels, shadows, shade, horizon, g))
        masks.append(labels.to(torch.uint8))
    if not images:
        return torch.zeros(0, height, width, dtype=torch.float64), torch.zeros(0, height, width, dtype=torch.uint8)
    return torch.cat(images).double(), torch.cat(masks)


def generate(n_train: int = 2615, n_test: int = 1000, seed: int = 0, outlier_fraction: float = OUTLIER_FRACTION,
             height: int = 64, width: int = 128) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_masks, test_images, outlier_indices) as numpy arrays in the course's
    value ranges; the outliers are planted among the training images (at least two when any: one
    image alone cannot share its mask, so find_outliers could not tell it)."""
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"generate: {name} must be an int >= 0, got {n!r}")
    if not 0.0 <= outlier_fraction <= 1.0:
        raise ValueError(f"generate: outlier_fraction must be in [0, 1], got {outlier_fraction!r}")
    if height < 8 or width < 8:
        raise ValueError(f"generate: height and width must be at least 8, got {height} x {width}")
    images, masks = terrain(n_train, height, width, seed)
    test_images, _ = terrain(n_test, height, width, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    n_out = int(round(n_train * outlier_fraction))
    if n_out == 1 and n_train >= 2:
        n_out = 2
    outliers = torch.randperm(n_train, generator=g)[:n_out].sort().values
    if n_out:
        shared_mask = terrain(1, height, width, seed + 3)[1][0]
        inside, picture = _alien(n_out, height, width, g)
        images[outliers] = torch.where(inside, picture.double() * 255, images[outliers]).round()
        masks[outliers] = shared_mask
    return images.numpy(), masks.numpy(), test_images.numpy(), outliers.numpy()


def write_npz(path: PathLike, n_train: int = 2615, n_test: int = 1000, seed: int = 0,
              outlier_fraction: float = OUTLIER_FRACTION) -> np.ndarray:
    """Generates the set and writes it in the course's npz format; returns the outlier indices."""
    images, masks, test_images, outliers = generate(n_train, n_test, seed, outlier_fraction)
    save_npz(path, images, masks, test_images)
    return outliers

