"""The run folder's pictures: learning curves, prediction overlays, confusion matrix."""
import csv

import numpy as np

from marsops.data import CLASS_NAMES
from marsops.data.plots import colour_masks, save_grid


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(metrics_csv, path):
    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    plt = _plt()
    epoch = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].plot(epoch, [float(r["train_loss"]) for r in rows], label="train")
    axes[0].plot(epoch, [float(r["val_loss"]) for r in rows], label="validation")
    axes[0].set_title("loss")
    axes[0].legend()
    axes[1].plot(epoch, [float(r["val_miou"]) for r in rows], label="mIoU (classes 1-4)", color="k")
    if "train_miou" in rows[0]:  # counted by the training loss's own pass
        axes[1].plot(epoch, [float(r["train_miou"]) for r in rows], label="training mIoU", color="k", ls="--")
    for name in CLASS_NAMES[1:]:
        key = f"iou_{name.replace(' ', '_')}"
        axes[1].plot(epoch, [float(r[key]) for r in rows], label=name, alpha=0.6)
    axes[1].set_title("IoU (validation per class)")
    axes[1].legend(fontsize=7)
    axes[2].semilogy(epoch, [float(r["lr"]) for r in rows])
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def predictions(images, truth, pred, path, rows=6):
    imgs, t, p = images[:, 0].numpy(), colour_masks(truth.numpy()), colour_masks(pred.numpy())
    overlay = 0.55 * np.repeat(imgs[..., None], 3, axis=-1) + 0.45 * p
    save_grid(path, imgs, [lambda i: imgs[i], lambda i: t[i], lambda i: p[i], lambda i: overlay[i]],
              ["image", "truth", "prediction", "overlay"], rows=rows)


def confusion(matrix, path):
    plt = _plt()
    m = matrix.detach().cpu().double()  # the checkpoint's matrix lives on the training device
    norm = (m / m.sum(1, keepdim=True).clamp_min(1)).numpy()
    fig, ax = plt.subplots(figsize=(5, 4.3))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=30, fontsize=8)
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(norm.shape[0]):
        for j in range(norm.shape[1]):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("validation confusion (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
