"""The study report on the parent run (Optuna's plots, the trials table, state counts) and
image grids of predictions."""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from mlflow.tracking import MlflowClient

from hpsearch import defaults
from hpsearch.tracking.figures import (
    anytime_figure,
    class_distribution_figure,
    image_grid_figure,
    log_figure,
    originals_figure,
)
from hpsearch.tracking.tables import anytime, state_counts, trials_table

__all__ = ["STUDY_PLOTS", "log_data_report", "log_image_report", "log_prediction_grid",
           "log_study_report"]

GRID_SIZE = 24  # images per grid

# Optuna's matplotlib plots logged on the parent run, under study/: artifact name -> the
# function of optuna.visualization.matplotlib (imported when drawn: pyplot and SciPy take
# about 0.9 s to import, which a run with $HPSEARCH_FIGURES=0 never pays).
STUDY_PLOTS = {
    "optimization_history.png": "plot_optimization_history",
    "param_importances.png": "plot_param_importances",
    "parallel_coordinate.png": "plot_parallel_coordinate",
    "intermediate_values.png": "plot_intermediate_values",  # pruned ones too
    "slice.png": "plot_slice",
}


def log_study_report(client: MlflowClient, run_id: str, study: optuna.Study) -> None:
    """Log the study's state counts, trials table and plots on its parent run.

    Plots that need more trials than the study has (importances need two complete trials)
    are left out until a later refresh; with ``$HPSEARCH_FIGURES`` 0, all of them.
    """
    table, states = trials_table(study), state_counts(study)
    for key, state in (("n_complete", "COMPLETE"), ("n_pruned", "PRUNED"), ("n_failed", "FAIL"),
                       ("n_interrupted", "INTERRUPTED")):
        client.log_metric(run_id, key, states.get(state, 0))
    client.log_text(run_id, table.to_csv(index=False), "study/trials.csv")
    client.log_table(run_id, data=table.astype({"value": float}), artifact_file="trials.json")
    if not defaults.figures():
        return
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as optuna_plots

    curve = anytime(study)
    if not curve.empty:
        metric = study.user_attrs.get("hpsearch.metric", "objective value")
        log_figure(client, run_id, lambda: anytime_figure(curve, metric=metric),
                   "study/anytime.png")
    for name, plot in STUDY_PLOTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = getattr(optuna_plots, plot)(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # not enough trials for this plot yet
        figure = np.ravel(axes)[0].figure
        figure.set_size_inches(max(figure.get_size_inches()[0], 8), 5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the slice plot's colour bar resists tight_layout
            figure.tight_layout()
        try:
            log_figure(client, run_id, lambda figure=figure: figure, f"study/{name}")
        finally:
            plt.close(figure)  # Optuna draws through pyplot, which keeps its figures


def log_prediction_grid(client: MlflowClient, run_id: str, images: np.ndarray,
                        labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray,
                        class_names: Sequence[str], *, artifact_file: str, title: str,
                        mistakes_only: bool) -> None:
    """Log a grid of images captioned with true and predicted class.

    Args:
        images: uint8 (N, C, H, W); labels, predicted: int (N,); confidence: float (N,),
            the predicted class's probability.
        mistakes_only: show the misclassified images, most confident first (the worst
            mistakes); else the first images in order (sample predictions).
    """
    if mistakes_only:
        wrong = np.flatnonzero(predicted != labels)
        chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:GRID_SIZE]
    else:
        chosen = np.arange(min(GRID_SIZE, len(images)))
    captions = [f"true {class_names[labels[i]]}\npred {class_names[predicted[i]]} "
                f"{confidence[i]:.2f}" for i in chosen]
    log_figure(client, run_id, lambda: image_grid_figure(images[chosen], captions, title=title),
               artifact_file)


def log_data_report(client: MlflowClient, run_id: str, splits: Mapping[str, Any],
                    class_names: Sequence[str], *, per_class: int = 8) -> None:
    """What the data looks like, on the parent run: images per class in each split and the
    imbalance ratio, the largest over the smallest training class
    (``data/class_distribution.json`` and ``.png``), and the first ``per_class`` training
    images of each class (``data/samples_per_class.png``, one row per class).

    Args:
        splits: split name (training, validation, test) -> ArraySplit.
        class_names: the classes, in class-index order.
    """
    n = len(class_names)
    counts = {name: np.bincount(split.labels, minlength=n).tolist()
              for name, split in splits.items()}
    train = next(iter(counts.values()))
    ratio = max(train) / min(train) if min(train) else None  # None: a class has no image
    client.log_dict(run_id, {"class_names": list(class_names), "images_per_class": counts,
                             "imbalance_ratio": ratio}, "data/class_distribution.json")
    log_figure(client, run_id, lambda: class_distribution_figure(counts, class_names),
               "data/class_distribution.png")
    train = next(iter(splits.values()))
    rows = [np.flatnonzero(train.labels == c) for c in range(n)]
    per_class = min(per_class, *(len(row) for row in rows))  # a full grid, row = class
    if per_class == 0:
        return
    rows = [row[:per_class] for row in rows]
    chosen = np.concatenate(rows)
    captions = [class_names[train.labels[i]] if j == 0 else ""
                for row in rows for j, i in enumerate(row)]
    log_figure(client, run_id, lambda: image_grid_figure(train.images[chosen], captions,
                                                         title="training images per class",
                                                         columns=per_class),
               "data/samples_per_class.png")


def log_image_report(client: MlflowClient, run_id: str, images: Any,
                     inspected: Mapping[str, Any]) -> None:
    """What a folder or manifest of one's own images became, on the parent run (besides
    :func:`log_data_report`'s counts and samples):

    - ``data/own_images.json``: the source, image size and channels, the cache, images per
      split and class, the imbalance ratio, the skipped count and the leakage summary;
    - ``data/originals.png``: the originals' shorter sides and colour modes;
    - ``data/skipped.csv``: every file left out (``path,reason``);
    - ``data/leakage.csv``: every image in two splits (``group,kind,split,path``), with
      ``dropped`` saying which copies ``dedupe`` removed;
    - ``data/splits.csv``: every file used (``split,path,class``), the list a resumed
      study is checked against.

    Args:
        images: the :class:`~hpsearch.data_utils.own_images.ImageDataset`.
        inspected: :func:`~hpsearch.data_utils.own_images.inspect_images`'s report of it
            (for the originals' sizes and modes, known from the header pass).
    """
    ratio = images.imbalance_ratio
    summary = {
        "source": str(images.source), "kind": images.kind, "image_size": images.image_size,
        "channels": images.channels, "cache": str(images.cache_dir),
        "manifest_digest": images.manifest_digest, "split_digest": images.split_digest,
        "split_origin": dict(images.split_origin),
        "images_per_class": {split: dict(zip(images.class_names, counts))
                             for split, counts in images.counts.items()},
        "imbalance_ratio": None if ratio == float("inf") else round(ratio, 4),
        "skipped": len(images.skipped), "leakage": images.leakage.summary(),
        "originals": inspected.get("originals", {}),
    }
    client.log_dict(run_id, summary, "data/own_images.json")
    log_figure(client, run_id, lambda: originals_figure(summary["originals"]),
               "data/originals.png")
    client.log_text(run_id, _csv(("path", "reason"),
                                 ((s.path, s.reason) for s in images.skipped)),
                    "data/skipped.csv")
    dropped = set(images.leakage.dropped)
    client.log_text(run_id, _csv(("group", "kind", "split", "path", "dropped"), (
        (i, group.kind, split, path, str((split, path) in dropped).lower())
        for i, group in enumerate(images.leakage.groups, start=1)
        for split, path in group.files)), "data/leakage.csv")
    client.log_text(run_id, _csv(("split", "path", "class"), images.file_table()),
                    "data/splits.csv")


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
