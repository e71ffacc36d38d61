"""SIGKILL during the champion's registration, at a known moment (the test-only pauses of
``hpsearch/_testhooks.py``), then the same command again: one registered version, complete
(tags, description, alias), and the killed process's parent run closed."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from hpsearch.data_utils import load_dataset
from hpsearch.tracking.provenance import using_tracking_uri

from conftest import clean_env, hpsearch, needs_fashion_mnist, signal_at_pause, tiny_mlp_spec
from observations import record

pytestmark = [pytest.mark.slow, needs_fashion_mnist]

MODEL = "hpsearch-reg"
ARGS = ("run", "--spec", "spec.yaml", "--study-name", "reg", "--trials", "1",
        "--train-subset", "1000", "--device", "cpu")


def kill_at(cwd: Path, point: str) -> str:
    """Start the command paused at ``point``, SIGKILL it there; its stderr so far."""
    (cwd / "spec.yaml").write_text(tiny_mlp_spec(1))
    exe = Path(sys.executable).with_name("hpsearch")
    proc = subprocess.Popen([str(exe), *ARGS], cwd=cwd, text=True,
                            env=clean_env(HPSEARCH_TEST_PAUSE=f"{point}=120"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = signal_at_pause(proc, point, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, seen
    return seen


def stores(cwd: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reg")
    parents = client.search_runs([experiment.experiment_id],
                                 filter_string="tags.`hpsearch.role` = 'study'",
                                 order_by=["attributes.start_time ASC"])
    try:
        versions = client.search_model_versions(f"name = '{MODEL}'")
    except mlflow.exceptions.MlflowException:
        versions = []
    return client, parents, sorted(versions, key=lambda v: int(v.version))


@pytest.mark.parametrize("point, version_existed", [
    ("registration.version_created", True),  # the version exists, no description or alias
    ("registration.models_logged", False),  # the models are logged, no version yet
])
def test_sigkill_during_registration_then_the_same_command_registers_one_version(
        tmp_path, point, version_existed):
    kill_at(tmp_path, point)
    client, (killed,), versions = stores(tmp_path)
    assert killed.info.status == "RUNNING"  # its process is dead: nobody else would close it
    assert [str(v.version) for v in versions] == (["1"] if version_existed else [])
    if version_existed:
        assert versions[0].tags["hpsearch.registration"] == "incomplete"
        assert versions[0].tags["trial"] == "0" and not versions[0].description

    again = hpsearch(tmp_path, *ARGS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "closed 1 MLflow run(s) left RUNNING by processes that ended" in again.stderr
    finished = "(finishing the registration an interrupted run had started)"
    assert (finished in again.stdout) == version_existed
    assert f"{MODEL} version 1 (alias champion)" in again.stdout

    client, parents, versions = stores(tmp_path)
    assert [str(v.version) for v in versions] == ["1"]  # not another version
    version = client.get_model_version(MODEL, "1")
    assert version.aliases == ["champion"]
    assert version.tags["hpsearch.registration"] == "complete"
    assert version.tags["study"] == "reg" and version.tags["trial"] == "0"
    assert "test_accuracy" in version.tags and "classifier from trial 0" in version.description
    assert [p.info.status for p in parents] == ["KILLED", "FINISHED"]
    assert "ended without closing this run" in parents[0].data.tags["hpsearch.reason"]
    # The finished version serves.
    _, test = load_dataset("fashion_mnist")
    with using_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    labels = model.predict({"images": test.images[:4, 0]})
    assert isinstance(labels, np.ndarray) and labels.shape == (4,)
    state = ("version 1 existed without description or alias" if version_existed
             else "no version existed yet")
    record(f"SIGKILL during registration ({point}: {state}), then the same command",
           "the killed process's parent run left RUNNING; the rerun closed it (KILLED, with "
           "the reason) and "
           + ("finished version 1 (tags, description, alias champion)" if version_existed
              else "registered version 1"),
           "the trial; exactly one registered version, complete and serving")
