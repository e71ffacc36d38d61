"""Study and trial reports for the MLflow UI: Optuna's plots, a table of every trial, state
counts, and per-class precision / recall / F1 from a confusion matrix."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
import optuna.visualization.matplotlib as optuna_plots
import pandas as pd
from mlflow.tracking import MlflowClient

from hpsearch.search.plots import image_grid_figure, plt

__all__ = ["STUDY_PLOTS", "leaderboard", "log_prediction_grid", "log_study_report",
           "per_class_report", "safe_name", "study_overview", "trials_table"]

GRID_SIZE = 24  # images per grid

# Optuna's matplotlib plots logged on the parent run, under study/.
STUDY_PLOTS = {
    "optimization_history.png": optuna_plots.plot_optimization_history,
    "param_importances.png": optuna_plots.plot_param_importances,
    "parallel_coordinate.png": optuna_plots.plot_parallel_coordinate,
    "intermediate_values.png": optuna_plots.plot_intermediate_values,  # pruned ones too
    "slice.png": optuna_plots.plot_slice,
}


def safe_name(class_name: str) -> str:
    """A class name as a metric-key part: ``"T-shirt/top"`` -> ``"t-shirt_top"``."""
    return class_name.lower().replace("/", "_").replace(" ", "_")


def per_class_report(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class from a confusion matrix.

    Args:
        confusion: int array (C, C); row = true class, column = predicted class.
        class_names: C names in class-index order.

    Returns:
        ``{"classes": {name: {precision, recall, f1, support}}, "accuracy": ...,
        "macro_f1": ...}``; a class never predicted (or absent) gets precision (or recall) 0.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(counts)
    predicted, support = counts.sum(axis=0), counts.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(predicted),
                          where=predicted > 0)
    recall = np.divide(true_positives, support, out=np.zeros_like(support), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    classes = {name: {"precision": float(p), "recall": float(r), "f1": float(f),
                      "support": int(s)}
               for name, p, r, f, s in zip(class_names, precision, recall, f1, support)}
    return {"classes": classes, "accuracy": float(true_positives.sum() / counts.sum()),
            "macro_f1": float(f1.mean())}


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, epochs run, seconds, reason, parameters."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        seconds = None
        if trial.datetime_start and trial.datetime_complete:
            seconds = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
        rows.append({
            "number": trial.number,
            "state": trial.state.name,
            "value": trial.value,
            "epochs": trial.user_attrs.get("epochs_run", len(trial.intermediate_values)),
            "seconds": seconds,
            "reason": trial.user_attrs.get("fail_reason", ""),
            **trial.user_attrs.get("hyperparameters", trial.params),
        })
    return pd.DataFrame(rows)


def log_study_report(client: MlflowClient, run_id: str, study: optuna.Study) -> None:
    """Log the study's state counts, trials table and plots on its parent run.

    Plots that need more trials than the study has (importances need two complete trials)
    are left out until a later refresh.
    """
    table = trials_table(study)
    states = table["state"].value_counts() if len(table) else pd.Series(dtype=int)
    for key, state in (("n_complete", "COMPLETE"), ("n_pruned", "PRUNED"), ("n_failed", "FAIL")):
        client.log_metric(run_id, key, int(states.get(state, 0)))
    client.log_text(run_id, table.to_csv(index=False), "study/trials.csv")
    client.log_table(run_id, data=table.astype({"value": float}), artifact_file="trials.json")
    for name, plot in STUDY_PLOTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # not enough trials for this plot yet
        figure = np.ravel(axes)[0].figure
        figure.set_size_inches(max(figure.get_size_inches()[0], 8), 5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the slice plot's colour bar resists tight_layout
            figure.tight_layout()
        try:
            client.log_figure(run_id, figure, f"study/{name}")
        finally:
            plt.close(figure)


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """The trials table, best first: complete trials by value, then pruned ones by their
    last reported value, then the rest (failed, running, waiting)."""
    table = trials_table(study)
    if table.empty:
        return table
    last_reported = {t.number: t.intermediate_values[max(t.intermediate_values)]
                     for t in study.get_trials(deepcopy=False) if t.intermediate_values}
    rank = {"COMPLETE": 0, "PRUNED": 1}
    table["_group"] = table["state"].map(lambda s: rank.get(s, 2))
    score = table["value"].where(table["state"] == "COMPLETE",
                                 table["number"].map(last_reported))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    table["_score"] = -score if maximize else score
    ordered = table.sort_values(["_group", "_score", "number"], na_position="last")
    return ordered.drop(columns=["_group", "_score"]).reset_index(drop=True)


def study_overview(storage: str) -> pd.DataFrame:
    """One row per study in ``storage``: name, trial counts by state, best value, direction."""
    rows = []
    for name in optuna.get_all_study_names(storage=storage):
        study = optuna.load_study(study_name=name, storage=storage)
        states = pd.Series([t.state.name for t in study.get_trials(deepcopy=False)],
                           dtype=object).value_counts()
        complete = int(states.get("COMPLETE", 0))
        rows.append({
            "study": name,
            "trials": int(states.sum()),
            "complete": complete,
            "pruned": int(states.get("PRUNED", 0)),
            "failed": int(states.get("FAIL", 0)),
            "best_value": study.best_value if complete else None,
            "direction": study.direction.name.lower(),
        })
    return pd.DataFrame(rows)


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
    figure = image_grid_figure(images[chosen], captions, title=title)
    try:
        client.log_figure(run_id, figure, artifact_file)
    finally:
        plt.close(figure)
