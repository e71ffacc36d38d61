"""Closing the MLflow runs that ended processes left RUNNING (a SIGKILL, a full disk): each
run's status is made to say what happened, with the reason in its tag ``hpsearch.reason``.
(A dead worker's running trial is found by its heartbeat instead:
:func:`~hpsearch.tracking.runs.close_orphaned_trial_run`.)"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

__all__ = ["TrialEnd", "close_orphaned_runs", "running_runs"]


@dataclass(frozen=True)
class TrialEnd:
    """How an Optuna trial that is no longer running ended, for its MLflow run.

    Attributes:
        state: the Optuna state name (COMPLETE, PRUNED, FAIL).
        status: the MLflow run status it calls for (FINISHED, KILLED, FAILED).
        reason: why it was pruned or failed, or None.
        run_id: the run the trial recorded as its own (user attribute ``mlflow_run_id``),
            or None if it failed before recording one.
    """

    state: str
    status: str
    reason: str | None = None
    run_id: str | None = None


def close_orphaned_runs(client: MlflowClient, experiment_id: str,
                        trial_ends: Mapping[int, TrialEnd]) -> int:
    """Close the runs of a study's experiment that ended processes left RUNNING (killed, or
    stopped by a full disk before they could close them):

    - a trial run whose Optuna trial has ended (``trial_ends`` holds its number, and the
      trial names this run as its own or none) gets the status of the trial's state, with
      the trial's reason as ``hpsearch.reason``;
    - a parent run whose process is gone (the tags ``host`` and ``hpsearch.pid`` name this
      machine and a process that no longer runs, or a later one with the same pid) is
      closed KILLED, with the reason.

    Runs of other machines, and trial runs whose Optuna trial still runs (a dead worker's
    trial is found by its heartbeat; see ``RetryStaleTrial``), are left alone.

    Returns:
        How many runs were closed.
    """
    closed = 0
    for run in running_runs(client, experiment_id):
        tags, run_id = run.data.tags, run.info.run_id
        if tags.get("hpsearch.role") == "trial":
            end = trial_ends.get(int(tags.get("optuna.trial_number", -1)))
            # Another run of that number: another study of the same name, in another storage.
            if end is None or end.run_id not in (None, run_id):
                continue
            reason = (f"{end.reason or f'Optuna trial {end.state}'}; its process ended "
                      "without closing this run, closed by a later run")
            client.log_batch(run_id, tags=[RunTag("optuna.state", end.state),
                                           RunTag("hpsearch.reason", reason[:4000])])
            client.set_terminated(run_id, end.status)
        elif _process_gone(tags, run.info.start_time):
            client.set_tag(run_id, "hpsearch.reason",
                           f"its process (pid {tags['hpsearch.pid']} on {tags['host']}) ended "
                           "without closing this run (killed, or its disk was full); closed "
                           "by a later run")
            client.set_terminated(run_id, "KILLED")
        else:
            continue
        closed += 1
    return closed


def running_runs(client: MlflowClient, experiment_id: str) -> list:
    """Every run of the experiment whose status is RUNNING."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def _process_gone(tags: Mapping[str, str], started_ms: int) -> bool:
    """Whether the process that ``tags`` name (``host``, ``hpsearch.pid``) ran on this machine
    and is gone: no such pid, or its pid now belongs to a process started after the run."""
    if tags.get("host") != platform.node() or not tags.get("hpsearch.pid", "").isdigit():
        return False
    pid = int(tags["hpsearch.pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: it exists
        pass
    started = _process_start_time(pid)
    return started is not None and started > started_ms / 1000 + 1.0


def _process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from Linux's /proc; None
    elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # Field 22, starttime, in clock ticks since boot; fields after the command name.
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")
