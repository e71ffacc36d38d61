"""When the study report is redrawn: every few trials, at most every REPORT_MIN_S seconds,
and rarer when drawing it is slow."""

from __future__ import annotations

import optuna

from hpsearch.search import callbacks
from hpsearch.search.callbacks import REPORT_EVERY, REPORT_MIN_S, REPORT_SHARE, ReportRefresher


def _refresher() -> ReportRefresher:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    refresher = ReportRefresher(None, optuna.create_study(), None)  # type: ignore[arg-type]
    refresher.last_time, refresher.last_finished = 1000.0, 0
    return refresher


def test_refresh_needs_both_enough_trials_and_enough_time() -> None:
    refresher = _refresher()

    assert not refresher.due(1000.0 + REPORT_MIN_S, REPORT_EVERY - 1)
    assert not refresher.due(1000.0 + REPORT_MIN_S - 1, REPORT_EVERY)
    assert refresher.due(1000.0 + REPORT_MIN_S, REPORT_EVERY)


def test_a_slow_refresh_waits_until_it_is_a_small_share_of_the_time() -> None:
    refresher = _refresher()
    refresher.last_seconds = 2 * REPORT_MIN_S * REPORT_SHARE  # the wait doubles

    assert not refresher.due(1000.0 + 1.5 * REPORT_MIN_S, REPORT_EVERY)
    assert refresher.due(1000.0 + 2 * REPORT_MIN_S, REPORT_EVERY)


def test_calling_it_redraws_only_when_due_and_times_the_redraw(monkeypatch) -> None:
    drawn = []
    clock = iter([1000.0 + REPORT_MIN_S, 1000.0 + REPORT_MIN_S + 3.0])
    monkeypatch.setattr(callbacks, "refresh_report", lambda *a: drawn.append(a))
    refresher = _refresher()
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(callbacks, "count_trials", lambda *a: REPORT_EVERY)

    refresher()

    assert len(drawn) == 1
    assert refresher.last_seconds == 3.0 and refresher.last_finished == REPORT_EVERY
