"""The Optuna storage of a study: create or resume it, load an existing one, retry the trials
of dead workers. Needs Optuna, not torch or MLflow (``hpsearch studies`` and ``show`` answer
in a second)."""

from __future__ import annotations

import json
import logging
import platform
import time
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch.errors import HpsearchError, error_line, is_disk_full
from hpsearch.redact import redact_url
from hpsearch.search.config import RunConfig
from hpsearch.studies.components import build_pruner, build_sampler

__all__ = ["RetriesFirstStudy", "RetryStaleTrial", "close_runs_of_ended_processes",
           "fail_abandoned_trials", "fail_stale_trials", "load_existing_study", "open_study",
           "recorded_definition", "retry_interrupted", "storage_error", "study_definition"]

DEFINITION_ATTR = "hpsearch.definition"


class _HeartbeatTolerantStorage(optuna.storages.RDBStorage):
    """An RDBStorage whose heartbeat writes may fail without a traceback.

    Optuna records heartbeats from a thread of its own; a write that fails there (the
    database busy or closing while Ctrl-C stops the workers) printed the thread's traceback.
    One missed heartbeat is harmless (a trial goes stale only after three intervals), so it
    is logged in one line instead.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:  # SQLAlchemy's errors vary by driver
            if is_disk_full(exc):  # the trial's next write stops the study, in one line
                return
            logging.getLogger(__name__).warning(
                "heartbeat of trial id %d not recorded: %s", trial_id, error_line(exc))


class RetriesFirstStudy(optuna.Study):
    """A study whose waiting retries (trials with a ``retry_history``: an interrupted
    trial's, a dead worker's) run before its other waiting trials.

    Optuna runs waiting trials in the order they were added, so a retry, enqueued when the
    run resumes, would wait behind the spec's enqueued trials that no trial has taken yet:
    the interrupted training, continued from its checkpoint, would come last instead of
    first. Optuna 5's ``Study.ask`` takes the next waiting trial from
    ``_pop_waiting_trial_id``; this one offers the retries first, oldest first, and takes
    a trial as Optuna does (the storage's atomic WAITING -> RUNNING).
    """

    def _pop_waiting_trial_id(self) -> int | None:
        waiting = self._storage.get_all_trials(self._study_id, deepcopy=False,
                                               states=(TrialState.WAITING,))
        ordered = sorted(waiting, key=lambda t: (not t.system_attrs.get("retry_history"),
                                                 t.number))
        for trial in ordered:
            try:
                if self._storage.set_trial_state_values(trial._trial_id,
                                                        state=TrialState.RUNNING):
                    return trial._trial_id
            except optuna.exceptions.UpdateFinishedTrialError:  # another worker finished it
                continue
        return None


def open_study(config: RunConfig, tracking_uri: str,
               data_record: dict[str, Any] | None = None) -> optuna.Study:
    """Create the study, or load it to resume.

    The storage keeps heartbeats of running trials: a trial whose worker died is failed by
    the next worker and retried with the same parameters (:class:`RetryStaleTrial`).
    Retries run before the other waiting trials (:class:`RetriesFirstStudy`).

    Args:
        config: the run's settings.
        tracking_uri: where the study's MLflow runs go (a dead worker's runs are closed).
        data_record: own images: what the study records of its data (a
            :class:`~hpsearch.search.data.DataRecord`, with ``differences``); a new study
            keeps it, a resumed one must have been created on the same data.

    Raises:
        HpsearchError: a bad storage; a resumed study whose settings or images changed
            (the message names each change and suggests ``--study-name``).
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
            storage = _HeartbeatTolerantStorage(
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
        study = RetriesFirstStudy(study_name=study.study_name, storage=storage,
                                  sampler=study.sampler, pruner=study.pruner)
    except Exception as exc:  # SQLAlchemy's errors vary by driver; say which URL failed
        if is_disk_full(exc):  # not a bad storage: the run stops with exit code 74
            raise
        raise storage_error(config.storage, exc) from None
    _check_definition(study, config)
    if data_record is not None:
        _check_data(study, config, data_record)
    if not study.trials:
        # What `hpsearch register STUDY` needs to rebuild the data set later, and the zero
        # of the study's anytime curve.
        study.set_user_attr("hpsearch.dataset", spec.dataset)
        study.set_user_attr("hpsearch.started_at", time.time())
        study.set_user_attr("hpsearch.metric", spec.metric)
        for params in spec.enqueued_params():
            study.enqueue_trial(params, skip_if_exists=True)
    return study


def study_definition(config: RunConfig) -> dict[str, Any]:
    """What defines a study: its trials are comparable only if all of these stay the same
    (another validation split, epoch budget or space would rank unlike trials together)."""
    spec = config.spec
    definition = {"dataset": spec.dataset, "search_space": spec.to_dict()["search_space"],
                  "epochs": spec.epochs, "metric": spec.metric, "direction": spec.direction,
                  "val_fraction": spec.val_fraction, "augment": spec.augment,
                  "train_subset": config.train_subset, "seed": config.seed}
    if spec.images is not None:  # own images only: a built-in study's stays as it was
        definition["images"] = spec.images.to_dict()
    return definition


def recorded_definition(storage: str, study_name: str) -> dict[str, Any] | None:
    """The definition study ``study_name`` recorded when it was created, or None when there
    is no such study (or it is older than definitions). Reads only: a sqlite file that does
    not exist is not created. Call under :func:`~hpsearch.search.coordination.schema_lock`
    (another storage's schema is created on first use).

    Raises:
        HpsearchError: the storage cannot be opened.
    """
    from hpsearch.search.preflight import sqlite_file

    path = sqlite_file(storage)
    if path is not None and not path.exists():
        return None
    try:
        rdb = optuna.storages.RDBStorage(storage)
        try:
            study_id = rdb.get_study_id_from_name(study_name)
        except KeyError:
            return None
        return rdb.get_study_user_attrs(study_id).get(DEFINITION_ATTR)
    except Exception as exc:  # SQLAlchemy's errors vary by driver; say which URL failed
        raise storage_error(storage, exc) from None


def _check_definition(study: optuna.Study, config: RunConfig) -> None:
    """Record the study's definition when it is new (or older than this check); refuse to
    resume it with another one.

    Raises:
        HpsearchError: the settings differ from those the study was created with; the
            message names each differing key with its old and new value.
    """
    new = json.loads(json.dumps(study_definition(config)))  # as the storage keeps it
    old = study.user_attrs.get(DEFINITION_ATTR)
    if old is None:
        direction = study.direction.name.lower()
        if study.trials and direction != config.spec.direction:
            old = {"direction": direction}
        else:
            study.set_user_attr(DEFINITION_ATTR, new)
            return
    changes = _differences(old, new)
    if changes:
        raise HpsearchError(
            f"study {config.study_name!r} in {redact_url(config.storage)} was created with "
            f"other settings: {'; '.join(changes)}. Its trials would not be comparable: run "
            f"it with the settings it was created with, or start a new study with "
            f"--study-name (e.g. --study-name {config.study_name}-2)")


def _check_data(study: optuna.Study, config: RunConfig, record: Any) -> None:
    """Keep the own images' record of a new study (or of one older than this check);
    refuse to resume a study on images that changed.

    Raises:
        HpsearchError: naming what changed (files added or removed per split and class,
            classes, image size) and suggesting ``--study-name``.
    """
    from hpsearch.search.data import DATA_ATTR, DataRecord, listed

    old = study.user_attrs.get(DATA_ATTR)
    if old is None:
        study.set_user_attr(DATA_ATTR, json.loads(json.dumps(record)))
        return
    changes = DataRecord(old).differences(record)
    if changes:
        raise HpsearchError(
            f"study {config.study_name!r} in {redact_url(config.storage)} was created on "
            f"other images: {listed(changes)}. Its trials would not be comparable: "
            f"restore the images it was created with, or start a new study on these with "
            f"--study-name (e.g. --study-name {config.study_name}-2; the data report of "
            f"the study's first run lists its files, data/splits.csv)")


def _differences(old: Any, new: Any, key: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two nested mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for name in dict.fromkeys([*old, *new])
                for change in _differences(old.get(name), new.get(name),
                                           f"{key}.{name}" if key else name)]
    return [] if old == new else [f"{key} {old!r} -> {new!r}"]


def storage_error(storage: str, exc: Exception) -> HpsearchError:
    """One line saying which storage could not be opened and why."""
    reason = error_line(exc)
    if isinstance(exc, ModuleNotFoundError) and storage.startswith("postgresql"):
        reason += "; install the PostgreSQL driver: pip install 'hpsearch[postgres]'"
    return HpsearchError(f"cannot open Optuna storage {redact_url(storage)!r}: {reason}")


def load_existing_study(study_name: str, storage: str) -> optuna.Study:
    """Load a study that must exist. Raises HpsearchError naming the storage otherwise."""
    try:
        names = optuna.get_all_study_names(storage=storage)
    except Exception as exc:  # SQLAlchemy's errors vary by driver; say which URL failed
        raise storage_error(storage, exc) from None
    if study_name not in names:
        raise HpsearchError(f"no study {study_name!r} in {redact_url(storage)}; see "
                            "`hpsearch studies`")
    return optuna.load_study(study_name=study_name, storage=storage)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and retry) the running trials whose workers stopped sending heartbeats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def retry_interrupted(study: optuna.Study) -> list[int]:
    """Enqueue a retry of every interrupted trial (Ctrl-C, SIGTERM) not retried yet, with
    its parameters, as Optuna retries a dead worker's trial (``retry_history``, so its run is
    tagged ``hpsearch.retry_of`` and it continues from the trial's checkpoint). The retry
    carries the trial's ``hyperparameters`` (plain names: ``hpsearch show`` lists it under
    them while it waits). Call under the study lock.

    Returns:
        The numbers of the interrupted trials now enqueued again.
    """
    trials = study.get_trials(deepcopy=False)
    # A retry's history ends with the trial it retries: those are taken care of.
    taken = {t.system_attrs["retry_history"][-1] for t in trials
             if t.system_attrs.get("retry_history")}
    retried = []
    for trial in trials:
        if (trial.state != TrialState.FAIL or trial.number in taken
                or trial.user_attrs.get("failure_kind") != "interrupted"):
            continue
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs=({"hyperparameters": trial.user_attrs["hyperparameters"]}
                        if "hyperparameters" in trial.user_attrs else None),
            system_attrs={"failed_trial": history[0], "retry_history": history}))
        retried.append(trial.number)
    return retried


def close_runs_of_ended_processes(study: optuna.Study, client: Any, experiment_id: str) -> int:
    """Close the study's MLflow runs left RUNNING by processes that ended (killed, or
    stopped by a full disk): trial runs get their Optuna trial's state, parent runs of gone
    processes KILLED (:func:`~hpsearch.tracking.orphans.close_orphaned_runs`).

    Args:
        study: the Optuna study.
        client: an ``MlflowClient`` of the study's tracking store.
        experiment_id: the study's experiment.

    Returns:
        How many runs were closed.
    """
    from hpsearch.tracking.orphans import TrialEnd, close_orphaned_runs
    from hpsearch.tracking.runs import RUN_STATUS

    ends = {}
    for trial in study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        state = trial.state.name
        interrupted = trial.user_attrs.get("failure_kind") == "interrupted"
        ends[trial.number] = TrialEnd(
            state=state, status="KILLED" if interrupted else RUN_STATUS[state],
            reason=trial.user_attrs.get("fail_reason") or trial.user_attrs.get("prune_reason"),
            run_id=trial.user_attrs.get("mlflow_run_id"))
    return close_orphaned_runs(client, experiment_id, ends)


def fail_abandoned_trials(study: optuna.Study, client: Any, experiment_id: str,
                          pids: set[int], reason: str) -> list[int]:
    """Fail as interrupted the trials that killed worker processes left RUNNING: those whose
    MLflow run is still RUNNING and names this machine (tag ``host``) and one of ``pids``
    (tag ``hpsearch.pid``: several machines may share the stores), then close
    those runs KILLED (:func:`close_runs_of_ended_processes`). For workers that were sent a
    termination signal and did not record their trial before being killed.

    Args:
        study: the Optuna study.
        client: an ``MlflowClient`` of the study's tracking store.
        experiment_id: the study's experiment.
        pids: the killed workers' process ids.
        reason: the trials' ``fail_reason`` ("interrupted by SIGINT").

    Returns:
        The numbers of the trials failed.
    """
    from hpsearch.tracking.orphans import running_runs

    wanted, host = {str(pid) for pid in pids}, platform.node()
    storage, failed = study._storage, []
    for run in running_runs(client, experiment_id):
        tags = run.data.tags
        if (tags.get("hpsearch.role") != "trial" or tags.get("host") != host
                or tags.get("hpsearch.pid") not in wanted):
            continue  # another process's trial, maybe on another machine
        number = int(tags.get("optuna.trial_number", -1))
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        except KeyError:
            continue
        if storage.get_trial(trial_id).state != TrialState.RUNNING:
            continue
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        storage.set_trial_user_attr(trial_id, "failure_kind", "interrupted")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        failed.append(number)
    if failed:
        close_runs_of_ended_processes(study, client, experiment_id)
    return failed


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

            from hpsearch.tracking.runs import close_orphaned_trial_run

            close_orphaned_trial_run(
                MlflowClient(tracking_uri=self.tracking_uri), run_id, retried_as=retried_as,
                reason="worker died (no heartbeat); retried as trial "
                       f"{retried_as}" if retried_as is not None else "worker died")
