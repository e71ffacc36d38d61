"""Matplotlib figures logged to MLflow: confusion matrices and learning curves."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot's import

import matplotlib.pyplot as plt
import numpy as np

from hpsearch.search.train import EpochResult

__all__ = ["confusion_matrix_figure", "image_grid_figure", "learning_curves_figure"]


def confusion_matrix_figure(
    confusion: np.ndarray, class_names: Sequence[str], *, title: str
) -> plt.Figure:
    """Counts (rows = true class, columns = predicted class) as an annotated heat map.

    Args:
        confusion: int array (C, C) of counts.
        class_names: C names, in class-index order.
        title: figure title (say which split and epoch).
    """
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n), dpi=100)
    ax.imshow(confusion, cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    threshold = confusion.max() / 2 if confusion.size else 0
    for (i, j), count in np.ndenumerate(confusion):
        color = "white" if count > threshold else "black"
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    return fig


def learning_curves_figure(history: Sequence[EpochResult], *, title: str) -> plt.Figure:
    """Training and validation loss and accuracy per epoch, side by side."""
    epochs = [r.epoch for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    loss_ax.plot(epochs, [r.train_loss for r in history], "o-", label="train")
    loss_ax.plot(epochs, [r.val.loss for r in history], "o-", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy (nats)", title="loss")
    acc_ax.plot(epochs, [r.train_accuracy for r in history], "o-", label="train")
    acc_ax.plot(epochs, [r.val.accuracy for r in history], "o-", label="validation")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        last = max(epochs, default=1)
        ax.set_xticks(range(1, last + 1, max(1, last // 10)))  # whole epochs, at most ~10
        ax.set_xlim(0.5, last + 0.5)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def image_grid_figure(images: np.ndarray, titles: Sequence[str], *, title: str,
                      columns: int = 6) -> plt.Figure:
    """Images with a caption each (e.g. "true: Shirt / pred: T-shirt/top 0.91").

    Args:
        images: uint8 array (K, C, H, W), C = 1 or 3.
        titles: K captions.
        title: the figure's title.
    """
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.1 * rows + 0.4), dpi=100)
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, image, caption in zip(np.ravel(axes), images, titles):
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        ax.imshow(pixels, cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=255)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title if len(images) else f"{title}: none")
    fig.tight_layout()
    return fig
