"""Checks that the stores can be written or reached, before anything is created."""

from __future__ import annotations

import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from hpsearch.errors import HpsearchError
from hpsearch.redact import redact_url

__all__ = ["check_reachable", "preflight"]


def preflight(storage: str, tracking_uri: str) -> None:
    """Check the Optuna storage and the tracking store before anything is written.

    Raises:
        HpsearchError: a sqlite file's directory is missing or not writable, or an HTTP
            tracking server does not answer within seconds.
    """
    for what, url in (("--storage", storage), ("tracking store", tracking_uri)):
        if url.startswith("sqlite:///"):  # a file: no password to hide
            _check_writable(Path(url[len("sqlite:///"):]).parent, what, url)
    if tracking_uri.startswith(("http://", "https://")):
        check_reachable(tracking_uri)


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
