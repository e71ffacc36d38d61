"""Test-only pauses at named points, so that a test can send a signal or a SIGKILL at a known
moment (during registration, right after an epoch, ...) instead of racing a real workload.

``HPSEARCH_TEST_PAUSE="registration.created=30,epoch.end=2"`` makes :func:`pause` print
``hpsearch-test: paused at POINT`` on stderr (the test waits for that line) and sleep that
many seconds at each named point. Unset, as in normal use, :func:`pause` costs one dict
look-up.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["ENV_VAR", "pause"]

ENV_VAR = "HPSEARCH_TEST_PAUSE"


def _parse(text: str) -> dict[str, float]:
    pauses = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        point, _, seconds = item.partition("=")
        pauses[point.strip()] = float(seconds or 0)
    return pauses


_PAUSES = _parse(os.environ.get(ENV_VAR, ""))


def pause(point: str) -> None:
    """Sleep at ``point`` if ``$HPSEARCH_TEST_PAUSE`` names it (tests only)."""
    seconds = _PAUSES.get(point)
    if seconds is None:
        return
    print(f"hpsearch-test: paused at {point}", file=sys.stderr, flush=True)
    time.sleep(seconds)
