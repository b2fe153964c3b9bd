"""Flip augmentation: flip4 against torch.cat of torch.flip (and torch.compile of it), and
random_flip against the reference and kornia's RandomHorizontalFlip + RandomVerticalFlip; the
8-way flip expansion of volumes against torch.flip + torch.cat; the dihedral (d4) expansion
against ttach-style per-transform calls (torch.rot90 / transpose / flip, then cat).

    python -m benchmarks.bench_flip [--quick]
"""
import torch

import marsops

from . import harness

# (images shape, masks dtype): the report's batch with int64 masks, and a large RGB one.
SHAPES = harness.sized({"report 256x1x64x128": (256, 1, 64, 128), "large 32x3x512x1024": (32, 3, 512, 1024)})
VOLUMES = harness.sized({"report-size volume 32x1x32x64x64": (32, 1, 32, 64, 64),
                         "large volume 4x2x64x256x256": (4, 2, 64, 256, 256)})


def cat_of_flips(images, masks):
    return tuple(torch.cat([t, t.flip(-1), t.flip(-2), t.flip(-2, -1)]) for t in (images, masks))


def flip4_candidates(device):
    fns = {"torch.cat of torch.flip": cat_of_flips, "torch.compile(cat of flips)": torch.compile(cat_of_flips)}
    for b in harness.kernel_backends(device, "flip_views"):
        fns[f"marsops {b}"] = lambda x, m, b=b: marsops.flip4(x, m, backend=b)
    return fns


def random_flip_candidates(device):
    fns = {"marsops reference": lambda x, m: marsops.random_flip(x, m, backend="reference")}
    for b in harness.kernel_backends(device, "flip_by_flags"):
        fns[f"marsops {b}"] = lambda x, m, b=b: marsops.random_flip(x, m, backend=b)
    try:
        import kornia.augmentation as K

        aug = K.AugmentationSequential(K.RandomHorizontalFlip(), K.RandomVerticalFlip(), data_keys=["input", "mask"])

        def kornia_flip(x, m):
            return aug(x, m.unsqueeze(1).float())

        fns["kornia RandomHorizontalFlip+RandomVerticalFlip"] = kornia_flip
    except ImportError:
        pass
    return fns


def volume_candidates(device):
    """The 8 flips of volumes (N, C, D, H, W) with their (N, D, H, W) masks."""

    def eager(x, m):
        dims = [[d for d, bit in ((-3, 4), (-2, 2), (-1, 1)) if k & bit] for k in range(8)]
        return (torch.cat([x.flip(d) if d else x for d in dims]), torch.cat([m.flip(d) if d else m for d in dims]))

    fns = {"torch.cat of torch.flip": eager}
    for b in harness.kernel_backends(device, "flip_views"):
        fns[f"marsops {b}"] = lambda x, m, b=b: marsops.flip4(x, m, dims=(-3, -2, -1), backend=b)
    return fns


def d4_candidates(device):
    """The 8 symmetries of square images, with their masks."""

    def ttach_style(x, m):  # one call per transform, as ttach's D4 does, then a concatenation
        views = [(torch.rot90(x, k, (-2, -1)), torch.rot90(m, k, (-2, -1))) for k in range(4)]
        views += [(v.transpose(-2, -1), w.transpose(-2, -1)) for v, w in views]
        return torch.cat([v for v, _ in views]), torch.cat([w for _, w in views])

    fns = {"per-transform torch.rot90 / transpose + cat": ttach_style}
    for b in harness.kernel_backends(device, "flip_views"):
        fns[f"marsops {b}"] = lambda x, m, b=b: marsops.d4(x, m, backend=b)
    return fns


def run(kind, fns, label, images, masks, device, repeats, bandwidth):
    out_factor = {"flip4": 4, "flip8 (volume)": 8, "d4": 8}.get(kind, 1)
    moved = (images.numel() * images.element_size() + masks.numel() * masks.element_size()) * (1 + out_factor)
    rows = [harness.measure_traffic(lambda: fn(images, masks), device, repeats, moved, bandwidth, op=kind, shape=label,
                                    impl=name) for name, fn in fns.items()]
    harness.add_speedups(rows, "speedup", rows[0].get("ms"))
    return rows


def main(argv=None):
    args, device, bandwidth = harness.setup(__doc__, argv)
    repeats = 5 if args.quick else 11
    rows = []
    for label, shape in SHAPES.items():
        if args.quick and not label.startswith("report"):
            continue
        g = torch.Generator().manual_seed(0)
        images = torch.rand(shape, generator=g).to(device)
        masks = torch.randint(0, 5, (shape[0],) + shape[2:], generator=g).to(device)
        rows += run("flip4", flip4_candidates(device), label, images, masks, device, repeats, bandwidth)
        rows += run("random_flip", random_flip_candidates(device), label, images, masks, device, repeats, bandwidth)
        if label.startswith("report"):  # d4 needs squares: the report images' left 64x64
            square = images[..., : shape[-2], : shape[-2]].contiguous()
            rows += run("d4", d4_candidates(device), label + " (square crop)", square,
                        masks[..., : shape[-2], : shape[-2]].contiguous(), device, repeats, bandwidth)
    for label, shape in VOLUMES.items():
        if args.quick and not label.startswith("report-size"):
            continue
        g = torch.Generator().manual_seed(0)
        volumes = torch.rand(shape, generator=g).to(device)
        masks = torch.randint(0, 5, (shape[0],) + shape[2:], generator=g).to(device)
        rows += run("flip8 (volume)", volume_candidates(device), label, volumes, masks, device, repeats, bandwidth)
    print(f"flips of fp32 images + int64 masks; device {device}; copy bandwidth {bandwidth:.1f} GB/s")
    print(harness.markdown_table(rows, ["op", "shape", "impl", "ms", "p20", "p80", "speedup", "GB/s", "% copy bw",
                                        "peak MB"]))
    print(f"saved {harness.save('flip', device, rows, {'copy_bandwidth_gbs': bandwidth})}")
    return rows


if __name__ == "__main__":
    main()
