"""Progress display on stderr: one line per epoch and per finished trial, a live line inside
long epochs, and an estimate of the study's remaining time.

Inside an epoch, on a terminal the live line (batches done, images/s, the epoch's end) is
redrawn in place every half second; in a log, or from a ``--jobs`` worker, a line is written
every few seconds instead, and only in epochs that last that long. It is fed by counters on
the host: no value is read back from the device.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import optuna

from hpsearch.errors import first_line

if TYPE_CHECKING:
    from hpsearch.training import EpochResult

__all__ = ["RemainingTime", "Reporter", "ReporterStream", "StudyEstimate", "format_params",
           "format_seconds"]

LIVE_INTERVAL_S = 0.5  # redraws of the live line on a terminal
LOG_INTERVAL_S = 5.0  # lines inside an epoch in a log file or from a worker
_CLEAR = "\r\x1b[K"  # back to the line's start, erase it


def format_params(params: dict[str, Any]) -> str:
    """Short ``name=value`` list with floats in 3 significant digits."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``2 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Reporter:
    """Prints the study's progress.

    Args:
        metric: the objective's metric name, for labels.
        stream: where to print (stderr by default, so stdout stays for results).
        verbose: also print one line per epoch (a live line on a terminal in any case).
        live: redraw the in-epoch line in place; default: whether ``stream`` is a terminal.
    """

    def __init__(self, metric: str, *, stream: TextIO | None = None, verbose: bool = True,
                 live: bool | None = None) -> None:
        self.metric, self.stream, self.verbose = metric, stream or sys.stderr, verbose
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.live = isatty() if live is None else live
        self._shown = False  # a live line is on the screen
        self._epoch: tuple[int, int] | None = None
        self._epoch_started = self._last_line = 0.0

    def say(self, line: str) -> None:
        self._write(line + "\n")

    def _write(self, text: str) -> None:
        if self._shown:
            text, self._shown = _CLEAR + text, False
        self.stream.write(text)
        self.stream.flush()

    def batch(self, trial_number: int, epoch: int, max_epochs: int, done: int, total: int,
              batch_size: int) -> None:
        """After batch ``done`` of ``total`` of an epoch (0: the epoch starts): a live line
        when the epoch has lasted long enough to need one."""
        now = time.monotonic()
        if done == 0 or self._epoch != (trial_number, epoch):
            self._epoch, self._epoch_started, self._last_line = (trial_number, epoch), now, now
            return
        interval = LIVE_INTERVAL_S if self.live else LOG_INTERVAL_S
        if now - self._last_line < interval or (not self.live and not self.verbose):
            return
        self._last_line, elapsed = now, now - self._epoch_started
        line = (f"  trial {trial_number:4d}  epoch {epoch:3d}/{max_epochs:<3d} batch "
                f"{done}/{total}  {done * batch_size / elapsed:9,.0f} img/s  epoch done in "
                f"{format_seconds(elapsed * (total - done) / done)}")
        if self.live:
            self._write(_CLEAR + line)
            self._shown = True
        else:
            self.say(line)

    def epoch(self, trial_number: int, result: EpochResult, max_epochs: int) -> None:
        if self.verbose:
            # The study's metric too, where it is neither of the two always shown.
            metric = ("" if self.metric not in result.metrics() or self.metric in (
                "val_loss", "val_accuracy") else
                f"{self.metric} {result.metrics()[self.metric]:.4f}  ")
            self.say(
                f"  trial {trial_number:4d}  epoch {result.epoch:3d}/{max_epochs:<3d} "
                f"train_loss {result.train_loss:.4f}  val_loss {result.val.loss:.4f}  "
                f"val_accuracy {result.val.accuracy:.4f}  {metric}{result.epoch_seconds:6.1f} s  "
                f"{result.images_per_second:9,.0f} img/s"
            )
        elif self._shown:
            self._write("")

    def trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """An ``optimize`` callback: the trial's state, value and the best so far."""
        state = trial.state.name
        value = f"{self.metric} {trial.value:.4f}" if trial.value is not None else ""
        if state == "PRUNED" and trial.intermediate_values:
            step = max(trial.intermediate_values)
            value = f"{self.metric} {trial.intermediate_values[step]:.4f} at epoch {step}"
        if state == "FAIL":
            reason = trial.user_attrs.get("fail_reason", "failed")
            state = "INTERRUPTED" if trial.user_attrs.get("failure_kind") == "interrupted" \
                else state
            value = first_line(reason)
        best = _best(study)
        best_text = f"best {best.value:.4f} (trial {best.number})" if best else "no best yet"
        params = format_params(trial.user_attrs.get("hyperparameters", trial.params))
        self.say(f"trial {trial.number:4d}  {state:8s} {value}  | {best_text}  | {params}")


class RemainingTime:
    """Says how long the study has left: after its 3rd finished trial, then every 10th.
    Past an hour it suggests ``--timeout`` or the README's smaller budget for a CPU. With a
    ``--timeout`` that comes first, it says the time until then instead.

    Args:
        target: the study's target number of finished trials.
        jobs: trials run at once.
        reporter: where to say it.
        deadline: ``time.time()`` after which no new trial starts (``--timeout``), or None.
    """

    FIRST, EVERY = 3, 10

    def __init__(self, *, target: int, jobs: int, reporter: Reporter,
                 deadline: float | None = None) -> None:
        self.target, self.jobs, self.reporter = target, jobs, reporter
        self.deadline = deadline
        self.said_at = 0

    def __call__(self, study: optuna.Study, *_: object) -> None:
        finished = [t for t in study.get_trials(deepcopy=False, states=(
            optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
                    if t.datetime_start and t.datetime_complete]
        n, remaining = len(finished), self.target - len(finished)
        due = n >= self.FIRST and (self.said_at == 0 or n >= self.said_at + self.EVERY)
        if not due or remaining <= 0:
            return
        self.said_at = n
        per_trial = sum((t.datetime_complete - t.datetime_start).total_seconds()
                        for t in finished) / n
        left = per_trial * remaining / self.jobs
        until_timeout = None if self.deadline is None else max(0.0,
                                                                self.deadline - time.time())
        if until_timeout is not None and until_timeout < left:
            self.reporter.say(
                f"about {format_seconds(until_timeout)} left until --timeout (no trial "
                f"starts after it); the {remaining} trials still to run would take about "
                f"{format_seconds(left)} ({format_seconds(per_trial)} a trial so far)")
            return
        line = (f"about {format_seconds(left)} left for the {remaining} trials still to run "
                f"({format_seconds(per_trial)} a trial so far)")
        if left > 3600:
            line += ("; --timeout SECONDS caps a run, and the README gives a smaller budget "
                     "for a CPU (--epochs, --train-subset)")
        self.reporter.say(line)


class StudyEstimate:
    """The first estimate on a CPU, as soon as one epoch is timed: how long the trials still
    to run take, and past :attr:`HOURS` seconds a smaller budget's command.

    What one epoch says about the study is a range: from every trial stopped by the pruner
    after its first epoch to every trial training all its epochs, both at the pace of the
    timed epoch; the line names these assumptions, and that other architectures train
    faster or slower. :class:`RemainingTime` refines it from finished trials later.

    Args:
        trials_left: trials this run still has to finish (running ones included).
        epochs: most epochs a trial trains.
        device: where the trials train, for the line (``cpu``).
        reporter: where to say it.
        smaller_command: the command of a smaller budget (the README's for a CPU), or None.
    """

    HOURS = 3600.0  # a high end past this suggests the smaller budget

    def __init__(self, *, trials_left: int, epochs: int, device: str, reporter: Reporter,
                 smaller_command: str | None = None) -> None:
        self.trials_left, self.epochs, self.device = trials_left, epochs, device
        self.reporter, self.smaller_command = reporter, smaller_command
        self.said = False

    def __call__(self, trial_number: int, epoch: int, seconds: float) -> None:
        """After an epoch of ``seconds`` (wall, validation included): the line, once."""
        if self.said or self.trials_left <= 0:
            return
        self.said = True
        for line in self.lines(trial_number, epoch, seconds):
            self.reporter.say(line)

    def lines(self, trial_number: int, epoch: int, seconds: float) -> list[str]:
        """The estimate (and the suggestion) for an epoch of ``seconds``."""
        low, high = self.trials_left * seconds, self.trials_left * self.epochs * seconds
        lines = [f"estimate: epoch {epoch} of trial {trial_number} took "
                 f"{format_seconds(seconds)} on {self.device}; at that pace the "
                 f"{self.trials_left} trials to run take {format_seconds(low)} if the pruner "
                 f"stops each after 1 epoch, up to {format_seconds(high)} if each trains all "
                 f"{self.epochs} epochs (other architectures train faster or slower)"]
        if high > self.HOURS and self.smaller_command:
            lines.append(f"  that is hours: Ctrl-C keeps the finished trials, and the README's "
                         f"smaller budget for a CPU: {self.smaller_command}")
        return lines


class ReporterStream:
    """A text stream whose lines go to a :class:`Reporter` (``say``), for code that reports
    progress to a stream (decoding own images): a bar drawn in place where the reporter
    draws live lines (a terminal), else a line every few seconds; a ``--jobs`` worker's
    lines reach the coordinator's display."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self._pending = ""

    def isatty(self) -> bool:
        return self.reporter.live

    def write(self, text: str) -> int:
        if self.isatty():  # a bar redrawn with "\r": the terminal's own stream draws it
            self.reporter._write(text)
            return len(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self.reporter.say(line)
        return len(text)

    def flush(self) -> None:
        pass


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None
