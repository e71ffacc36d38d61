"""Trust, the parts that need no real run: URLs shown without passwords, a study's definition
and its changes, interrupted trials counted apart and run again first, and the progress
display (live line, log lines, remaining time)."""

from __future__ import annotations

import io
from datetime import datetime, timedelta

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpsearch.data_utils import ArraySplit, get_dataset_info
from hpsearch.redact import redact_url
from hpsearch.search.config import RunConfig
from hpsearch.search.coordination import StudyLock
from hpsearch.search.data import EvaluationData
from hpsearch.search.objective import TrialData
from hpsearch.search.progress import RemainingTime, Reporter
from hpsearch.search.runner import RegisterSession, RunSession
from hpsearch.search.storage import _differences, retry_interrupted, study_definition
from hpsearch.studies import load_builtin_spec
from hpsearch.tracking.tables import state_counts, trials_table

optuna.logging.set_verbosity(optuna.logging.WARNING)
SECRET = "S3cretPassw0rd"


@pytest.mark.parametrize(("url", "shown"), [
    (f"postgresql://hp:{SECRET}@db.lab:5432/optuna", "postgresql://hp:***@db.lab:5432/optuna"),
    (f"postgresql+psycopg://hp:{SECRET}@db/o", "postgresql+psycopg://hp:***@db/o"),
    (f"https://user:{SECRET}@mlflow.lab:5000", "https://user:***@mlflow.lab:5000"),
    ("sqlite:///hpsearch.db", "sqlite:///hpsearch.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("postgresql://hp@db/optuna", "postgresql://hp@db/optuna"),
    ("databricks", "databricks"),
])
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def _runner(storage: str) -> RunSession:
    info = get_dataset_info("mnist")
    split = ArraySplit(torch.zeros(4, 1, 28, 28, dtype=torch.uint8).numpy(),
                       torch.zeros(4, dtype=torch.int64).numpy())
    config = RunConfig(spec=load_builtin_spec("mnist"), trials=3, study_name="s",
                       register_name="r", storage=storage)
    return RunSession(study=None, tracker=None, device=torch.device("cpu"),
                      trials=TrialData(info=info, train=split, val=split),
                      tested=EvaluationData(info=info, test=split, source="a folder"),
                      lock=StudyLock(storage, "s"), reporter=None, config=config,
                      checkpoints=None)


def test_the_parent_runs_params_hold_the_storage_without_its_password() -> None:
    runner = _runner(f"postgresql://hp:{SECRET}@db/optuna")

    params = runner._run_params()

    assert params["storage"] == "postgresql://hp:***@db/optuna"
    assert not [v for v in params.values() if SECRET in str(v)]

    class Tracker:  # records what `hpsearch register`'s parent run would log
        def start_parent(self, **kwargs):
            self.kwargs = kwargs

    register = RegisterSession(study=optuna.create_study(study_name="s"), tracker=Tracker(),
                               device=runner.device, lock=runner.lock, reporter=None,
                               tested=runner.tested)
    register.start_parent(register_name="r")
    assert register.tracker.kwargs["params"]["storage"] == "postgresql://hp:***@db/optuna"


def test_a_definition_change_is_named_key_by_key() -> None:
    config = RunConfig(spec=load_builtin_spec("mnist"), trials=3, study_name="s",
                       register_name="r")
    old = study_definition(config)
    new = study_definition(RunConfig(spec=config.spec.replace(epochs=3), trials=9,
                                     study_name="s", register_name="r", train_subset=100))

    assert set(old) == {"dataset", "search_space", "epochs", "metric", "direction",
                        "val_fraction", "augment", "train_subset", "seed"}
    assert _differences(old, new) == [f"epochs {config.spec.epochs} -> 3",
                                      "train_subset None -> 100"]
    assert _differences({"search_space": {"arch": ["mlp"], "lr": 1}},
                        {"search_space": {"arch": ["cnn"], "lr": 1}}) == [
        "search_space.arch ['mlp'] -> ['cnn']"]


def _failed(number_params: float, kind: str):
    return create_trial(state=TrialState.FAIL, params={"lr": number_params},
                        distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True)},
                        user_attrs={"failure_kind": kind, "fail_reason": f"{kind} reason"})


def test_interrupted_trials_count_apart_and_are_enqueued_again_once() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5, params={"lr": 0.01},
                                 distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True)}))
    study.add_trial(_failed(0.003, "interrupted"))
    study.add_trial(_failed(0.004, "error"))

    assert state_counts(study) == {"COMPLETE": 1, "INTERRUPTED": 1, "FAIL": 1}
    assert list(trials_table(study)["state"]) == ["COMPLETE", "INTERRUPTED", "FAIL"]
    assert retry_interrupted(study) == [1]
    assert retry_interrupted(study) == []  # once only
    retry = study.trials[-1]
    assert retry.state == TrialState.WAITING and retry.params == {"lr": 0.003}
    assert retry.system_attrs["retry_history"] == [1]
    trial = study.ask()  # the retry runs first, with its parameters
    assert trial.number == retry.number
    assert trial.suggest_float("lr", 1e-4, 1e-1, log=True) == 0.003


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_live_line_is_redrawn_in_place_on_a_terminal(monkeypatch) -> None:
    clock = _Clock()
    monkeypatch.setattr("hpsearch.search.progress.time.monotonic", clock)
    stream = io.StringIO()
    reporter = Reporter("val_accuracy", stream=stream, live=True)
    reporter.batch(3, 1, 12, 0, 400, 128)
    clock.now += 0.1
    reporter.batch(3, 1, 12, 10, 400, 128)  # too soon: nothing
    assert stream.getvalue() == ""
    clock.now += 1.9
    reporter.batch(3, 1, 12, 100, 400, 128)
    assert stream.getvalue() == ("\r\x1b[K  trial    3  epoch   1/12  batch 100/400      6,400 "
                                 "img/s  epoch done in 6 s")
    reporter.say("trial    3  COMPLETE")  # clears the live line first
    assert stream.getvalue().endswith("\r\x1b[Ktrial    3  COMPLETE\n")


def test_in_a_log_a_line_every_few_seconds_and_none_when_quiet(monkeypatch) -> None:
    clock = _Clock()
    monkeypatch.setattr("hpsearch.search.progress.time.monotonic", clock)
    for verbose, expected in ((True, 2), (False, 0)):
        stream = io.StringIO()
        reporter = Reporter("val_accuracy", stream=stream, verbose=verbose, live=False)
        reporter.batch(0, 1, 3, 0, 1000, 64)
        for done in range(1, 13):
            clock.now += 1.0
            reporter.batch(0, 1, 3, done, 1000, 64)
        lines = stream.getvalue().splitlines()
        assert len(lines) == expected and "\r" not in stream.getvalue()
        assert all(line.startswith("  trial    0  epoch   1/3   batch ") for line in lines)


def test_remaining_time_is_capped_by_the_time_left_until_the_timeout(monkeypatch) -> None:
    study, start = optuna.create_study(), datetime(2026, 1, 1)
    for i in range(3):  # three trials of 5 s each, as `--timeout 25` on a tiny spec
        trial = create_trial(state=TrialState.COMPLETE, value=0.5, params={}, distributions={})
        trial.datetime_start = start + timedelta(seconds=5 * i)
        trial.datetime_complete = trial.datetime_start + timedelta(seconds=5)
        study.add_trial(trial)
    monkeypatch.setattr("hpsearch.search.progress.time.time", lambda: 1000.0)
    stream = io.StringIO()
    RemainingTime(target=100, jobs=1, reporter=Reporter("val_accuracy", stream=stream),
                  deadline=1012.0)(study)

    assert stream.getvalue() == (
        "about 12 s left until --timeout (no trial starts after it); the 97 trials still to "
        "run would take about 8 min 05 s (5 s a trial so far)\n")


def test_remaining_time_is_said_after_three_trials_with_a_hint_past_an_hour() -> None:
    study, start = optuna.create_study(), datetime(2026, 1, 1)
    for i in range(3):  # three trials of 200 s each
        trial = create_trial(state=TrialState.COMPLETE, value=0.5, params={}, distributions={})
        trial.datetime_start = start + timedelta(seconds=200 * i)
        trial.datetime_complete = trial.datetime_start + timedelta(seconds=200)
        study.add_trial(trial)
    stream = io.StringIO()
    RemainingTime(target=50, jobs=1, reporter=Reporter("val_accuracy", stream=stream))(study)

    assert stream.getvalue() == (
        "about 2 h 36 min left for the 47 trials still to run (3 min 20 s a trial so far); "
        "--timeout SECONDS caps a run, and the README gives a smaller budget for a CPU "
        "(--epochs, --train-subset)\n")
