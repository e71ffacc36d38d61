"""Coordinating the workers of one study: an exact trial budget and one registration.

Workers (``--jobs`` processes on one machine, or ``hpsearch run`` on several machines) share
the Optuna RDB storage and nothing else. Two things need more than Optuna gives:

- ``--trials`` is exact: Optuna's ``MaxTrialsCallback`` lets every worker that saw
  ``target - 1`` finished trials start one more, so N workers overshoot by up to N - 1.
  Here a worker takes a trial *slot* under a study-wide lock: it counts the finished and
  running trials and asks for a new trial only if their sum is below the target.
- The champion is registered once, by the worker that finds no trial running any more,
  under the same lock, so two workers finishing together cannot both register.

The lock lives where the study lives: a PostgreSQL advisory lock or a MySQL named lock on
the storage's own database (released by the server if the worker dies), or an ``flock``
on a file beside a local sqlite database (released by the kernel if the worker dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch.errors import HpsearchError, check_interrupted, error_line
from hpsearch.redact import redact_url

__all__ = ["FINISHED_STATES", "StudyLock", "claim_worker_number", "count_trials",
           "schema_lock", "slots_left"]

# Trials that count towards --trials: both produced a validation curve.
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_S = 0.2  # lock polling period: polling keeps Ctrl-C working while a worker waits


def count_trials(study: optuna.Study, *states: TrialState) -> int:
    """Number of the study's trials in any of ``states``."""
    return len(study.get_trials(deepcopy=False, states=states))


def slots_left(study: optuna.Study, target: int) -> int:
    """Trials still to start: the target minus finished and running trials. Waiting trials
    (enqueued, or retries of dead workers' trials) are not counted: a slot runs them first.
    Can be negative for a study run before with a larger target."""
    return target - count_trials(study, *FINISHED_STATES, TrialState.RUNNING)


def claim_worker_number(study: optuna.Study, lock: StudyLock) -> int:
    """A number no other worker of the study has (0 for the study's first worker ever),
    recorded in the study's user attribute ``hpsearch.workers``.

    Workers seed their samplers with ``--seed`` plus this number: with the same seed,
    workers started with the same command would draw the same parameters.
    """
    with lock.hold():
        number = int(study.user_attrs.get("hpsearch.workers", 0))
        study.set_user_attr("hpsearch.workers", number + 1)
    return number


class StudyLock:
    """A lock shared by every worker of one study, whichever machine it runs on.

    Args:
        storage_url: the Optuna storage URL (``sqlite:///...``, ``postgresql://...``,
            ``mysql://...``).
        study_name: the study; workers of other studies in the same storage do not wait.
            (Any name works: ``hpsearch:schema`` serialises the creation of a database's
            tables by workers started at once.)

    A storage of another kind gets no lock (``supported`` is False): the trial budget may
    then be overshot by concurrent workers, as with plain Optuna.
    """

    def __init__(self, storage_url: str, study_name: str) -> None:
        self.storage_url, self.study_name = storage_url, study_name
        self.key = f"hpsearch:{study_name}"
        dialect = storage_url.split(":", 1)[0].split("+", 1)[0]
        self.dialect = dialect
        self.supported = dialect in ("sqlite", "postgresql", "mysql")
        self._held = False
        self._file: Any = None
        self._connection: Any = None

    @property
    def held(self) -> bool:
        return self._held

    def acquire(self) -> None:
        """Wait (polling, so signals still interrupt) until this worker holds the lock."""
        if self._held or not self.supported:
            self._held = True
            return
        while not self._try_acquire():
            check_interrupted()
            time.sleep(POLL_S)
        self._held = True

    def release(self) -> None:
        """Release the lock if held; safe to call when it is not."""
        if not self._held:
            return
        self._held = False
        if not self.supported:
            return
        if self.dialect == "sqlite":
            fcntl.flock(self._file, fcntl.LOCK_UN)
        else:
            self._execute(_UNLOCK_SQL[self.dialect])

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """``with lock.hold():`` acquire, and release on the way out."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def close(self) -> None:
        """Release and drop the lock's file or database connection."""
        self.release()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None

    def _try_acquire(self) -> bool:
        if self.dialect == "sqlite":
            if self._file is None:
                self._file = open(_sqlite_lock_path(self.storage_url, self.study_name), "a")
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
        return bool(self._execute(_TRY_LOCK_SQL[self.dialect]))

    def _execute(self, sql: str) -> Any:
        """Run one lock statement on this worker's own connection (locks are per session)."""
        import sqlalchemy

        if self._connection is None:
            engine = sqlalchemy.create_engine(self.storage_url, poolclass=sqlalchemy.NullPool)
            self._connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._connection.execute(sqlalchemy.text(sql), {
            "key": _int64_key(self.key), "name": self.key[:64]}).scalar()


# PostgreSQL advisory locks take a 64-bit key; MySQL named locks a name (64 chars at most).
_TRY_LOCK_SQL = {"postgresql": "SELECT pg_try_advisory_lock(:key)",
                 "mysql": "SELECT GET_LOCK(:name, 0)"}
_UNLOCK_SQL = {"postgresql": "SELECT pg_advisory_unlock(:key)",
               "mysql": "SELECT RELEASE_LOCK(:name)"}


def _int64_key(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big", signed=True)


def _sqlite_lock_path(storage_url: str, study_name: str) -> Path:
    """In the temp dir, keyed by the database's absolute path and the study: nothing extra
    appears in the user's directory, and every worker on this machine finds the same file."""
    from sqlalchemy.engine import make_url

    database = str(Path(make_url(storage_url).database or "").resolve())
    digest = hashlib.sha1(f"{database}\0{study_name}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir(), f"hpsearch-study-{digest}.lock")


@contextlib.contextmanager
def schema_lock(*urls: str) -> Iterator[None]:
    """Serialise the first use of shared databases by workers started at once: Optuna and
    MLflow both create their schema on first use, and two creators race (sqlite: "table
    already exists"; PostgreSQL: a unique violation in its type catalogue). A named lock
    on each database (see :class:`StudyLock`), taken in a fixed order.

    Raises:
        HpsearchError: a database cannot be reached to take its lock.
    """
    with contextlib.ExitStack() as stack:
        for url in sorted(set(urls)):
            lock = StudyLock(url, "hpsearch:schema")
            if not lock.supported:
                continue
            stack.callback(lock.close)
            try:
                lock.acquire()
            except Exception as exc:  # the driver's errors vary; say which URL failed
                what = "Optuna storage" if url in urls[:1] else "MLflow tracking store"
                raise HpsearchError(f"cannot open {what} {redact_url(url)!r}: "
                                    f"{error_line(exc)}") from None
        yield
