"""Errors the command line reports as one line (bad input, missing data, a full disk) and
the interruption raised by a termination signal."""

from __future__ import annotations

import contextlib
import errno
import signal
import string
import sys
import threading
from collections.abc import Callable, Iterator

# Exit code of a study stopped by a full disk: sysexits.h's EX_IOERR ("an error occurred
# while doing I/O on some file"), beside 2 (bad input), 1 (trials kept failing) and
# 128 + signal (130, 143).
EX_IOERR = 74


class HpsearchError(Exception):
    """A problem the user can fix; the message says what was wrong and how to fix it.
    The command line prints it as one line and exits with code 2."""


class ArgumentError(HpsearchError):
    """A bad argument, named as the caller spells it: ``trials must be >= 1, got 0`` from
    the Python API, ``--trials must be >= 1, got 0`` from the command line
    (:meth:`spelled`).

    Args:
        template: the message, each argument named as a field (``"{trials} must be >= 1,
            got {value}"``); a field that ``values`` does not fill is an argument's name.
        **values: the other fields, formatted by :meth:`str.format` (``{value:g}`` works).
    """

    def __init__(self, template: str, **values: object) -> None:
        self.template, self.values = template, values
        self.arguments = tuple(dict.fromkeys(
            field for _, field, _, _ in string.Formatter().parse(template)
            if field and field not in values))
        super().__init__(self.spelled(str))

    def spelled(self, spell: Callable[[str], str]) -> str:
        """The message with each argument's name spelled by ``spell`` (the command line:
        ``timeout_s`` -> ``--timeout``)."""
        return self.template.format(**{name: spell(name) for name in self.arguments},
                                    **self.values)


class DiskFull(Exception):
    """No space left on the device of the study's stores: the study stopped, its finished
    trials are kept. The command line prints the message as one line and exits with
    :data:`EX_IOERR` (74).

    Args:
        directory: the full directory (where the stores are), or None where not known.
        free_bytes: the space left there when the error was seen, or None.
    """

    exit_code = EX_IOERR

    def __init__(self, directory: str | None = None, free_bytes: int | None = None) -> None:
        self.directory, self.free_bytes = directory, free_bytes
        where = ""
        if directory is not None:
            free = "unknown space" if free_bytes is None else format_bytes(free_bytes)
            where = f": {directory} has {free} free"
        super().__init__(f"no space left on device{where}")


def first_line(error: BaseException | str, *, limit: int | None = None) -> str:
    """The first line of an error's message (or of a text), for a one-line report.

    A library's error often carries more after its first line: a store's error its SQL
    statement and every parameter, torch's a list of mismatched keys. That belongs in a
    traceback file, not on a progress line or in a trial's failure reason.

    Args:
        error: an exception (its ``str``) or a text.
        limit: at most this many characters; a longer line ends with ``...``.

    Returns:
        The stripped text's first line; ``""`` for an empty message.
    """
    text = (str(error).strip().splitlines() or [""])[0]
    if limit is not None and len(text) > limit:
        text = text[:limit - 3] + "..."
    return text


def error_line(exc: BaseException, *, limit: int | None = None) -> str:
    """``TypeName: first line of the message`` (only ``TypeName`` for an empty message), at
    most ``limit`` characters: an error named in one line."""
    text = first_line(exc)
    return first_line(f"{type(exc).__name__}: {text}" if text else type(exc).__name__,
                      limit=limit)


def format_bytes(n: int) -> str:
    """``0 B``, ``12.0 KB``, ``3.4 MB``, ``1.2 GB`` (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# How a full disk shows: ENOSPC (EDQUOT for a full quota) from a write of ours or an
# artifact copy; sqlite's SQLITE_FULL, which Python's sqlite3 raises as an OperationalError
# without an errno, wrapped by SQLAlchemy, then by MLflow (an MlflowException holding only
# the text) or Optuna (StorageInternalError); an OSError that a library re-raised as text.
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = ("database or disk is full", "no space left on device",
                    "disk quota exceeded")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from or while handling
    (``__cause__``, ``__context__``), says the disk is full."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, DiskFull) or (isinstance(exc, OSError)
                                          and exc.errno in _DISK_FULL_ERRNOS):
            return True
        if any(text in str(exc).lower() for text in _DISK_FULL_TEXTS):
            return True
        pending += [exc.__cause__, exc.__context__]
    return False


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


_pending: int | None = None  # a signal whose Interrupted has not been handled yet


def raise_interrupted(signum: int, frame: object = None) -> None:
    """Signal handler for SIGTERM and SIGINT: unwind like Ctrl-C.

    Python runs a handler between any two bytecodes, also inside a weakref callback or a
    ``__del__`` (a garbage-collected figure, say), where an exception cannot propagate: it
    prints "Exception ignored" and goes on. So the signal is also remembered, and
    :func:`check_interrupted` raises it again at the next safe point.
    """
    global _pending
    _pending = signum
    raise Interrupted(signum)


def handle_termination_signals() -> None:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` in this process (its main thread).

    An Interrupted swallowed in a weakref callback or ``__del__`` is not printed as
    "Exception ignored ... Traceback": :func:`check_interrupted` raises it again.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, raise_interrupted)
    sys.unraisablehook = _unraisable


def _unraisable(unraisable) -> None:
    if not isinstance(unraisable.exc_value, Interrupted):
        sys.__unraisablehook__(unraisable)


def check_interrupted() -> None:
    """Raise :class:`Interrupted` if a signal arrived whose exception was swallowed (see
    :func:`raise_interrupted`). A flag check: cheap enough for every training step."""
    if _pending is not None:
        raise Interrupted(_pending)


def ignore_further_signals() -> None:
    """After the first SIGINT/SIGTERM: ignore the next ones, so the stores are closed
    cleanly instead of being interrupted half-way. Marks the interruption as handled."""
    global _pending
    _pending = None
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on the first one as its
    handler would have: for a write that must not be cut half-way.

    A handler's exception raised while C++ code runs a Python callback does not reach the
    caller as itself: ``torch.save``'s writer turns an Interrupted raised in its ``write``
    into ``RuntimeError: [enforce fail at inline_container.cc]`` (seen in 30 of 30 tries),
    and an interrupted trial would fail as an error. Outside the main thread, which gets
    no signal handlers, nothing is held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    held = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not None:  # None: a handler not set from Python
            held[signum] = signal.signal(signum, lambda number, frame: arrived.append(number))
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
        if arrived:
            signal.raise_signal(arrived[0])  # its own handler runs now
