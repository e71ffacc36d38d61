"""Running a study end to end: data, Optuna study, trials, MLflow runs, registration.

``run_study`` is what ``hpsearch run`` calls. ``--trials`` is the study's target number of
finished (complete or pruned) trials, so the same command run again resumes the study and
runs only what is missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from hpsearch import __version__
from hpsearch.data_utils import DataNotFoundError, load_dataset, split_train_val
from hpsearch.errors import HpsearchError
from hpsearch.search.components import build_pruner, build_sampler
from hpsearch.search.objective import Objective, TrialData
from hpsearch.search.progress import Reporter
from hpsearch.search.registration import Registration, register_champion
from hpsearch.search.tracking import StudyTracker, resolve_tracking_uri
from hpsearch.search.train import autocast_dtype
from hpsearch.studies import StudySpec

__all__ = ["FINISHED_STATES", "RunConfig", "StudySummary", "open_study", "resolve_device",
           "run_study"]

# Trials that count towards --trials: both produced a validation curve.
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
DEFAULT_STORAGE = "sqlite:///hpsearch.db"


@dataclass(frozen=True)
class RunConfig:
    """Everything ``hpsearch run`` resolved from its options.

    Attributes:
        spec: the study spec, CLI overrides applied.
        trials: target number of finished trials in the study (>= 1).
        study_name: Optuna study name; also the MLflow experiment name.
        register_name: registered model name for the champion.
        storage: Optuna storage URL.
        tracking_uri: MLflow tracking URI, or None for ``MLFLOW_TRACKING_URI`` / default.
        timeout_s: stop starting new trials after this many seconds, or None.
        train_subset: train on only this many training images, or None for all.
        data_dir: where to look for (and download) the data set, or None.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seeds the sampler, the validation split and each trial's torch RNG.
        max_consecutive_failures: stop the study after this many failed trials in a row.
    """

    spec: StudySpec
    trials: int
    study_name: str
    register_name: str
    storage: str = DEFAULT_STORAGE
    tracking_uri: str | None = None
    timeout_s: float | None = None
    train_subset: int | None = None
    data_dir: str | None = None
    device: str = "auto"
    seed: int = 0
    max_consecutive_failures: int = 5


@dataclass
class StudySummary:
    """What a study run produced, for the closing summary."""

    study_name: str
    tracking_uri: str
    n_complete: int = 0
    n_pruned: int = 0
    n_failed: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    registration: Registration | None = None
    wall_seconds: float = 0.0
    stop_reason: str | None = None


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present. Raises HpsearchError for an unusable choice."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise HpsearchError(f"--device cuda: no CUDA device is available (torch "
                            f"{torch.__version__}); use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise HpsearchError(f"--device {name!r}: choose auto, cpu or cuda")
    if name == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes per trial: autotune convs once
    return torch.device(name)


def load_trial_data(config: RunConfig):
    """Training/validation splits and the test split. Raises HpsearchError if missing."""
    from hpsearch.data_utils import get_dataset_info

    info = get_dataset_info(config.spec.dataset)
    try:
        train, test = load_dataset(config.spec.dataset, config.data_dir)
    except DataNotFoundError as exc:
        raise HpsearchError(str(exc)) from None
    train, val = split_train_val(train, val_fraction=config.spec.val_fraction,
                                 seed=config.seed, train_subset=config.train_subset)
    return TrialData(info=info, train=train, val=val), test


def open_study(config: RunConfig) -> optuna.Study:
    """Create the study, or load it to resume. Raises HpsearchError on a bad storage."""
    spec = config.spec
    kwargs: dict[str, Any] = {}
    if config.storage.startswith("sqlite"):
        # Several workers may share one sqlite file: wait for its lock instead of failing.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        storage = optuna.storages.RDBStorage(config.storage, **kwargs)
        study = optuna.create_study(
            storage=storage,
            study_name=config.study_name,
            direction=spec.direction,
            sampler=build_sampler(dict(spec.sampler), seed=config.seed),
            pruner=build_pruner(dict(spec.pruner), max_epochs=spec.epochs),
            load_if_exists=True,
        )
    except Exception as exc:  # SQLAlchemy's errors vary by driver; say which URL failed
        raise HpsearchError(f"cannot open Optuna storage {config.storage!r}: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if study.direction.name.lower() != spec.direction:
        raise HpsearchError(f"study {config.study_name!r} in {config.storage} optimises "
                            f"{study.direction.name.lower()}, but the spec says {spec.direction}")
    if not study.trials:
        for params in spec.enqueue_trials:
            study.enqueue_trial(params, skip_if_exists=True)
    return study


def run_study(config: RunConfig, reporter: Reporter) -> StudySummary:
    """Run (or resume) the study until it has ``config.trials`` finished trials, then
    register its best model.

    Raises:
        HpsearchError: bad device, missing data, unusable storage (before any training).
        KeyboardInterrupt: on Ctrl-C, after closing the parent run as KILLED.
    """
    start = time.perf_counter()
    device = resolve_device(config.device)
    data, test = load_trial_data(config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the reporter says it better
    study = open_study(config)
    tracking_uri = resolve_tracking_uri(config.tracking_uri)
    summary = StudySummary(study_name=config.study_name, tracking_uri=tracking_uri)
    missing = config.trials - _count(study, *FINISHED_STATES)
    reporter.say(f"study {config.study_name!r}: {config.trials - missing} of {config.trials} "
                 f"trials finished; {max(missing, 0)} to run on {_device_name(device)}; "
                 f"{len(data.train)} training / {len(data.val)} validation images")
    tracker = StudyTracker(tracking_uri=tracking_uri, study_name=config.study_name)
    tracker.start_parent(params=_run_params(config, data, device),
                         spec_yaml=config.spec.to_yaml())
    status = "FAILED"
    try:
        if missing > 0:
            _optimize(study, config, data, device, tracker, reporter, summary)
        if _count(study, TrialState.COMPLETE):
            summary.registration = register_champion(
                study=study, info=data.info, test=test, tracker=tracker,
                register_name=config.register_name, device=device)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end_parent(status)
        _fill_summary(summary, study, start)
    return summary


def _optimize(study, config, data, device, tracker, reporter, summary) -> None:
    objective = Objective(spec=config.spec, data=data, device=device, tracker=tracker,
                          reporter=reporter, seed=config.seed)
    failures = _FailureGuard(config.max_consecutive_failures, summary)

    def log_best(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE and study.best_trial.number == trial.number:
            tracker.log_best(value=trial.value, params=trial.user_attrs["hyperparameters"],
                             trial_number=trial.number, step=_count(study, *FINISHED_STATES))

    study.optimize(
        objective,
        timeout=config.timeout_s,
        callbacks=[
            optuna.study.MaxTrialsCallback(config.trials, states=FINISHED_STATES),
            reporter.trial_finished,
            log_best,
            failures,
        ],
        catch=(Exception,),  # a failing trial is recorded as FAIL; the study goes on
        gc_after_trial=True,
    )
    if summary.stop_reason is None and _count(study, *FINISHED_STATES) < config.trials:
        summary.stop_reason = f"timeout of {config.timeout_s:g} s reached"


class _FailureGuard:
    """Stops the study after ``limit`` consecutive failed trials (a bug, not bad luck)."""

    def __init__(self, limit: int, summary: StudySummary) -> None:
        self.limit, self.summary, self.in_a_row = limit, summary, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.in_a_row = self.in_a_row + 1 if trial.state == TrialState.FAIL else 0
        if self.in_a_row >= self.limit:
            reason = trial.user_attrs.get("fail_reason", "see the trial's traceback.txt")
            self.summary.stop_reason = (f"stopped after {self.in_a_row} failed trials in a "
                                        f"row; last: {reason}")
            study.stop()


def _count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _run_params(config: RunConfig, data: TrialData, device: torch.device) -> dict[str, Any]:
    return {
        "dataset": config.spec.dataset,
        "trials": config.trials,
        "epochs": config.spec.epochs,
        "timeout_s": config.timeout_s,
        "train_subset": config.train_subset,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "seed": config.seed,
        "device": _device_name(device),
        "autocast_dtype": str(autocast_dtype(device)),
        "storage": config.storage,
        "register_name": config.register_name,
        "spec_source": config.spec.source,
        "hpsearch_version": __version__,
        "torch_version": torch.__version__,
    }


def _fill_summary(summary: StudySummary, study: optuna.Study, start: float) -> None:
    summary.n_complete = _count(study, TrialState.COMPLETE)
    summary.n_pruned = _count(study, TrialState.PRUNED)
    summary.n_failed = _count(study, TrialState.FAIL)
    if summary.n_complete:
        best = study.best_trial
        summary.best_value, summary.best_trial = best.value, best.number
        summary.best_params = best.user_attrs.get("hyperparameters", best.params)
    summary.wall_seconds = time.perf_counter() - start
