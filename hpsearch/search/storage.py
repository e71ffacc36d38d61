"""The Optuna storage of a study: create or resume it, load an existing one, retry the trials
of dead workers. Needs Optuna, not torch or MLflow (``hpsearch studies`` and ``show`` answer
in a second)."""

from __future__ import annotations

import time
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch.errors import HpsearchError
from hpsearch.search.config import RunConfig
from hpsearch.studies.components import build_pruner, build_sampler

__all__ = ["RetryStaleTrial", "fail_stale_trials", "load_existing_study", "open_study",
           "storage_error"]


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
        raise storage_error(config.storage, exc) from None
    if study.direction.name.lower() != spec.direction:
        raise HpsearchError(f"study {config.study_name!r} in {config.storage} optimises "
                            f"{study.direction.name.lower()}, but the spec says {spec.direction}")
    if not study.trials:
        # What `hpsearch register STUDY` needs to rebuild the data set later, and the zero
        # of the study's anytime curve.
        study.set_user_attr("hpsearch.dataset", spec.dataset)
        study.set_user_attr("hpsearch.started_at", time.time())
        study.set_user_attr("hpsearch.metric", spec.metric)
        for params in spec.enqueued_params():
            study.enqueue_trial(params, skip_if_exists=True)
    return study


def storage_error(storage: str, exc: Exception) -> HpsearchError:
    """One line saying which storage could not be opened and why."""
    reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    if isinstance(exc, ModuleNotFoundError) and storage.startswith("postgresql"):
        reason += "; install the PostgreSQL driver: pip install 'hpsearch[postgres]'"
    return HpsearchError(f"cannot open Optuna storage {storage!r}: {reason}")


def load_existing_study(study_name: str, storage: str) -> optuna.Study:
    """Load a study that must exist. Raises HpsearchError naming the storage otherwise."""
    try:
        names = optuna.get_all_study_names(storage=storage)
    except Exception as exc:  # SQLAlchemy's errors vary by driver; say which URL failed
        raise storage_error(storage, exc) from None
    if study_name not in names:
        raise HpsearchError(f"no study {study_name!r} in {storage}; see `hpsearch studies`")
    return optuna.load_study(study_name=study_name, storage=storage)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and retry) the running trials whose workers stopped sending heartbeats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


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
