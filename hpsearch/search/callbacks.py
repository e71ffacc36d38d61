"""``study.optimize`` callbacks of a worker: the best trial on the parent run, the
consecutive-failure guard, the study report's refresh, and the deletion of weights that can
no longer be the champion's."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from hpsearch.errors import error_line
from hpsearch.search.config import StudySummary
from hpsearch.search.coordination import FINISHED_STATES, count_trials
from hpsearch.search.progress import Reporter
from hpsearch.tracking.report import log_study_report
from hpsearch.tracking.runs import StudyTracker, delete_checkpoint

__all__ = ["AnytimeLogger", "CheckpointSweeper", "FailureGuard", "ReportRefresher",
           "refresh_report"]

REPORT_EVERY = 5  # trials between refreshes of the study report on the parent run...
REPORT_MIN_S = 300.0  # ...seconds at least between two refreshes...
REPORT_SHARE = 0.02  # ...and refreshing at most this share of the time between them


class AnytimeLogger:
    """The study's best value so far on the parent run after every finished trial (metric
    ``best_value``, step = finished trials), and a new best trial's number and params."""

    def __init__(self, tracker: StudyTracker) -> None:
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state not in FINISHED_STATES or not count_trials(study, TrialState.COMPLETE):
            return
        best = study.best_trial
        self.tracker.log_best(value=best.value, step=count_trials(study, *FINISHED_STATES),
                              params=best.user_attrs["hyperparameters"]
                              if best.number == trial.number else None,
                              trial_number=best.number)


class FailureGuard:
    """Stops the study after ``limit`` trials in a row failed with an error: a bug, not bad
    luck. Out-of-memory failures depend on the sampled configuration and do not count;
    any other failure does, also one that happened before the objective could classify it."""

    def __init__(self, limit: int, summary: StudySummary) -> None:
        self.limit, self.summary, self.in_a_row = limit, summary, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != TrialState.FAIL:
            self.in_a_row = 0
        elif trial.user_attrs.get("failure_kind") not in ("out_of_memory", "interrupted"):
            self.in_a_row += 1
        if self.in_a_row >= self.limit:
            reason = trial.user_attrs.get("fail_reason", "see the trial's traceback.txt")
            self.summary.stop_reason = (f"stopped after {self.in_a_row} failed trials in a "
                                        f"row; last: {reason}")
            self.summary.exit_code = 1
            study.stop()


def refresh_report(tracker: StudyTracker, study: optuna.Study, reporter: Reporter) -> None:
    """Log the study report on the parent run; a failure here must not end the study."""
    try:
        log_study_report(tracker.client, tracker.parent_run_id, study)
    except Exception as exc:  # plotting or logging trouble: say so, keep going
        # The first line: a store's error carries its SQL statement and parameters after it.
        reporter.say(f"warning: study report not logged: {error_line(exc)}")


class ReportRefresher:
    """Refreshes the study report after every few finished trials, at most once in
    :data:`REPORT_MIN_S` seconds and so that refreshing takes at most :data:`REPORT_SHARE`
    of the time: drawing the report's figures takes seconds and grows with the study (2.7 s
    at 3 trials on a 2-core CPU), and the report is drawn once more when the study ends.
    Called after each trial, or while waiting for workers."""

    def __init__(self, tracker: StudyTracker, study: optuna.Study, reporter: Reporter) -> None:
        self.tracker, self.study, self.reporter = tracker, study, reporter
        self.last_time = time.monotonic()
        self.last_seconds = 0.0  # how long the last refresh took
        self.last_finished = count_trials(study, *FINISHED_STATES)

    def due(self, now: float, finished: int) -> bool:
        """Whether a refresh is due at monotonic time ``now`` with ``finished`` trials."""
        wait = max(REPORT_MIN_S, self.last_seconds / REPORT_SHARE)
        return finished - self.last_finished >= REPORT_EVERY and now - self.last_time >= wait

    def __call__(self, *_: object) -> None:
        now, finished = time.monotonic(), count_trials(self.study, *FINISHED_STATES)
        if self.due(now, finished):
            refresh_report(self.tracker, self.study, self.reporter)
            self.last_time, self.last_finished = time.monotonic(), finished
            self.last_seconds = self.last_time - now


class CheckpointSweeper:
    """Deletes the logged weights of every trial that can no longer become the study's best,
    after each finished trial: only the best (and a trial tied with it) keeps its
    checkpoint until the champion is registered. A trial logs its weights when it ties or
    beats every finished trial (the objective), so without this a study kept one checkpoint
    per new best: 530 MB each for a VGG16.

    A trial's weights are deleted when it was pruned or failed, or when a COMPLETE trial has
    a strictly better value. Finished values never change and trials are only added, so
    once a trial qualifies it qualifies forever, and the best trial never does: any number
    of workers, on any machines, may sweep at once without a lock. Two deleting the same
    files is harmless (a deletion of what is gone does nothing); each process tries each
    trial once. A deletion the artifact store refuses is said once and left.

    Args:
        tracker: the study's tracker (its client and tracking URI reach the artifacts).
        reporter: where a refused deletion is said.
    """

    def __init__(self, tracker: StudyTracker, reporter: Reporter) -> None:
        self.tracker, self.reporter = tracker, reporter
        self.swept: set[int] = set()
        self._said_refused = False

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False, states=FINISHED_STATES + (TrialState.FAIL,))
        values = [t.value for t in trials if t.state == TrialState.COMPLETE]
        best = None
        if values:
            best = max(values) if study.direction.name == "MAXIMIZE" else min(values)
        for other in trials:
            if other.number in self.swept or not other.user_attrs.get("checkpoint"):
                continue
            beaten_by = _beaten_by(other, best, study.direction.name, trials)
            if beaten_by is None:
                continue
            self.swept.add(other.number)
            self._delete(other, beaten_by)

    def _delete(self, trial: optuna.trial.FrozenTrial, reason: str) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if not run_id:
            return
        try:
            delete_checkpoint(self.tracker.client, run_id, tracking_uri=self.tracker.tracking_uri,
                              reason=reason)
        except Exception as exc:  # a store that cannot delete: the weights stay, say so once
            if not self._said_refused:
                self._said_refused = True
                self.reporter.say(f"warning: the weights of trial {trial.number} were not "
                                  f"deleted ({type(exc).__name__}: "
                                  f"{(str(exc).splitlines() or [''])[0]}); earlier best "
                                  "trials keep theirs in the artifact store")


def _beaten_by(trial: optuna.trial.FrozenTrial, best: float | None, direction: str,
               trials: list[optuna.trial.FrozenTrial]) -> str | None:
    """Why ``trial`` can no longer be the study's best (one line), or None if it can."""
    if trial.state != TrialState.COMPLETE:
        return f"trial {trial.state.name.lower()}"
    if best is None or best == trial.value or (
            trial.value > best if direction == "MAXIMIZE" else trial.value < best):
        return None
    better = next(t.number for t in trials if t.state == TrialState.COMPLETE and t.value == best)
    return f"trial {better} is better"
