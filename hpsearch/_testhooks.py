"""Test-only pauses at named points, so that a test can send a signal or a SIGKILL at a known
moment (during registration, right after an epoch, ...) instead of racing a real workload.

``HPSEARCH_TEST_PAUSE="registration.created=30,epoch.end=2"`` makes :func:`pause` print
``hpsearch-test: paused at POINT`` on stderr (the test waits for that line) and sleep that
many seconds at each named point. A point can have a narrower name too: after each epoch
``epoch.end`` and ``epoch.end.trialN`` (N: the trial's number), so a test can stop one
trial, and only that one, where it wants. A signal ends the sleep as it would end
training. Unset, as in normal use, :func:`pause` costs a dict look-up per name.

``HPSEARCH_TEST_LIMITS="workers.shutdown_s=5"`` shortens a named time limit
(:func:`limit`), so that a test of what happens when it runs out does not wait minutes.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["ENV_VAR", "LIMITS_VAR", "limit", "pause"]

ENV_VAR = "HPSEARCH_TEST_PAUSE"
LIMITS_VAR = "HPSEARCH_TEST_LIMITS"


def _parse(text: str) -> dict[str, float]:
    pauses = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        point, _, seconds = item.partition("=")
        pauses[point.strip()] = float(seconds or 0)
    return pauses


_PAUSES = _parse(os.environ.get(ENV_VAR, ""))
_LIMITS = _parse(os.environ.get(LIMITS_VAR, ""))


def limit(name: str, default: float) -> float:
    """``default``, or the value ``$HPSEARCH_TEST_LIMITS`` gives ``name`` (tests only)."""
    return _LIMITS.get(name, default)


def pause(*points: str) -> None:
    """Sleep at the first of ``points`` (one point's names, widest first) that
    ``$HPSEARCH_TEST_PAUSE`` names (tests only)."""
    for point in points:
        seconds = _PAUSES.get(point)
        if seconds is not None:
            print(f"hpsearch-test: paused at {point}", file=sys.stderr, flush=True)
            time.sleep(seconds)
            return
