"""Running a study end to end: ``run_study`` is what ``hpsearch run`` and ``hpsearch.run()``
call, ``register_study`` what ``hpsearch register`` calls.

``--trials`` is the study's target number of finished (complete or pruned) trials, so the
same command run again resumes the study and runs only what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from collections.abc import Iterator

import optuna

from hpsearch.errors import EX_IOERR, DiskFull, ignore_further_signals
from hpsearch.search.callbacks import ReportRefresher, refresh_report
from hpsearch.search.config import RunConfig, StudySummary
from hpsearch.search.coordination import FINISHED_STATES, count_trials
from hpsearch.search.diskspace import disk_full_error
from hpsearch.search.gpu_sharing import gpu_sharing_note
from hpsearch.search.progress import RemainingTime, Reporter
from hpsearch.search.runner import RegisterSession, RunSession, default_jobs
from hpsearch.search.storage import fail_abandoned_trials
from hpsearch.serving.registration import Registration
from hpsearch.tracking.provenance import quiet_mlflow, resolve_tracking_uri
from hpsearch.tracking.runs import StudyTracker
from hpsearch.tracking.tables import state_counts, time_to_best
from hpsearch.training.device import device_name, resolve_device

__all__ = ["register_study", "run_study"]


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial log lines off for the block (the reporter says it in one line, and
    each failed trial's traceback is on its run), then the caller's verbosity back."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def run_study(config: RunConfig, reporter: Reporter) -> StudySummary:
    """Run (or resume) the study until it has ``config.trials`` finished trials, then
    register its best model if no other worker is still running a trial.

    With ``config.jobs`` > 1 the trials run in that many worker processes (each loads the
    data and keeps its own copy on the device); this process loads only the test split (for
    own images it builds the cache once, before the workers start), prints their progress
    and registers.

    On SIGINT/SIGTERM (KeyboardInterrupt) the running trials fail as interrupted, their
    runs and the parent run end KILLED, and the summary so far is returned with
    ``exit_code`` 128 + the signal number.

    Raises:
        HpsearchError: bad device, missing data, unusable storage or tracking store, or an
            unwritable directory; raised before anything is written.
        DiskFull: no space left where the study writes (its stores, their artifacts, the
            temporary directory): the trial running then fails, the study stops, finished
            trials are kept (``exit_code`` 74 on the command line).
    """
    start = time.perf_counter()
    config = dataclasses.replace(
        config, jobs=config.jobs or default_jobs(resolve_device(config.device)))
    with quiet_optuna(), quiet_mlflow():
        with _disk_full_as_one_error(config.storage, config.tracking_uri):
            runner = RunSession.open(config, reporter, train=config.jobs == 1)
        try:  # the session's config: the spec as this study searches it (weights, data)
            return _run(runner, runner.config, reporter, start)
        finally:
            runner.close()


def _run(runner: RunSession, config: RunConfig, reporter: Reporter,
         start: float) -> StudySummary:
    study, tracker = runner.study, runner.tracker
    summary = StudySummary(study_name=config.study_name, tracking_uri=tracker.tracking_uri,
                           metric=config.spec.metric, experiment_id=tracker.experiment_id)
    missing = config.trials - count_trials(study, *FINISHED_STATES)
    workers = (f" in {config.jobs} worker processes"
               f"{gpu_sharing_note(runner.device, config.jobs)}" if config.jobs > 1 else "")
    reporter.say(f"study {config.study_name!r}: {config.trials - missing} of {config.trials} "
                 f"trials finished; {max(missing, 0)} to run on {device_name(runner.device)}"
                 f"{workers}; {runner.describe_data()}")
    deadline = None if config.timeout_s is None else time.time() + config.timeout_s
    status, disk_full = "FAILED", None
    try:
        runner.start_parent()
        if config.jobs > 1:
            from hpsearch.search.workers import run_workers

            refresh = ReportRefresher(tracker, study, reporter)
            remaining = RemainingTime(target=config.trials, jobs=config.jobs, reporter=reporter,
                                      deadline=deadline)
            summary.stop_reason, summary.exit_code = run_workers(
                config, jobs=config.jobs, parent_run_id=tracker.parent_run_id,
                deadline=deadline, reporter=reporter,
                on_idle=lambda: (refresh(), remaining(study)),
                on_killed=lambda pids, signum: _record_killed(runner, pids, signum, reporter))
            if summary.exit_code == EX_IOERR:  # a worker found the disk full
                raise DiskFull()
        else:
            runner.work(summary, deadline=deadline, refresh_reports=True)
        summary.registration = runner.register(config.register_name)
        status = "FINISHED"
    except KeyboardInterrupt as exc:
        ignore_further_signals()
        status = "KILLED"
        signum = getattr(exc, "signum", signal.SIGINT)
        summary.stop_reason = f"interrupted by {signal.Signals(signum).name}"
        summary.exit_code = 128 + signum
    except Exception as exc:
        disk_full = runner.disk_full_error(exc)
        if disk_full is None:
            raise
    finally:
        runner.lock.release()
        if disk_full is not None:
            _end_parent_on_full_disk(tracker, disk_full)
        elif tracker.parent_run_id is not None:
            refresh_report(tracker, study, reporter)
            tracker.end_parent(status)
        _fill_summary(summary, study, start)
    if disk_full is not None:
        raise disk_full from None
    return summary


def _record_killed(runner: RunSession, pids: set[int], signum: int, reporter: Reporter) -> None:
    """Record as interrupted the trials of workers that were killed after an interrupt
    because they had not recorded them themselves in time."""
    reason = f"interrupted by {signal.Signals(signum).name}"
    failed = fail_abandoned_trials(runner.study, runner.tracker.client,
                                   runner.tracker.experiment_id, pids, reason)
    if failed:
        reporter.say(f"trial(s) {', '.join(map(str, failed))} of the killed worker(s) "
                     f"recorded as {reason}")


@contextlib.contextmanager
def _disk_full_as_one_error(storage: str, tracking_uri: str | None) -> Iterator[None]:
    """Opening the stores writes (the study, the experiment, runs of ended processes): a
    full disk there is a :class:`DiskFull` too."""
    try:
        yield
    except Exception as exc:
        disk_full = disk_full_error(exc, storage=storage,
                                    tracking_uri=resolve_tracking_uri(tracking_uri))
        if disk_full is None:
            raise
        raise disk_full from None


def _end_parent_on_full_disk(tracker: StudyTracker, disk_full: DiskFull) -> None:
    """End the parent run FAILED with the reason, if the full store still takes that write;
    if not, the next run closes it (its process is gone by then)."""
    try:
        tracker.end_parent("FAILED", reason=str(disk_full))
    except Exception:  # the store is full: nothing more to record now
        pass


def register_study(*, study_name: str, storage: str, tracking_uri: str | None,
                   register_name: str, data_dir: str | None = None,
                   device: str = "auto", cache_dir: str | None = None) -> Registration:
    """Register (again) the best trial of an existing study: ``hpsearch register``.

    Evaluates the best trial's kept weights on the test set (a registered data set's test
    files, or the test rows of the cache of the study's own images: ``cache_dir``, else
    the folder they were decoded into when the study was created), logs the evaluation and the
    model on a new run (``hpsearch.role`` = ``register``) in the study's experiment, and
    registers a new version under the alias ``champion``, even if the alias already
    points at this trial (a version whose registration was killed is finished instead).
    Holds the study lock, so it never races a worker's own registration.

    Raises:
        HpsearchError: no such study, no complete trial, the best trial kept no weights,
            its data set cannot be found, or the stores cannot be reached.
        DiskFull: no space left where it writes.
    """
    with quiet_optuna(), quiet_mlflow():
        with _disk_full_as_one_error(storage, tracking_uri):
            runner = RegisterSession.open(study_name=study_name, storage=storage,
                                          tracking_uri=tracking_uri, data_dir=data_dir,
                                          device=device, reporter=Reporter("value"),
                                          cache_dir=cache_dir)
        status, disk_full = "FAILED", None
        try:
            runner.start_parent(register_name)
            registration = runner.register(register_name, force=True)
            status = "FINISHED"
        except Exception as exc:
            disk_full = runner.disk_full_error(exc)
            if disk_full is None:
                raise
        finally:
            runner.close()
            if disk_full is not None:
                _end_parent_on_full_disk(runner.tracker, disk_full)
            elif runner.tracker.parent_run_id is not None:
                runner.tracker.end_parent(status)
        if disk_full is not None:
            raise disk_full from None
    return registration


def _fill_summary(summary: StudySummary, study: optuna.Study, start: float) -> None:
    states = state_counts(study)
    summary.n_complete, summary.n_pruned = states.get("COMPLETE", 0), states.get("PRUNED", 0)
    summary.n_failed, summary.n_interrupted = states.get("FAIL", 0), states.get("INTERRUPTED", 0)
    if summary.n_complete:
        best = study.best_trial
        summary.best_value, summary.best_trial = best.value, best.number
        summary.best_params = best.user_attrs.get("hyperparameters", best.params)
        summary.reached_best = time_to_best(study)
    summary.wall_seconds = time.perf_counter() - start
