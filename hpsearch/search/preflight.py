"""Checks that the stores can be written or reached, and are not corrupt, before anything
is created."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from hpsearch.errors import HpsearchError
from hpsearch.redact import redact_url

__all__ = ["check_reachable", "check_sqlite_store", "check_tracking_store", "preflight",
           "sqlite_file"]


def preflight(storage: str, tracking_uri: str) -> None:
    """Check the Optuna storage and the tracking store before anything is written.

    Raises:
        HpsearchError: a sqlite file's directory is missing or not writable, a sqlite file
            is not a readable database (truncated, overwritten), or an HTTP tracking server
            does not answer within seconds.
    """
    for what, url, option in (("--storage", storage, "--storage"),
                              ("tracking store", tracking_uri, "--tracking-uri")):
        path = sqlite_file(url)
        if path is not None:  # a file: no password to hide
            _check_writable(path.parent, what, url)
            check_sqlite_store(url, what, option)
    if tracking_uri.startswith(("http://", "https://")):
        check_reachable(tracking_uri)


def check_tracking_store(tracking_uri: str) -> None:
    """For the commands that read the tracking store (``serve``, ``ui``, ``predict``): an
    HTTP server must answer, a sqlite file must be a readable database.

    Raises:
        HpsearchError: it does not, or it is not; one line naming the store.
    """
    if tracking_uri.startswith(("http://", "https://")):
        check_reachable(tracking_uri)
    else:
        check_sqlite_store(tracking_uri, "tracking store", "--tracking-uri")


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:`` URL, as SQLAlchemy (and so Optuna and MLflow)
    opens it: percent-escapes decoded (MLflow's default ``sqlite:////My%20Projects/mlflow.db``
    is the file in ``My Projects``). None for another kind of URL or an in-memory database.
    """
    if url.split(":", 1)[0].split("+", 1)[0] != "sqlite":
        return None
    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database
    except Exception:  # not a URL SQLAlchemy can parse: the store's own error says so later
        return None
    return Path(database) if database and database != ":memory:" else None


def check_sqlite_store(url: str, what: str, option: str) -> None:
    """Raise HpsearchError if ``url`` names an existing sqlite file that SQLite cannot read
    as a database: truncated ("database disk image is malformed"), or not one at all ("file
    is not a database"). Opened read-only, so nothing is created or changed; reading the
    schema touches the first page and the file's size, which is what a cut file gets wrong.
    A missing file passes: Optuna and MLflow create it.
    """
    path = sqlite_file(url)
    if path is None or not path.exists():
        return
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise HpsearchError(f"{what} {url}: {path} is not a readable SQLite database "
                            f"({exc}); restore it from a backup, or pass another "
                            f"{option}") from None


def _check_writable(directory: Path, what: str, url: str) -> None:
    directory = directory if str(directory) else Path(".")
    if not directory.is_dir():
        raise HpsearchError(f"{what} {url}: directory {directory.resolve()} does not exist")
    try:  # a real write: permission bits do not tell for root, read-only mounts or quotas
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise HpsearchError(f"{what} {url}: cannot write in {directory.resolve()} "
                            f"({exc.strerror}); run from a writable directory or pass "
                            "--storage/--tracking-uri") from None


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Raise HpsearchError unless the MLflow tracking server answers ``/health``."""
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HpsearchError(f"cannot reach the MLflow tracking server at "
                            f"{redact_url(tracking_uri)} "
                            f"({reason}); start it or pass another --tracking-uri") from None
