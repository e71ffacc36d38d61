"""Concurrent trials: ``--jobs N`` worker processes on one study, one progress display.

Each worker is its own process (started with ``spawn``: CUDA cannot be forked) and runs the
same :class:`~hpsearch.search.runner.RunSession` as a single ``hpsearch run``, against the
same Optuna storage and MLflow tracking store, so trial slots, heartbeats and retries work
between them exactly as between workers on different machines. Small models leave a GPU
mostly idle; several side by side keep it busy.

Workers send their progress lines here, and this process prints them tagged ``[wK]``: one
display. Each worker has a pipe of its own: a worker killed in the middle of a write can then
garble only its own pipe, whereas with one shared ``multiprocessing.Queue`` it can die
holding the queue's lock and hang every other worker (seen: a SIGKILLed worker left the
survivor unable to exit). Workers run in their own process groups, so a Ctrl-C in the
terminal reaches only this process, which passes the signal on to each worker exactly once.
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait

from hpsearch._testhooks import limit
from hpsearch.errors import (
    EX_IOERR,
    HpsearchError,
    check_interrupted,
    handle_termination_signals,
    ignore_further_signals,
    is_disk_full,
    signals_deferred,
)
from hpsearch.search.config import RunConfig, StudySummary
from hpsearch.search.progress import Reporter

__all__ = ["PipeReporter", "run_workers", "worker_main"]

SHUTDOWN_S = 120.0  # how long interrupted workers get to record their trials
_STACKS_SIGNAL = getattr(signal, "SIGUSR1", None)  # none on Windows


class PipeReporter(Reporter):
    """A worker's reporter: lines go to the coordinating process instead of a stream."""

    def __init__(self, connection: Connection, metric: str, *, verbose: bool) -> None:
        super().__init__(metric, verbose=verbose, live=False)  # lines, never a redrawn one
        self.connection = connection

    def say(self, line: str) -> None:
        self.connection.send(("line", line))


def run_workers(config: RunConfig, *, jobs: int, parent_run_id: str, deadline: float | None,
                reporter: Reporter, on_idle: Callable[[], None],
                on_killed: Callable[[set[int], int], None] | None = None
                ) -> tuple[str | None, int]:
    """Run ``jobs`` worker processes on the study until all have ended.

    Args:
        config: what every worker runs.
        jobs: number of worker processes (>= 2).
        parent_run_id: the MLflow parent run their trial runs nest under.
        deadline: ``time.time()`` after which no worker starts a trial, or None.
        reporter: prints the workers' lines.
        on_idle: called about once a second while waiting (study report refreshes).
        on_killed: after an interrupt, called with the process ids of the workers that did
            not end within :data:`SHUTDOWN_S` and were killed, and the signal number: their
            running trials are still RUNNING.

    Returns:
        Why the workers stopped early (timeout, too many failures) or None, and the exit code
        that calls for (1 when trials kept failing, else 0).

    Raises:
        KeyboardInterrupt: this process got SIGINT/SIGTERM; the workers got it too and
            have ended (their running trials recorded as interrupted) when it is raised.
    """
    context = multiprocessing.get_context("spawn")
    workers, pipes = [], {}
    for k in range(1, jobs + 1):
        receiving, sending = context.Pipe(duplex=False)
        worker = context.Process(target=worker_main, name=f"hpsearch-worker-{k}",
                                 args=(config, k, parent_run_id, deadline, sending,
                                       reporter.verbose))
        worker.start()
        sending.close()  # the worker holds the only writing end: EOF when it is gone
        workers.append(worker)
        pipes[receiving] = k
    stop_reasons: dict[int, tuple[str | None, int]] = {}
    try:
        _pump(workers, pipes, reporter, stop_reasons, on_idle)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        ignore_further_signals()  # one signal per worker, no more
        for worker in workers:
            if worker.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signum)
        killed = _pump(workers, pipes, reporter, stop_reasons, lambda: None,
                       timeout_s=limit("workers.shutdown_s", SHUTDOWN_S))
        if killed and on_killed is not None:
            on_killed(killed, signum)
        raise
    if not stop_reasons:
        return f"all {jobs} workers died", 1
    stopped = sorted((r for r in stop_reasons.values() if r[0]), key=lambda r: -r[1])
    return stopped[0] if stopped else (None, 0)


def _pump(workers: list, pipes: dict[Connection, int], reporter: Reporter,
          stop_reasons: dict, on_idle: Callable[[], None],
          timeout_s: float | None = None) -> set[int]:
    """Print the workers' lines until every worker has ended and its pipe is drained (or
    ``timeout_s`` passed: then the rest are killed, and their process ids returned). A
    worker that dies is reported when it happens."""
    end = None if timeout_s is None else time.monotonic() + timeout_s
    reported: set[int] = set()
    while pipes:
        check_interrupted()
        ready_pipes = wait(list(pipes), timeout=1.0)
        for ready in ready_pipes:
            k = pipes[ready]
            try:
                kind, payload = ready.recv()
            except (EOFError, OSError):  # the worker exited (or died mid-message)
                ready.close()
                del pipes[ready]
                continue
            if kind == "line":
                reporter.say(f"[w{k}] {payload}")
            elif kind == "done":
                stop_reasons[k] = payload
        for k, worker in enumerate(workers, start=1):
            if k not in reported and worker.exitcode not in (0, None) and k not in stop_reasons:
                reporter.say(f"[w{k}] worker ended with {_exit_text(worker.exitcode)}")
                reported.add(k)
        if end is not None and time.monotonic() > end:
            return _kill_stuck(workers, reporter, timeout_s)
        if not ready_pipes:
            with signals_deferred():  # the study report's writes: whole, then the signal
                on_idle()
    for worker in workers:
        worker.join()
    return set()


def _kill_stuck(workers: list, reporter: Reporter, timeout_s: float | None) -> set[int]:
    """Kill the workers still alive after the shutdown time, each after printing its
    threads' stacks to stderr (SIGUSR1, see :func:`worker_main`): where it was stuck."""
    stuck = [(k, w) for k, w in enumerate(workers, start=1) if w.is_alive()]
    if stuck and _STACKS_SIGNAL is not None:
        for _, worker in stuck:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, _STACKS_SIGNAL)
        time.sleep(1.0)  # the dump is written by the worker's C signal handler
    for k, worker in stuck:
        reporter.say(f"[w{k}] did not end within {timeout_s:.0f} s of the signal; killed "
                     "(its stack is printed above)")
        worker.kill()
        worker.join()
    return {worker.pid for _, worker in stuck}


def _exit_text(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name} (its trial is retried by another worker)"
    return f"exit code {code}"


def worker_main(config: RunConfig, worker: int, parent_run_id: str, deadline: float | None,
                connection: Connection, verbose: bool) -> None:
    """A worker process: open the study and the tracker, then run trials until done."""

    os.setpgid(0, 0)  # see the module docstring: signals come from the coordinator only
    if _STACKS_SIGNAL is not None:  # a stuck worker's stacks, on the coordinator's asking
        faulthandler.register(_STACKS_SIGNAL, all_threads=True)
    handle_termination_signals()
    reporter = PipeReporter(connection, config.spec.metric, verbose=verbose)
    reporter.say(f"worker started, pid {os.getpid()}")
    try:
        stopped = _work(config, worker, parent_run_id, deadline, reporter)
    except KeyboardInterrupt as exc:
        ignore_further_signals()
        connection.send(("done", (None, 0)))
        sys.exit(getattr(exc, "exit_code", 130))
    except HpsearchError as exc:
        reporter.say(f"error: {exc}")
        sys.exit(2)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        # The coordinator says it in one line, with the directory and its free space.
        connection.send(("done", ("no space left on device", EX_IOERR)))
        sys.exit(EX_IOERR)
    connection.send(("done", stopped))


def _work(config: RunConfig, worker: int, parent_run_id: str, deadline: float | None,
          reporter: Reporter) -> tuple[str | None, int]:
    import optuna
    import torch

    from hpsearch.search.gpu_sharing import worker_threads
    from hpsearch.search.runner import RunSession

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # this process's own setting
    # Share the cores instead of each worker taking all of them, on a GPU too.
    torch.set_num_threads(worker_threads(config.jobs))
    runner = RunSession.open(config, reporter)
    summary = StudySummary(study_name=config.study_name,
                           tracking_uri=runner.tracker.tracking_uri)
    try:
        # The coordinator loads no training data: the first worker logs the data report.
        runner.attach_parent(parent_run_id, log_data=worker == 1)
        runner.work(summary, deadline=deadline, refresh_reports=False)
    finally:
        runner.close()
    return summary.stop_reason, summary.exit_code
