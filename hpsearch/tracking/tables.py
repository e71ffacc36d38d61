"""Tables of a study's trials, for the parent run, ``hpsearch show`` and ``hpsearch studies``.

Needs Optuna and pandas only, so the read-only commands answer without importing torch
or MLflow.
"""

from __future__ import annotations

import optuna
import pandas as pd

__all__ = ["anytime", "leaderboard", "plain_names", "state_counts", "state_of",
           "study_overview", "time_to_best", "trials_table"]


def state_of(trial: optuna.trial.FrozenTrial) -> str:
    """The trial's Optuna state, but INTERRUPTED for a trial that failed only because the
    run was stopped (Ctrl-C, SIGTERM): not a failure, and run again on resume."""
    if trial.state.name == "FAIL" and trial.user_attrs.get("failure_kind") == "interrupted":
        return "INTERRUPTED"
    return trial.state.name


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per :func:`state_of`: ``{"COMPLETE": 3, "PRUNED": 1, "INTERRUPTED": 1, ...}``."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[state_of(trial)] = counts.get(state_of(trial), 0) + 1
    return counts


def plain_names(params: dict[str, object]) -> dict[str, object]:
    """Optuna's parameter names as the hyperparameters' plain names: ``lenet.depth`` ->
    ``depth``, ``adamw.lr`` -> ``lr`` (a trial draws each plain name under one prefix at
    most). For a trial without a ``hyperparameters`` attribute, such as a waiting retry
    enqueued by an older hpsearch."""
    return {name.rsplit(".", 1)[-1]: value for name, value in params.items()}


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, epochs run, seconds, why it was pruned or
    failed, its parameters, then what it cost: training seconds (``train_s``), training
    images per second (``img_per_s``), trainable parameters (``params``) and
    multiply-accumulates per image (``macs``)."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        seconds = None
        if trial.datetime_start and trial.datetime_complete:
            seconds = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
        attrs = trial.user_attrs
        cost = attrs.get("cost", {})
        rows.append({
            "number": trial.number,
            "state": state_of(trial),
            "value": trial.value,
            "epochs": attrs.get("epochs_run", len(trial.intermediate_values)),
            "seconds": seconds,
            "reason": attrs.get("fail_reason") or attrs.get("prune_reason", ""),
            **(attrs.get("hyperparameters") or plain_names(trial.params)),
            "train_s": cost.get("train_seconds"),
            "img_per_s": cost.get("images_per_second"),
            "params": cost.get("parameters"),
            "macs": cost.get("macs_per_image"),
        })
    return pd.DataFrame(rows)


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
        states = state_counts(study)
        complete = states.get("COMPLETE", 0)
        rows.append({
            "study": name,
            "trials": sum(states.values()),
            "complete": complete,
            "pruned": states.get("PRUNED", 0),
            "failed": states.get("FAIL", 0),
            "interrupted": states.get("INTERRUPTED", 0),
            "best_value": study.best_value if complete else None,
            "direction": study.direction.name.lower(),
        })
    return pd.DataFrame(rows)


def anytime(study: optuna.Study) -> pd.DataFrame:
    """The study's anytime performance: one row per finished (complete or pruned) trial in
    the order they finished, with ``seconds`` since the study started (its
    ``hpsearch.started_at`` attribute, else its first trial's start), the trial's
    ``value`` (a pruned trial's: its last reported one), its ``arch``, and ``best``, the
    best complete value so far (NaN before the first complete trial)."""
    finished = sorted((t for t in study.get_trials(deepcopy=False)
                       if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete),
                      key=lambda t: t.datetime_complete)
    columns = ["number", "state", "arch", "seconds", "value", "best"]
    if not finished:
        return pd.DataFrame(columns=columns)
    start = study.user_attrs.get("hpsearch.started_at") or min(
        t.datetime_start for t in finished).timestamp()
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    rows, best = [], None
    for t in finished:
        value = t.value if t.state.name == "COMPLETE" else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        if t.state.name == "COMPLETE":
            best = value if best is None else (max if maximize else min)(best, value)
        rows.append({"number": t.number, "state": t.state.name,
                     "arch": t.user_attrs.get("hyperparameters", t.params).get("arch", ""),
                     "seconds": t.datetime_complete.timestamp() - start, "value": value,
                     "best": best})
    return pd.DataFrame(rows, columns=columns).astype({"value": float, "best": float})


def time_to_best(study: optuna.Study, tolerance: float = 0.005) -> tuple[float, int] | None:
    """``(seconds, trial number)`` at which the best complete value so far first came within
    ``tolerance`` of the study's final best (0.005: half a percentage point of accuracy),
    or None if no trial completed."""
    curve = anytime(study).dropna(subset=["best"])
    if curve.empty:
        return None
    final = curve["best"].iloc[-1]
    close = curve[(curve["best"] - final).abs() <= tolerance + 1e-12]
    first = close.iloc[0]
    return float(first["seconds"]), int(first["number"])
