"""Where a run was made and with what; which tracking store it goes to."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import mlflow
import torch
from mlflow.entities import DatasetInput, InputTag

from hpsearch.errors import is_disk_full

__all__ = ["dataset_inputs", "provenance_tags", "quiet_mlflow", "resolve_tracking_uri",
           "using_tracking_uri"]


def provenance_tags(device: torch.device, seed: int) -> dict[str, str]:
    """Where and with what a run was made: device, versions, git commit, host, seed."""
    import optuna

    import hpsearch

    tags = {
        "hpsearch.version": hpsearch.__version__,
        "hpsearch.seed": str(seed),
        "host": platform.node(),
        "hpsearch.pid": str(os.getpid()),  # which process ran it (see close_orphaned_trial_run)
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({platform.processor() or platform.machine()})"),
        "torch_version": torch.__version__,
        "cuda_version": str(torch.version.cuda),
        "optuna_version": optuna.__version__,
        "mlflow_version": mlflow.__version__,
    }
    commit = _git_commit(os.path.dirname(hpsearch.__file__))
    if commit:
        tags["hpsearch.git_commit"] = commit
    return tags


def _git_commit(directory: str) -> str | None:
    """The checkout's commit when hpsearch runs from a git clone, else None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def dataset_inputs(splits: Mapping[str, Any], name: str, source: str | None = None,
                   digest: str | None = None) -> list[DatasetInput]:
    """MLflow dataset inputs (name, digest, size, source) for ``{context: ArraySplit}``.

    Args:
        splits: ``{"training": ArraySplit, ...}``.
        name: the data set's name; each input is called ``NAME-CONTEXT``.
        source: the folder (or manifest) its files were read from (MLflow records a local
            source), or None for MLflow's default (the code that logged it).
        digest: the inputs' digest (own images: the manifest's digest, its first 32 hex
            digits: MLflow keeps 36 characters), or None for MLflow's digest of the arrays.
    """
    inputs = []
    for context, split in splits.items():
        with warnings.catch_warnings():
            # MLflow registers its local artifact source twice, and says so on every call.
            warnings.filterwarnings("ignore", message="The specified dataset source can be "
                                                      "interpreted in multiple ways")
            dataset = mlflow.data.from_numpy(features=split.images, targets=split.labels,
                                             name=f"{name}-{context}", source=source,
                                             digest=digest[:32] if digest else None)
        inputs.append(DatasetInput(dataset._to_mlflow_entity(),
                                   tags=[InputTag("mlflow.data.context", context)]))
    return inputs


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """``--tracking-uri``, else MLflow's own choice (``MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db`` in the working directory). Changes nothing."""
    return tracking_uri or mlflow.get_tracking_uri()


@contextlib.contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``log_model`` knows no other) at ``uri`` for the block,
    then restore the caller's tracking URI and ``MLFLOW_TRACKING_URI`` exactly as they were
    (MLflow's own ``_use_tracking_uri`` unsets the variable on the way out)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    environment = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if environment is not None:
            os.environ["MLFLOW_TRACKING_URI"] = environment


class _DiskFullRecords(logging.Filter):
    """Drops MLflow's log records of a full disk: its sqlite store logs each failed write
    with the SQL statement, its parameters and two tracebacks ("SQLAlchemy database error"),
    and its system metrics thread the same text, before raising the error, which the study
    turns into one line (:class:`~hpsearch.errors.DiskFull`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (is_disk_full(exc) or is_disk_full(Exception(record.getMessage())))


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow's info lines (database set-up, "Validating input example"), its artifact
    download bars, "View run" links and its log records of a full disk off for the block;
    the caller's settings back after. Progress is the reporter's to show."""
    settings = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    saved = {name: os.environ.get(name) for name in settings}
    logger = logging.getLogger("mlflow")
    level = logger.level
    os.environ.update(settings)
    logger.setLevel(max(level, logging.WARNING))
    disk_full_records = _DiskFullRecords()
    handlers = list(logger.handlers)  # MLflow's own: every mlflow.* record goes through them
    for handler in handlers:
        handler.addFilter(disk_full_records)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(disk_full_records)
        logger.setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
