"""GPU tests: everything here is marked ``gpu`` and skipped without a CUDA device.

``benchmarks/gpu_report.py`` runs them first on a GPU machine (``pytest -m gpu tests/gpu``).
Tests that need Fashion-MNIST find it in ``$HPSEARCH_DATA_DIR`` (the GPU bundle's
``.data``) or Debian's folder, and are skipped without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hpsearch.data_utils import DEBIAN_FASHION_MNIST_DIR


def pytest_collection_modifyitems(config, items) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(skip)


def fashion_mnist_dir() -> Path | None:
    """A folder holding Fashion-MNIST's IDX files (as ``--data-dir``), or None."""
    env = os.environ.get("HPSEARCH_DATA_DIR")
    for folder in ([Path(env), Path(env) / "fashion-mnist"] if env else []) + [
            DEBIAN_FASHION_MNIST_DIR]:
        if (folder / "train-images-idx3-ubyte.gz").exists():
            return folder
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    folder = fashion_mnist_dir()
    if folder is None:
        pytest.skip("needs Fashion-MNIST ($HPSEARCH_DATA_DIR or dataset-fashion-mnist)")
    return folder
