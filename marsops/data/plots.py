"""Pictures of images and masks (matplotlib, an optional extra)."""
import numpy as np

# One colour per class: background, soil, bedrock, sand, big rocks.
CLASS_COLOURS = np.array([[0, 0, 0], [196, 140, 80], [120, 120, 200], [240, 220, 90], [220, 40, 40]]) / 255.0


def colour_masks(masks):
    """(N, H, W) class ids -> (N, H, W, 3) RGB."""
    return CLASS_COLOURS[np.asarray(masks, dtype=np.int64).clip(0, len(CLASS_COLOURS) - 1)]


def save_grid(path, images, columns, titles, rows=6):
    """A figure of `rows` samples; `columns` are callables i -> (H, W) or (H, W, 3) arrays."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(rows, len(images))
    fig, axes = plt.subplots(n, len(columns), figsize=(3.2 * len(columns), 1.8 * n), squeeze=False)
    for r in range(n):
        for c, (fn, title) in enumerate(zip(columns, titles)):
            ax = axes[r][c]
            picture = fn(r)
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
