"""Only the best trial keeps its logged weights: after each finished trial, the weights of
trials that can no longer become the best are deleted from the artifact store (a VGG16
checkpoint is 530 MB). Trials are driven with ask/tell on tiny networks; the artifacts are
real, in a local MLflow store."""

from __future__ import annotations

import io
from pathlib import Path

import optuna
import pytest
from torch import nn

import hpsearch.search.callbacks as callbacks
from hpsearch.search.callbacks import CheckpointSweeper
from hpsearch.search.progress import Reporter
from hpsearch.tracking.runs import WEIGHTS_TAG, StudyTracker

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tracking store for the module (creating its schema takes seconds)."""
    return tmp_path_factory.mktemp("sweep")


@pytest.fixture
def tracker(store: Path, request: pytest.FixtureRequest,
            monkeypatch: pytest.MonkeyPatch) -> StudyTracker:
    """A study's tracker of its own in the module's store, its parent run started."""
    monkeypatch.chdir(store)  # ./mlruns: the artifact root of a sqlite tracking store
    tracker = StudyTracker(tracking_uri=f"sqlite:///{store / 'mlflow.db'}",
                           study_name=request.node.name, system_metrics=False)
    tracker.start_parent(params={}, spec_yaml=None)
    return tracker


def _trial(study: optuna.Study, tracker: StudyTracker, value: float | None, *,
           checkpoint: bool = True, state=optuna.trial.TrialState.COMPLETE) -> int:
    """A finished trial whose run logged its weights (``checkpoint``), as the objective
    does; its number."""
    trial = study.ask()
    run = tracker.trial_run(trial.number, {"lr": 0.1})
    trial.set_user_attr("mlflow_run_id", run.run_id)
    if checkpoint:
        run.log_checkpoint(nn.Linear(3, 2))
        trial.set_user_attr("checkpoint", True)
    study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None,
               state=state)
    return trial.number


def _kept(study: optuna.Study, tracker: StudyTracker) -> list[int]:
    """The trials whose run still holds its weights in the artifact store."""
    return [t.number for t in study.trials
            if tracker.client.list_artifacts(t.user_attrs["mlflow_run_id"], "checkpoint")]


@pytest.mark.parametrize("direction, values", [("maximize", (0.5, 0.7, 0.6)),
                                               ("minimize", (0.5, 0.3, 0.4))])
def test_only_the_best_trial_keeps_its_weights(tracker: StudyTracker, direction: str,
                                                values: tuple[float, float, float]) -> None:
    study = optuna.create_study(direction=direction)
    reporter = Reporter("val_accuracy", stream=io.StringIO(), live=False)
    sweep = CheckpointSweeper(tracker, reporter)
    first, better, worse = values

    _trial(study, tracker, first)
    sweep(study, study.trials[-1])
    assert _kept(study, tracker) == [0]  # the best so far keeps its weights

    _trial(study, tracker, better)
    sweep(study, study.trials[-1])
    assert _kept(study, tracker) == [1]  # the previous best's are deleted...
    beaten = tracker.client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert beaten.data.tags[WEIGHTS_TAG] == "deleted: trial 1 is better"  # ...and it says why

    _trial(study, tracker, better)  # a tie may end up the best: kept
    _trial(study, tracker, worse, checkpoint=False)
    _trial(study, tracker, None, state=optuna.trial.TrialState.PRUNED)  # logged, then pruned
    sweep(study, study.trials[-1])
    assert _kept(study, tracker) == [1, 2]
    assert study.best_trial.number in _kept(study, tracker)
    # Another worker sweeping the same study deletes nothing more and fails on nothing.
    CheckpointSweeper(tracker, reporter)(study, study.trials[-1])
    assert _kept(study, tracker) == [1, 2]


def test_a_store_that_refuses_to_delete_is_said_once_and_the_study_goes_on(
        tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("artifact deletion is disabled on this server")

    monkeypatch.setattr(callbacks, "delete_checkpoint", refuse)
    study = optuna.create_study(direction="maximize")
    stream = io.StringIO()
    sweep = CheckpointSweeper(tracker, Reporter("val_accuracy", stream=stream, live=False))

    for value in (0.1, 0.2, 0.3):
        _trial(study, tracker, value)
        sweep(study, study.trials[-1])

    assert stream.getvalue().splitlines() == [
        "warning: the weights of trial 0 were not deleted (PermissionError: artifact "
        "deletion is disabled on this server); earlier best trials keep theirs in the "
        "artifact store"]
    assert _kept(study, tracker) == [0, 1, 2]
