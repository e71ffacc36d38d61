"""A corrupt store (a sqlite file cut short, or one that is not a database at all) is
refused with one line and exit code 2 by every command that opens it, before anything is
written: no Optuna study is created beside a corrupt tracking store. The command line runs
in this process (conftest.cli): every case ends before a server or a trial starts."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import cli, tiny_mlp_spec
from observations import record

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    """Real stores cut to 8 KB (as a full disk or a copy interrupted half-way leaves them),
    and 8 KB of random bytes; a sound Optuna storage with one study beside them."""
    folder = tmp_path_factory.mktemp("stores")
    MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").create_experiment("e")
    optuna.create_study(study_name="tiny", storage=f"sqlite:///{folder / 'optuna.db'}")
    for name in ("mlflow", "optuna"):
        data = (folder / f"{name}.db").read_bytes()
        assert len(data) > 8192
        (folder / f"{name}-cut.db").write_bytes(data[:8192])
    (folder / "random.db").write_bytes(os.urandom(8192))
    shutil.copy(folder / "optuna.db", folder / "sound-optuna.db")
    return folder


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


TRACKING_COMMANDS = {
    "run": ["run", "--spec", "spec.yaml", "--trials", "1", "--device", "cpu"],
    "serve": ["serve", "--port", "1"],
    "ui": ["ui", "--port", "1"],
    "register": ["register", "tiny", "--storage", "sqlite:///sound-optuna.db"],
    "predict": ["predict", "spec.yaml"],
}


@pytest.mark.parametrize("store", ["mlflow-cut.db", "random.db"])
@pytest.mark.parametrize("command", TRACKING_COMMANDS)
def test_a_corrupt_tracking_store_is_one_line_and_nothing_written(tmp_path, stores, store,
                                                                  command):
    shutil.copy(stores / store, tmp_path / store)
    shutil.copy(stores / "sound-optuna.db", tmp_path / "sound-optuna.db")
    (tmp_path / "spec.yaml").write_text(tiny_mlp_spec(1))
    before = _digests(tmp_path)
    result = cli(tmp_path, *TRACKING_COMMANDS[command], "--tracking-uri", f"sqlite:///{store}")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    reason = "database disk image is malformed" if store == "mlflow-cut.db" \
        else "file is not a database"
    assert lines == [f"hpsearch: error: tracking store sqlite:///{store}: {store} is not a "
                     f"readable SQLite database ({reason}); restore it from a backup, or pass "
                     "another --tracking-uri"]
    assert _digests(tmp_path) == before  # no hpsearch.db, no mlruns/, the files untouched
    what = "MLflow store cut to 8 KB" if store == "mlflow-cut.db" else \
        "MLflow store of 8 KB of random bytes"
    record(f"corrupt tracking store ({what}): hpsearch {command} --tracking-uri",
           f"exit code 2, one line: {reason!r}",
           "nothing written: no Optuna study created, no file changed")


@pytest.mark.parametrize("store", ["optuna-cut.db", "random.db"])
def test_a_corrupt_optuna_storage_is_refused_before_the_data_set_is_read(tmp_path, stores,
                                                                         store, monkeypatch):
    shutil.copy(stores / store, tmp_path / store)
    (tmp_path / "spec.yaml").write_text(tiny_mlp_spec(1))
    before = _digests(tmp_path)
    # The data set comes from an empty folder: had it been read first, the error would be
    # about the missing data instead.
    (tmp_path / "no-data").mkdir()
    result = cli(tmp_path, "run", "--spec", "spec.yaml", "--trials", "1", "--device", "cpu",
                 "--storage", f"sqlite:///{store}", "--data-dir", "no-data")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"hpsearch: error: --storage sqlite:///{store}: {store} is not a readable SQLite "
        "database (")
    (tmp_path / "no-data").rmdir()
    assert _digests(tmp_path) == before
    record(f"corrupt Optuna storage ({'cut to 8 KB' if 'cut' in store else 'random bytes'}): "
           "hpsearch run --storage",
           "exit code 2, one line, before the data set is read",
           "nothing written: no MLflow store created, no file changed")
