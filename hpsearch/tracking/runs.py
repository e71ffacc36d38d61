"""MLflow tracking of a study: one experiment per study, one parent run per ``hpsearch run``,
one nested run per trial (the shape of MLflow's own HPO example).

Everything goes through an explicit ``MlflowClient`` and run ids, never the fluent API's
global "active run", so a trial's run cannot leak into another's.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from mlflow.entities import DatasetInput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient

from hpsearch import defaults
from hpsearch.data_utils.own_images import class_key_parts
from hpsearch.errors import DiskFull, is_disk_full
from hpsearch.tracking.figures import confusion_matrix_figure, learning_curves_figure, log_figure
from hpsearch.training.loop import EpochResult, EvalResult
from hpsearch.training.metrics import per_class_report

__all__ = ["CHECKPOINT_PATH", "RUN_STATUS", "WEIGHTS_TAG", "StudyTracker", "TrialRun",
           "close_orphaned_trial_run", "delete_checkpoint", "log_confusion"]

# Where a trial's weights (a state dict, loadable with weights_only=True) are logged.
CHECKPOINT_PATH = "checkpoint/state_dict.pt"
# The tag of a trial run whose logged weights were deleted, saying why.
WEIGHTS_TAG = "hpsearch.weights"
# Seconds between samples of the system metrics (CPU, memory, GPU) of a trial's run and of
# the parent run: a trial of a few seconds still gets samples; the parent run spans hours.
TRIAL_SAMPLING_S = 2.0
PARENT_SAMPLING_S = 10.0
# Optuna trial state -> MLflow run status. A pruned trial was stopped early on purpose:
# KILLED, never FAILED.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def _disk_full_in_one_line(method):
    """Raise a full store's error as :class:`~hpsearch.errors.DiskFull`, whose message is
    one line: MLflow's own error carries the failed SQL statement and all its parameters
    (metric names, values, run ids), which a trial's failure reason and the progress
    display would show."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            if is_disk_full(exc) and not isinstance(exc, DiskFull):
                raise DiskFull() from exc
            raise

    return wrapper


class StudyTracker:
    """The MLflow experiment of one study and the parent run of this ``hpsearch run``.

    Args:
        tracking_uri: MLflow tracking URI (already resolved).
        study_name: the Optuna study name; also the experiment's name.
        system_metrics: sample MLflow's system metrics on the parent run and every trial
            run; None: as ``$HPSEARCH_SYSTEM_METRICS`` says (on unless ``0``).
    """

    def __init__(self, *, tracking_uri: str, study_name: str,
                 system_metrics: bool | None = None) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        self.system_metrics = (defaults.system_metrics() if system_metrics is None
                               else system_metrics)
        self.experiment_id = self._experiment(study_name)
        self.parent_run_id: str | None = None
        self.parent_monitor: SystemMetricsMonitor | None = None
        self.run_tags: dict[str, str] = {}  # provenance, set on every run
        self.inputs: list[DatasetInput] = []  # the data splits trials train and validate on

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        try:
            return self.client.create_experiment(name, tags={
                "hpsearch.study": name,
                # Makes MLflow 3's UI open the runs table, not its GenAI (traces) overview.
                "mlflow.experimentKind": "custom_model_development",
            })
        except MlflowException:
            # Another worker created it between our look-up and create: use theirs.
            return self.client.get_experiment_by_name(name).experiment_id

    def start_parent(self, *, params: Mapping[str, Any], spec_yaml: str | None,
                     run_tags: Mapping[str, str] | None = None,
                     inputs: Sequence[DatasetInput] = (), role: str = "study") -> str:
        """Open this invocation's parent run with its settings and the resolved spec.

        ``role`` is ``study`` for ``hpsearch run``, ``register`` for ``hpsearch register``
        (a run holding only the test evaluation and the registered model).

        ``run_tags`` (provenance) and ``inputs`` (the training and validation splits) are
        recorded on the parent run and on every trial run.
        """
        self.run_tags, self.inputs = dict(run_tags or {}), list(inputs)
        run_name = f"{role if role != 'study' else self.study_name}-" \
                   f"{time.strftime('%Y%m%d-%H%M%S')}"
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={"hpsearch.role": role, "optuna.study_name": self.study_name,
                  **self.run_tags},
        )
        if self.inputs:
            self.client.log_inputs(run.info.run_id, datasets=self.inputs)
        self.parent_run_id = run.info.run_id
        self.parent_monitor = self._monitor(self.parent_run_id, PARENT_SAMPLING_S)
        self.client.log_batch(
            self.parent_run_id, params=[Param(k, str(v)) for k, v in params.items()]
        )
        if spec_yaml is not None:
            self.client.log_text(self.parent_run_id, spec_yaml, "spec.yaml")
        return self.parent_run_id

    def attach_parent(self, parent_run_id: str, *, run_tags: Mapping[str, str] | None = None,
                      inputs: Sequence[DatasetInput] = ()) -> None:
        """Nest this worker's trial runs under a parent run another process opened
        (``--jobs``): the same parent, this worker's own provenance tags."""
        self.parent_run_id = parent_run_id
        self.run_tags, self.inputs = dict(run_tags or {}), list(inputs)

    @_disk_full_in_one_line
    def trial_run(self, trial_number: int, params: Mapping[str, Any], *,
                  retry_of: int | None = None) -> TrialRun:
        """Open the nested run of trial ``trial_number`` and log its hyperparameters.

        ``retry_of`` is the number of the trial this one retries (after its worker died).
        """
        tags = {
            **self.run_tags,
            "mlflow.parentRunId": self.parent_run_id,
            "hpsearch.role": "trial",
            "optuna.study_name": self.study_name,
            "optuna.trial_number": str(trial_number),
            "optuna.state": "RUNNING",
        }
        if retry_of is not None:
            tags["hpsearch.retry_of"] = str(retry_of)
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{trial_number:04d}", tags=tags)
        run_id = run.info.run_id
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        if self.inputs:
            self.client.log_inputs(run_id, datasets=self.inputs)
        return TrialRun(self.client, run_id, monitor=self._monitor(run_id, TRIAL_SAMPLING_S))

    def log_best(self, *, value: float, step: int, trial_number: int,
                 params: Mapping[str, Any] | None = None) -> None:
        """Record the best value so far on the parent run (metric ``best_value`` at
        ``step``); with ``params`` (a new best), also its trial and params as tags."""
        tags = []
        if params is not None:
            tags = [RunTag("best_trial", str(trial_number))]
            tags += [RunTag(f"best_params.{k}", str(v)) for k, v in params.items()]
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.parent_run_id, metrics=[Metric("best_value", value, now, step)], tags=tags
        )

    def log_test_evaluation(self, result: EvalResult, class_names: Sequence[str], *,
                            trial_number: int, autocast_accuracy: float | None = None) -> None:
        """The champion's test loss, accuracy, confusion matrix and per-class report, on the
        parent run; ``autocast_accuracy`` (the accuracy under the training device's autocast)
        as the metric ``test_accuracy_autocast``."""
        now = int(time.time() * 1000)
        metrics = [Metric("test_accuracy", result.accuracy, now, 0),
                   Metric("test_loss", result.loss, now, 0)]
        if autocast_accuracy is not None:
            metrics.append(Metric("test_accuracy_autocast", autocast_accuracy, now, 0))
        self.client.log_batch(self.parent_run_id, metrics=metrics)
        log_confusion(self.client, self.parent_run_id, result, class_names,
                      split="test", name="test_confusion_matrix",
                      title=f"test set, trial {trial_number}")
        self.client.log_dict(self.parent_run_id,
                             per_class_report(result.confusion, class_names),
                             "test_per_class_report.json")

    def end_parent(self, status: str = "FINISHED", *, reason: str | None = None) -> None:
        """End the parent run with ``status``; ``reason`` (why it did not finish) becomes its
        tag ``hpsearch.reason``."""
        if self.parent_monitor is not None:
            stop_monitor(self.parent_monitor)
            self.parent_monitor = None
        if self.parent_run_id is not None:
            if reason:
                self.client.set_tag(self.parent_run_id, "hpsearch.reason", reason)
            self.client.set_terminated(self.parent_run_id, status)

    def _monitor(self, run_id: str, sampling_s: float) -> SystemMetricsMonitor | None:
        """MLflow's system metrics of ``run_id`` (``system/cpu_utilization_percentage``,
        ``system/system_memory_usage_megabytes``, and on NVIDIA GPUs
        ``system/gpu_0_utilization_percentage`` and ``system/gpu_0_memory_usage_megabytes``,
        ...), sampled every ``sampling_s`` seconds by a background thread, or None when off."""
        if not self.system_metrics:
            return None
        monitor = SystemMetricsMonitor(run_id, sampling_interval=sampling_s,
                                       tracking_uri=self.tracking_uri)
        monitor.start()
        return monitor


class TrialRun:
    """The nested MLflow run of one trial (and its system metrics monitor, if any)."""

    def __init__(self, client: MlflowClient, run_id: str, *,
                 monitor: SystemMetricsMonitor | None = None) -> None:
        self.client, self.run_id, self.monitor = client, run_id, monitor

    @_disk_full_in_one_line
    def log_epoch(self, result: EpochResult) -> None:
        """Log the epoch's metrics with step = epoch, in one request."""
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, result.epoch) for k, v in result.metrics().items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    @_disk_full_in_one_line
    def log_cost(self, cost: Mapping[str, float | None]) -> None:
        """What the trial cost, as metrics: ``parameters``, ``macs_per_image`` (forward, one
        image), ``train_seconds``, ``trial_seconds`` (wall, validation and logging
        included) and ``mean_images_per_second`` (training)."""
        names = {"parameters": "parameters", "macs_per_image": "macs_per_image",
                 "train_seconds": "train_seconds", "seconds": "trial_seconds",
                 "images_per_second": "mean_images_per_second"}
        now = int(time.time() * 1000)
        metrics = [Metric(name, float(cost[key]), now, 0) for key, name in names.items()
                   if cost.get(key) is not None]
        self.client.log_batch(self.run_id, metrics=metrics)

    @_disk_full_in_one_line
    def log_checkpoint(self, model: torch.nn.Module) -> None:
        """Log the model's state dict (tensors only) at :data:`CHECKPOINT_PATH`."""
        buffer = io.BytesIO()
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, buffer)
        self._log_bytes(buffer.getvalue(), CHECKPOINT_PATH)

    @_disk_full_in_one_line
    def finish(self, state: str, history: Sequence[EpochResult], class_names: Sequence[str],
               *, reason: str | None = None, value: float | None = None,
               status: str | None = None, tags: Mapping[str, str] | None = None) -> None:
        """Log the curves and last validation confusion matrix, then end the run.

        Args:
            state: the Optuna trial state name: COMPLETE, PRUNED or FAIL.
            history: the epochs the trial trained (possibly none, if it failed early).
            class_names: for the confusion matrix axes.
            reason: one line on why the trial was pruned or failed.
            value: the trial's objective value, if it has one.
            status: the MLflow run status, if not the one :data:`RUN_STATUS` maps ``state``
                to (an interrupted trial FAILs in Optuna but its run ends KILLED).
            tags: more tags to set.
        """
        if history:
            last = history[-1]
            log_confusion(self.client, self.run_id, last.val, class_names, split="validation",
                          name="confusion_matrix", title=f"validation, epoch {last.epoch}",
                          epoch=last.epoch)
            self._log_per_class(per_class_report(last.val.confusion, class_names), last.epoch)
            title = f"{state.lower()} after {last.epoch} epoch(s)"
            log_figure(self.client, self.run_id,
                       lambda: learning_curves_figure(history, title=title), "learning_curves.png")
        run_tags = [RunTag("optuna.state", state), RunTag("epochs_run", str(len(history)))]
        if reason:
            run_tags.append(RunTag("hpsearch.reason", reason[:4000]))
        if value is not None:
            run_tags.append(RunTag("optuna.value", repr(value)))
            # A sortable column in the UI; pruned and failed runs have none and sort last.
            self.client.log_metric(self.run_id, "objective", value)
        run_tags += [RunTag(k, v) for k, v in (tags or {}).items()]
        self.client.log_batch(self.run_id, tags=run_tags)
        if self.monitor is not None:
            stop_monitor(self.monitor)
        self.client.set_terminated(self.run_id, status or RUN_STATUS[state])

    def _log_per_class(self, report: dict, epoch: int) -> None:
        """Validation precision, recall and F1 per class: a JSON and metrics (step = epoch)
        under keys ``val_f1/<class>`` whose class part is valid and distinct for any class
        name (:func:`~hpsearch.data_utils.own_images.class_key_parts`). The macro F1 is an
        epoch metric (:meth:`log_epoch`)."""
        self.client.log_dict(self.run_id, report, "per_class_report.json")
        now = int(time.time() * 1000)
        parts = class_key_parts(list(report["classes"]))
        metrics = [Metric(f"val_{kind}/{part}", scores[kind], now, epoch)
                   for part, scores in zip(parts, report["classes"].values())
                   for kind in ("precision", "recall", "f1")]
        self.client.log_batch(self.run_id, metrics=metrics)

    def _log_bytes(self, data: bytes, artifact_path: str) -> None:
        directory, name = os.path.split(artifact_path)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(data)
            self.client.log_artifact(self.run_id, path, directory or None)


def stop_monitor(monitor: SystemMetricsMonitor) -> None:
    """Stop ``monitor``. MLflow publishes system metrics only after a full logging period
    (``samples_before_logging`` samples) and drops a partial one at shutdown, so a run
    shorter than one period would get none: it gets the samples taken so far instead."""
    monitor.finish()
    try:
        if monitor._logging_step == 0:  # nothing published (MLflow has no public count)
            metrics = monitor.aggregate_metrics()
            if metrics:
                monitor.publish_metrics(metrics)
                monitor.mlflow_logger.flush()
    except AttributeError:  # another MLflow's internals: leave it to MLflow
        pass


def close_orphaned_trial_run(client: MlflowClient, run_id: str, *, reason: str,
                             retried_as: int | None) -> None:
    """End the run of a trial whose worker died (no heartbeat) as KILLED, and its parent
    run too if it is still open and the trial ran in the parent's own process: then that
    process is dead. (A ``--jobs`` worker's parent run belongs to its coordinator.)"""
    tags = [RunTag("optuna.state", "FAIL"), RunTag("hpsearch.reason", reason)]
    if retried_as is not None:
        tags.append(RunTag("hpsearch.retried_as", str(retried_as)))
    client.log_batch(run_id, tags=tags)
    run = client.get_run(run_id)
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, "KILLED")
    parent_id = run.data.tags.get("mlflow.parentRunId")
    if not parent_id:
        return
    parent = client.get_run(parent_id)
    same_process = (parent.data.tags.get("hpsearch.pid") == run.data.tags.get("hpsearch.pid")
                    and parent.data.tags.get("host") == run.data.tags.get("host"))
    if parent.info.status == "RUNNING" and same_process:
        client.set_tag(parent_id, "hpsearch.reason", "worker died; see its KILLED trial runs")
        client.set_terminated(parent_id, "KILLED")


def delete_checkpoint(client: MlflowClient, run_id: str, *, tracking_uri: str,
                      reason: str) -> None:
    """Delete a trial run's logged weights (the folder of :data:`CHECKPOINT_PATH`) from its
    artifact store, through MLflow's artifact repository for the run's artifact URI (a
    local folder, ``mlflow-artifacts:`` through the tracking server, S3, GCS, Azure, ...),
    and tag the run :data:`WEIGHTS_TAG` = ``deleted: REASON``. Deleting weights already
    gone does nothing.

    Raises:
        MlflowException, OSError: the store refuses (a server without artifact deletion,
            no permission); nothing is tagged then.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    artifact_uri = client.get_run(run_id).info.artifact_uri
    repository = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    repository.delete_artifacts(os.path.dirname(CHECKPOINT_PATH))
    client.set_tag(run_id, WEIGHTS_TAG, f"deleted: {reason}")


def log_confusion(client: MlflowClient, run_id: str, result: EvalResult,
                  class_names: Sequence[str], *, split: str, name: str, title: str,
                  epoch: int | None = None) -> None:
    """Log a confusion matrix as ``{name}.json`` (counts, rows = true) and ``{name}.png``
    (unless ``$HPSEARCH_FIGURES`` is 0)."""
    counts = np.asarray(result.confusion)
    payload = {
        "split": split,
        "epoch": epoch,
        "class_names": list(class_names),
        "counts": counts.tolist(),
        "accuracy": result.accuracy,
        "rows": "true class",
        "columns": "predicted class",
    }
    client.log_dict(run_id, payload, f"{name}.json")
    log_figure(client, run_id, lambda: confusion_matrix_figure(counts, class_names, title=title),
               f"{name}.png")


