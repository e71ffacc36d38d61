"""Errors the command line reports as one line (bad input, missing data) and the
interruption raised by a termination signal."""

from __future__ import annotations

import contextlib
import signal


class HpsearchError(Exception):
    """A problem the user can fix; the message says what was wrong and how to fix it.
    The command line prints it as one line and exits with code 2."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived. A KeyboardInterrupt, so Optuna fails the running trial and
    unwinds exactly as on Ctrl-C.

    Attributes:
        signum: the signal number; the process exits with 128 + signum (130, 143).
    """

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def raise_interrupted(signum: int, frame: object = None) -> None:
    """Signal handler for SIGTERM (and SIGINT): unwind like Ctrl-C."""
    raise Interrupted(signum)


def ignore_further_signals() -> None:
    """After the first SIGINT/SIGTERM: ignore the next ones, so the stores are closed
    cleanly instead of being interrupted half-way."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signum, signal.SIG_IGN)
