"""Running a study end to end: data, Optuna study, trials, MLflow runs, registration.

``run_study`` is what ``hpsearch run`` calls. ``--trials`` is the study's target number of
finished (complete or pruned) trials, so the same command run again resumes the study and
runs only what is missing.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from hpsearch import __version__
from hpsearch.data_utils import (
    DataNotFoundError,
    get_dataset_info,
    load_dataset,
    split_train_val,
)
from hpsearch.errors import HpsearchError, ignore_further_signals
from hpsearch.search.components import build_pruner, build_sampler
from hpsearch.search.coordination import (
    FINISHED_STATES,
    StudyLock,
    claim_worker_number,
    count_trials,
    schema_lock,
    slots_left,
)
from hpsearch.search.objective import Objective, TrialData
from hpsearch.search.progress import Reporter
from hpsearch.search.registration import Registration, register_champion
from hpsearch.search.reports import log_study_report
from hpsearch.search.tracking import (
    StudyTracker,
    close_orphaned_trial_run,
    dataset_inputs,
    provenance_tags,
    resolve_tracking_uri,
)
from hpsearch.search.train import autocast_dtype
from hpsearch.studies import StudySpec

__all__ = ["FINISHED_STATES", "RunConfig", "StudySummary", "default_jobs",
           "load_existing_study", "open_study", "register_study", "resolve_device", "run_study",
           "work"]

DEFAULT_STORAGE = "sqlite:///hpsearch.db"
REPORT_EVERY = 5  # trials between refreshes of the study report on the parent run...
REPORT_MIN_S = 60.0  # ...and seconds at least between two refreshes


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
        max_consecutive_failures: stop the study after this many trials in a row failed
            with an error (not counting out-of-memory failures or interruptions).
        heartbeat_interval_s: seconds between a running trial's heartbeats; a trial silent
            for 3 intervals is taken for dead (its worker was killed) and retried.
        jobs: trials run at once, each in its own worker process (>= 1), or None for
            :func:`default_jobs` (1 on a CPU).
        compile: train through ``torch.compile`` (compiled once per trial).
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
    heartbeat_interval_s: int = 10
    jobs: int | None = 1
    compile: bool = False


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
    exit_code: int = 0  # 128 + signal number when interrupted


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


def default_jobs(device: torch.device) -> int:
    """Worker processes when ``--jobs`` is not given: 1 on a CPU (one trial already uses
    every core), else up to 4 small models side by side on the GPU, one CPU core each to
    queue their kernels."""
    if device.type != "cuda":
        return 1
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def load_trial_data(config: RunConfig):
    """Training/validation splits and the test split. Raises HpsearchError if missing."""
    info = get_dataset_info(config.spec.dataset)
    try:
        train, test = load_dataset(config.spec.dataset, config.data_dir)
    except DataNotFoundError as exc:
        raise HpsearchError(str(exc)) from None
    train, val = split_train_val(train, val_fraction=config.spec.val_fraction,
                                 seed=config.seed, train_subset=config.train_subset)
    return TrialData(info=info, train=train, val=val), test


def open_study(config: RunConfig, tracking_uri: str) -> optuna.Study:
    """Create the study, or load it to resume. Raises HpsearchError on a bad storage.

    The storage keeps heartbeats of running trials: a trial whose worker died is failed by
    the next worker and retried with the same parameters (:class:`RetryStaleTrial`).
    """
    spec = config.spec
    kwargs: dict[str, Any] = {}
    if config.storage.startswith("sqlite"):
        # Several workers may share one sqlite file: wait for its lock instead of failing.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        with warnings.catch_warnings():
            # Heartbeats and their retry callback are marked experimental; we rely on them.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                config.storage,
                heartbeat_interval=config.heartbeat_interval_s,
                grace_period=3 * config.heartbeat_interval_s,
                heartbeat_stale_trial_callback=RetryStaleTrial(tracking_uri),
                **kwargs)
        study = optuna.create_study(
            storage=storage,
            study_name=config.study_name,
            direction=spec.direction,
            sampler=build_sampler(dict(spec.sampler), seed=config.seed),
            pruner=build_pruner(dict(spec.pruner), max_epochs=spec.epochs),
            load_if_exists=True,
        )
    except Exception as exc:  # SQLAlchemy's errors vary by driver; say which URL failed
        raise _storage_error(config.storage, exc) from None
    if study.direction.name.lower() != spec.direction:
        raise HpsearchError(f"study {config.study_name!r} in {config.storage} optimises "
                            f"{study.direction.name.lower()}, but the spec says {spec.direction}")
    if not study.trials:
        # What `hpsearch register STUDY` needs to rebuild the data set later.
        study.set_user_attr("hpsearch.dataset", spec.dataset)
        for params in spec.enqueue_trials:
            study.enqueue_trial(params, skip_if_exists=True)
    return study


def run_study(config: RunConfig, reporter: Reporter) -> StudySummary:
    """Run (or resume) the study until it has ``config.trials`` finished trials, then
    register its best model if no other worker is still running a trial.

    With ``config.jobs`` > 1 the trials run in that many worker processes (each with its
    own copy of the data on the device); this process prints their progress and registers.

    On SIGINT/SIGTERM (KeyboardInterrupt) the running trials fail as interrupted, their
    runs and the parent run end KILLED, and the summary so far is returned with
    ``exit_code`` 128 + the signal number.

    Raises:
        HpsearchError: bad device, missing data, unusable storage or tracking store, or an
            unwritable directory; raised before anything is written.
    """
    start = time.perf_counter()
    device = resolve_device(config.device)
    config = dataclasses.replace(config, jobs=config.jobs or default_jobs(device))
    data, test = load_trial_data(config)
    tracking_uri = resolve_tracking_uri(config.tracking_uri)
    preflight(config, tracking_uri)
    # The reporter says it in one line; Optuna's warnings would add a traceback per failure
    # (each failed trial's traceback is on its MLflow run as traceback.txt).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with schema_lock(config.storage, tracking_uri):
        study = open_study(config, tracking_uri)
        tracker = StudyTracker(tracking_uri=tracking_uri, study_name=config.study_name)
    summary = StudySummary(study_name=config.study_name, tracking_uri=tracking_uri)
    missing = config.trials - count_trials(study, *FINISHED_STATES)
    workers = f" in {config.jobs} worker processes" if config.jobs > 1 else ""
    reporter.say(f"study {config.study_name!r}: {config.trials - missing} of {config.trials} "
                 f"trials finished; {max(missing, 0)} to run on {_device_name(device)}"
                 f"{workers}; {len(data.train)} training / {len(data.val)} validation images")
    tracker.start_parent(
        params=_run_params(config, data, device), spec_yaml=config.spec.to_yaml(),
        run_tags=provenance_tags(device, config.seed),
        inputs=dataset_inputs({"training": data.train, "validation": data.val},
                              config.spec.dataset))
    lock = StudyLock(config.storage, config.study_name)
    deadline = None if config.timeout_s is None else time.time() + config.timeout_s
    status = "FAILED"
    try:
        if config.jobs > 1:
            from hpsearch.search.jobs import run_workers

            refresh = _ReportRefresher(tracker, study, reporter)
            summary.stop_reason = run_workers(
                config, jobs=config.jobs, parent_run_id=tracker.parent_run_id,
                deadline=deadline, reporter=reporter, on_idle=refresh)
        else:
            work(study, config, data=data, device=device, tracker=tracker, reporter=reporter,
                 summary=summary, lock=lock, deadline=deadline, refresh_reports=True)
        summary.registration = _register_if_last(study, config, data, test, tracker, device,
                                                 lock, reporter)
        status = "FINISHED"
    except KeyboardInterrupt as exc:
        ignore_further_signals()
        status = "KILLED"
        signum = getattr(exc, "signum", signal.SIGINT)
        summary.stop_reason = f"interrupted by {signal.Signals(signum).name}"
        summary.exit_code = 128 + signum
    finally:
        lock.close()
        _refresh_report(tracker, study, reporter)
        tracker.end_parent(status)
        _fill_summary(summary, study, start)
    return summary


def work(study: optuna.Study, config: RunConfig, *, data: TrialData, device: torch.device,
         tracker: StudyTracker, reporter: Reporter, summary: StudySummary, lock: StudyLock,
         deadline: float | None, refresh_reports: bool) -> None:
    """One worker's loop: take a trial slot, run the trial, until the study is done.

    A slot is taken under the study lock (see :mod:`~hpsearch.search.coordination`), so
    all workers together run exactly ``config.trials`` finished trials. When no slot is
    left but other workers still run trials, this worker stays: if one of them dies, its
    trial goes stale (no heartbeat), is failed and re-enqueued, and a waiting worker runs
    it. Returns when the study is done, at ``deadline`` (``time.time()`` seconds), or
    when ``summary.stop_reason`` is set (too many failures in a row).
    """
    worker = claim_worker_number(study, lock)
    if worker:  # the study's first worker keeps --seed: a single run stays reproducible
        study.sampler = build_sampler(dict(config.spec.sampler), seed=config.seed + worker)
    objective = Objective(spec=config.spec, data=data, device=device, tracker=tracker,
                          reporter=reporter, seed=config.seed, compile_model=config.compile)
    callbacks = [reporter.trial_finished, _BestLogger(tracker),
                 _FailureGuard(config.max_consecutive_failures, summary)]
    if refresh_reports:
        refresh = _ReportRefresher(tracker, study, reporter)
        callbacks.append(lambda study, trial: refresh())

    def start_trial(trial: optuna.Trial) -> float:
        lock.release()  # the trial holds its slot now: RUNNING in the storage
        return objective(trial)

    said_waiting = None
    while summary.stop_reason is None:
        if deadline is not None and time.time() >= deadline:
            summary.stop_reason = f"timeout of {config.timeout_s:g} s reached"
            return
        with lock.hold():
            if slots_left(study, config.trials) > 0:
                study.optimize(start_trial, n_trials=1, callbacks=callbacks,
                               catch=(Exception,), gc_after_trial=True)
                _return_freed_memory()
                said_waiting = None
                continue
            running = count_trials(study, TrialState.RUNNING)
        if running == 0:
            return
        if said_waiting != running:
            reporter.say(f"waiting for {running} trial(s) running on other workers (a dead "
                         f"worker's trial is retried here)")
            said_waiting = running
        time.sleep(min(5.0, config.heartbeat_interval_s))
        _fail_stale_trials(study)


def _return_freed_memory() -> None:
    """Hand the heap memory the last trial freed back to the OS. glibc keeps freed memory
    for reuse, so without this a study's resident memory stays at the high-water mark of
    its largest trial so far and creeps up with each new largest one."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def _fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _register_if_last(study, config, data, test, tracker, device, lock,
                      reporter) -> Registration | None:
    """Register the champion if this worker is the last: no trial of the study runs any
    more. Under the study lock, so of two workers finishing together one registers and
    the other finds the champion alias already on the study's best trial."""
    with lock.hold():
        running = count_trials(study, TrialState.RUNNING)
        if running:
            reporter.say(f"not registering: {running} trial(s) still running on other "
                         "workers; the last worker to finish registers the champion")
            return None
        if not count_trials(study, TrialState.COMPLETE):
            return None
        return register_champion(study=study, info=data.info, test=test, tracker=tracker,
                                 register_name=config.register_name, device=device)


class _ReportRefresher:
    """Refreshes the study report after every few finished trials, at most once a minute:
    plotting grows with the study. Called after each trial, or while waiting for workers."""

    def __init__(self, tracker: StudyTracker, study: optuna.Study, reporter: Reporter) -> None:
        self.tracker, self.study, self.reporter = tracker, study, reporter
        self.last_time = time.monotonic()
        self.last_finished = count_trials(study, *FINISHED_STATES)

    def __call__(self) -> None:
        now, finished = time.monotonic(), count_trials(self.study, *FINISHED_STATES)
        if finished - self.last_finished >= REPORT_EVERY and now - self.last_time >= REPORT_MIN_S:
            _refresh_report(self.tracker, self.study, self.reporter)
            self.last_time, self.last_finished = now, finished


def register_study(*, study_name: str, storage: str, tracking_uri: str | None,
                   register_name: str, data_dir: str | None = None,
                   device: str = "auto") -> Registration:
    """Register (again) the best trial of an existing study: ``hpsearch register``.

    Evaluates the best trial's kept weights on the test set, logs the evaluation and the
    model on a new run (``hpsearch.role`` = ``register``) in the study's experiment, and
    registers a new version under the alias ``champion``, even if the alias already
    points at this trial. Holds the study lock, so it never races a worker's own
    registration.

    Raises:
        HpsearchError: no such study, no complete trial, the best trial kept no weights,
            its data set cannot be found, or the stores cannot be reached.
    """
    torch_device = resolve_device(device)
    tracking_uri = resolve_tracking_uri(tracking_uri)
    if tracking_uri.startswith(("http://", "https://")):
        _check_reachable(tracking_uri)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = load_existing_study(study_name, storage)
    tracker = StudyTracker(tracking_uri=tracking_uri, study_name=study_name)
    dataset = study.user_attrs.get("hpsearch.dataset") or _dataset_from_runs(tracker)
    info = get_dataset_info(dataset)
    try:
        _, test = load_dataset(dataset, data_dir)
    except DataNotFoundError as exc:
        raise HpsearchError(str(exc)) from None
    tracker.start_parent(params={"study": study_name, "dataset": dataset,
                                 "storage": storage, "register_name": register_name},
                         spec_yaml=None, run_tags=provenance_tags(torch_device, 0),
                         role="register")
    status = "FAILED"
    lock = StudyLock(storage, study_name)
    try:
        with lock.hold():
            registration = register_champion(
                study=study, info=info, test=test, tracker=tracker,
                register_name=register_name, device=torch_device, force=True)
        status = "FINISHED"
    finally:
        lock.close()
        tracker.end_parent(status)
    return registration


def _storage_error(storage: str, exc: Exception) -> HpsearchError:
    reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    if isinstance(exc, ModuleNotFoundError) and storage.startswith("postgresql"):
        reason += "; install the PostgreSQL driver: pip install 'hpsearch[postgres]'"
    return HpsearchError(f"cannot open Optuna storage {storage!r}: {reason}")


def load_existing_study(study_name: str, storage: str) -> optuna.Study:
    """Load a study that must exist. Raises HpsearchError naming the storage otherwise."""
    try:
        names = optuna.get_all_study_names(storage=storage)
    except Exception as exc:  # SQLAlchemy's errors vary by driver; say which URL failed
        raise _storage_error(storage, exc) from None
    if study_name not in names:
        raise HpsearchError(f"no study {study_name!r} in {storage}; see `hpsearch studies`")
    return optuna.load_study(study_name=study_name, storage=storage)


def _dataset_from_runs(tracker: StudyTracker) -> str:
    """The data set of a study created before studies recorded it: its parent runs'."""
    runs = tracker.client.search_runs([tracker.experiment_id],
                                      filter_string="tags.`hpsearch.role` = 'study'",
                                      max_results=1)
    if not runs or "dataset" not in runs[0].data.params:
        raise HpsearchError(f"cannot tell the data set of study {tracker.study_name!r}: "
                            "no hpsearch run of it in the tracking store")
    return runs[0].data.params["dataset"]


def _refresh_report(tracker: StudyTracker, study: optuna.Study, reporter: Reporter) -> None:
    """Log the study report on the parent run; a failure here must not end the study."""
    try:
        log_study_report(tracker.client, tracker.parent_run_id, study)
    except Exception as exc:  # plotting or logging trouble: say so, keep going
        reporter.say(f"warning: study report not logged: {type(exc).__name__}: {exc}")


def preflight(config: RunConfig, tracking_uri: str) -> None:
    """Check the stores can be written or reached, before anything is created.

    Raises:
        HpsearchError: a sqlite file's directory is missing or not writable, or an HTTP
            tracking server does not answer within seconds.
    """
    for what, url in (("--storage", config.storage), ("tracking store", tracking_uri)):
        if url.startswith("sqlite:///"):
            _check_writable(Path(url[len("sqlite:///"):]).parent, what, url)
    if tracking_uri.startswith(("http://", "https://")):
        _check_reachable(tracking_uri)


def _check_writable(directory: Path, what: str, url: str) -> None:
    directory = directory if str(directory) else Path(".")
    if not directory.is_dir():
        raise HpsearchError(f"{what} {url}: directory {directory.resolve()} does not exist")
    try:  # a real write: permission bits do not tell for root, read-only mounts or quotas
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise HpsearchError(f"{what} {url}: cannot write in {directory.resolve()} "
                            f"({exc.strerror}); run from a writable directory or pass "
                            "--storage/--tracking-uri") from None


def _check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HpsearchError(f"cannot reach the MLflow tracking server at {tracking_uri} "
                            f"({reason}); start it or pass another --tracking-uri") from None


class RetryStaleTrial:
    """Heartbeat callback for a trial whose worker died (SIGKILL, power loss): enqueue a
    retry with the same parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``) and close
    its orphaned MLflow runs as KILLED, tagged with the retry's trial number."""

    def __init__(self, tracking_uri: str, max_retry: int = 2) -> None:
        self.tracking_uri = tracking_uri
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.retry(study, trial)
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        retried_as = next((t.number for t in waiting
                           if t.system_attrs.get("retry_history", [None])[-1] == trial.number),
                          None)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            from mlflow.tracking import MlflowClient

            close_orphaned_trial_run(
                MlflowClient(tracking_uri=self.tracking_uri), run_id, retried_as=retried_as,
                reason="worker died (no heartbeat); retried as trial "
                       f"{retried_as}" if retried_as is not None else "worker died")


class _BestLogger:
    """An ``optimize`` callback: a new best trial's value and params on the parent run."""

    def __init__(self, tracker: StudyTracker) -> None:
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE and study.best_trial.number == trial.number:
            self.tracker.log_best(value=trial.value,
                                  params=trial.user_attrs["hyperparameters"],
                                  trial_number=trial.number,
                                  step=count_trials(study, *FINISHED_STATES))


class _FailureGuard:
    """Stops the study after ``limit`` trials in a row failed with an error: a bug, not bad
    luck. Out-of-memory failures depend on the sampled configuration and do not count;
    any other failure does, also one that happened before the objective could classify it."""

    def __init__(self, limit: int, summary: StudySummary) -> None:
        self.limit, self.summary, self.in_a_row = limit, summary, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != TrialState.FAIL:
            self.in_a_row = 0
        elif trial.user_attrs.get("failure_kind") != "out_of_memory":
            self.in_a_row += 1
        if self.in_a_row >= self.limit:
            reason = trial.user_attrs.get("fail_reason", "see the trial's traceback.txt")
            self.summary.stop_reason = (f"stopped after {self.in_a_row} failed trials in a "
                                        f"row; last: {reason}")
            study.stop()


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
        "jobs": config.jobs,
        "compile": config.compile,
        "register_name": config.register_name,
        "spec_source": config.spec.source,
        "hpsearch_version": __version__,
        "torch_version": torch.__version__,
    }


def _fill_summary(summary: StudySummary, study: optuna.Study, start: float) -> None:
    summary.n_complete = count_trials(study, TrialState.COMPLETE)
    summary.n_pruned = count_trials(study, TrialState.PRUNED)
    summary.n_failed = count_trials(study, TrialState.FAIL)
    if summary.n_complete:
        best = study.best_trial
        summary.best_value, summary.best_trial = best.value, best.number
        summary.best_params = best.user_attrs.get("hyperparameters", best.params)
    summary.wall_seconds = time.perf_counter() - start
