"""hpsearch's defaults and the environment variables that change them, in one place: the
command line, the Python API and the study read them here. Imports nothing heavy (no
torch, Optuna or MLflow), so the command line can show them in its help at once.

Environment variables:

- ``HPSEARCH_STORAGE``: the Optuna storage URL when ``--storage`` (``storage=``) is not
  given; else :data:`DEFAULT_STORAGE`.
- ``HPSEARCH_DATA_DIR``: where the data set's files are, when ``--data-dir`` is not given.
- ``HPSEARCH_SYSTEM_METRICS``: ``0`` turns off MLflow's sampling of CPU, memory and GPU use
  on every run (the ``system/...`` metrics); on by default.
- ``HPSEARCH_EXPORT_NETWORK``: ``0`` leaves out the champion's bare network in MLflow's
  ``pt2`` format (the ``network`` model beside the served one, a ``torch.export`` that takes
  seconds on a CPU); on by default. The served model does not need it.

- ``HPSEARCH_FIGURES``: ``0`` leaves out the PNG figures (learning curves, confusion
  matrices, sample grids, the study's and the data's plots; a few tenths of a second each,
  about 3.7 s of a 3-trial study on a CPU); the numbers behind them (metrics, the
  ``*.json`` artifacts) are logged either way. On by default.

- ``HPSEARCH_DOWNLOAD_WEIGHTS``: ``0`` never downloads pretrained weights: only files
  already in torchvision's cache (``$TORCH_HOME/hub/checkpoints``) are used, as on a machine
  without internet (:mod:`hpsearch.models.weights`); on by default.

The metrics, network and figures switches are for runs whose extras nobody looks at (the
test suite turns them off but where a test asserts them); the numbers a study reports are
the same either way. The test suite turns downloads off too, so that no test needs (or
uses) the network.
"""

from __future__ import annotations

import os

from hpsearch.errors import HpsearchError

__all__ = ["DATA_DIR_ENV", "DEFAULT_STORAGE", "DEVICES", "DOWNLOAD_WEIGHTS_ENV",
           "EXPORT_NETWORK_ENV", "FIGURES_ENV", "STORAGE_ENV", "SYSTEM_METRICS_ENV",
           "check_environment", "download_weights", "export_network", "figures", "storage_url",
           "system_metrics"]

# The Optuna storage: a sqlite file in the working directory, beside MLflow's own default
# tracking store (sqlite:///mlflow.db).
DEFAULT_STORAGE = "sqlite:///hpsearch.db"
STORAGE_ENV = "HPSEARCH_STORAGE"
DATA_DIR_ENV = "HPSEARCH_DATA_DIR"
SYSTEM_METRICS_ENV = "HPSEARCH_SYSTEM_METRICS"
EXPORT_NETWORK_ENV = "HPSEARCH_EXPORT_NETWORK"
DOWNLOAD_WEIGHTS_ENV = "HPSEARCH_DOWNLOAD_WEIGHTS"
FIGURES_ENV = "HPSEARCH_FIGURES"
# Training devices: ``auto`` picks CUDA when present (hpsearch.training.device).
DEVICES = ("auto", "cpu", "cuda")

_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def storage_url(storage: str | None = None) -> str:
    """``storage`` if given, else ``$HPSEARCH_STORAGE``, else :data:`DEFAULT_STORAGE`."""
    return storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def system_metrics() -> bool:
    """Whether runs sample MLflow's system metrics (``$HPSEARCH_SYSTEM_METRICS``, default
    on).

    Raises:
        HpsearchError: the variable holds something other than 1/0, true/false, yes/no,
            on/off.
    """
    return _switch(SYSTEM_METRICS_ENV)


def export_network() -> bool:
    """Whether registration logs the bare network in ``pt2`` format
    (``$HPSEARCH_EXPORT_NETWORK``, default on).

    Raises:
        HpsearchError: as :func:`system_metrics`.
    """
    return _switch(EXPORT_NETWORK_ENV)


def figures() -> bool:
    """Whether runs log their PNG figures (``$HPSEARCH_FIGURES``, default on).

    Raises:
        HpsearchError: as :func:`system_metrics`.
    """
    return _switch(FIGURES_ENV)


def download_weights() -> bool:
    """Whether missing pretrained weights may be downloaded (``$HPSEARCH_DOWNLOAD_WEIGHTS``,
    default on).

    Raises:
        HpsearchError: as :func:`system_metrics`.
    """
    return _switch(DOWNLOAD_WEIGHTS_ENV)


def check_environment() -> None:
    """Read every switch once, so a misspelt value stops a run before it starts.

    Raises:
        HpsearchError: a switch holds a value that is neither on nor off.
    """
    system_metrics()
    export_network()
    figures()
    download_weights()


def _switch(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value or value in _ON:
        return True
    if value in _OFF:
        return False
    raise HpsearchError(f"${name}={os.environ[name]!r}: use 1 (on, the default) or 0 (off)")
