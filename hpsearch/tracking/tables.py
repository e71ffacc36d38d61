"""Tables of a study's trials, for the parent run, ``hpsearch show`` and ``hpsearch studies``.

Needs Optuna and pandas only, so the read-only commands answer without importing torch
or MLflow.
"""

from __future__ import annotations

import optuna
import pandas as pd

__all__ = ["leaderboard", "study_overview", "trials_table"]


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
