"""A working directory with a space and a non-ASCII letter (``My Projects/ü2``), as many
users' home folders have: the default stores work there, and the commands printed at the
end paste into a shell as they read."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from hpsearch.search.preflight import sqlite_file

from conftest import hpsearch, needs_fashion_mnist, tiny_mlp_spec
from observations import record

pytestmark = [pytest.mark.slow, needs_fashion_mnist]


def _next_commands(stdout: str) -> list[list[str]]:
    """The lines under "next:", split as a POSIX shell would (comments dropped)."""
    lines = stdout.split("\nnext:\n", 1)[1].strip().splitlines()
    return [shlex.split(line, comments=True) for line in lines]


def test_a_run_in_a_folder_with_a_space_and_an_accent_works_and_prints_pastable_commands(
        tmp_path):
    work = tmp_path / "My Projects" / "ü2"
    work.mkdir(parents=True)
    (work / "spec.yaml").write_text(tiny_mlp_spec(1))
    result = hpsearch(work, "run", "--spec", "spec.yaml", "--trials", "1", "--train-subset",
                      "300", "--device", "cpu", "--study-name", "étude 1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in work.iterdir()} >= {"hpsearch.db", "mlflow.db", "mlruns"}

    ui, serve, mlflow_serve = _next_commands(result.stdout)
    assert ui[:3] == ["hpsearch", "ui", "--tracking-uri"] and len(ui) == 4
    assert sqlite_file(ui[3]).resolve() == (work / "mlflow.db").resolve()
    assert serve == ["hpsearch", "serve", "--model", "hpsearch-étude 1", "--tracking-uri",
                     ui[3]]
    assert mlflow_serve[:5] == [f"MLFLOW_TRACKING_URI={ui[3]}", "mlflow", "models", "serve",
                                "-m"]
    assert mlflow_serve[5] == "models:/hpsearch-étude 1@champion"

    # The pasted serve line's model and store, given to `predict`, find the champion.
    np.save(work / "one.npy", np.zeros((28, 28), np.uint8))
    predicted = hpsearch(work, "predict", "one.npy", *serve[2:], timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert predicted.stdout.startswith("one.npy")
    record("working directory 'My Projects/ü2' (a space, a non-ASCII letter), default stores",
           "exit code 0; the printed `next:` commands split by a shell into the right "
           "arguments (model 'hpsearch-étude 1', the store's URI), and `predict` with them "
           "finds the champion", "the study, its runs and the registered model")
