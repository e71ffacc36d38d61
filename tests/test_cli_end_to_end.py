"""End to end through the real command line on real Fashion-MNIST, checked through the
MLflow client and Optuna, then served with ``mlflow models serve`` on loopback.

The study is made deterministic: every trial is enqueued, one of them with a learning rate
so small (1e-7) that its validation accuracy stays near chance (10%), and a
ThresholdPruner(lower=0.3) prunes any trial below 30% after its first epoch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

from hpsearch.data_utils import DEBIAN_FASHION_MNIST_DIR, load_dataset

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                       reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)"),
]

STUDY = "e2e"
MODEL = "hpsearch-e2e"
N_TRAIN = 2000
N_VAL = 6000  # 10% of Fashion-MNIST's 60,000 training images
SPEC = """
dataset: fashion_mnist
epochs: 2
pruner: {name: threshold, lower: 0.3}
search_space:
  lr: {type: float, low: 1.0e-7, high: 1.0e-2, log: true}
  batch_size: [32, 128]
  depth: {type: int, low: 1, high: 2}
  width: [16]
  dropout: {type: float, low: 0.0, high: 0.2}
  arch: [mlp, cnn]
  optimizer: adamw
enqueue_trials:
  - {lr: 3.0e-3, batch_size: 128, depth: 1, dropout: 0.0, arch: mlp}
  - {lr: 1.0e-7, batch_size: 128, depth: 1, dropout: 0.0, arch: mlp}
  - {lr: 1.0e-2, batch_size: 32, depth: 2, dropout: 0.1, arch: cnn}
  - {lr: 2.0e-3, batch_size: 128, depth: 2, dropout: 0.0, arch: mlp}
"""


def hpsearch(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("hpsearch")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hpsearch.cli"]
    return subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True,
                          env=env or clean_env(), timeout=900)


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "HPSEARCH_DATA_DIR")}
    # mlflow models serve execs uvicorn from PATH: the test interpreter's bin must be on it.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    """Run 3 trials with the defaults (sqlite stores in the working directory)."""
    cwd = tmp_path_factory.mktemp("e2e")
    (cwd / "spec.yaml").write_text(SPEC)
    result = hpsearch(cwd, "run", "--spec", "spec.yaml", "--trials", "3", "--study-name",
                      STUDY, "--train-subset", str(N_TRAIN), "--device", "cpu", "--seed", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    (cwd / "first_run.txt").write_text(result.stdout + result.stderr)
    return cwd


@pytest.fixture(scope="module")
def client(study_dir) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{study_dir / 'mlflow.db'}")


def runs(client: MlflowClient, role: str):
    experiment = client.get_experiment_by_name(STUDY)
    return client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`hpsearch.role` = '{role}'")


def test_defaults_put_both_stores_in_the_working_directory(study_dir):
    assert (study_dir / "hpsearch.db").exists()
    assert (study_dir / "mlflow.db").exists()


def test_study_holds_two_complete_and_one_pruned_trial(study_dir):
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{study_dir / 'hpsearch.db'}")
    states = [t.state.name for t in study.trials]
    # The fourth enqueued trial waits for a later run with a larger --trials.
    assert states == ["COMPLETE", "PRUNED", "COMPLETE", "WAITING"]
    assert study.trials[1].intermediate_values.keys() == {1}


def test_one_parent_run_and_one_nested_run_per_trial(client):
    (parent,) = runs(client, "study")
    trials = runs(client, "trial")
    assert len(trials) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}
    assert sorted(r.data.tags["optuna.trial_number"] for r in trials) == ["0", "1", "2"]
    assert parent.info.status == "FINISHED"
    assert "best_value" in parent.data.metrics
    assert parent.data.tags["best_trial"] in ("0", "2")


def test_every_trial_logs_per_epoch_metrics_with_epoch_steps(client):
    for run in runs(client, "trial"):
        expected_steps = [1] if run.data.tags["optuna.state"] == "PRUNED" else [1, 2]
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                    "epoch_seconds", "images_per_second"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == expected_steps, key
        assert run.data.params["arch"] in ("mlp", "cnn")


def test_pruned_trial_is_killed_not_failed_and_keeps_its_curves(client):
    (pruned,) = [r for r in runs(client, "trial") if r.data.tags["optuna.state"] == "PRUNED"]
    assert pruned.info.status == "KILLED"
    assert "epoch 1" in pruned.data.tags["hpsearch.reason"]
    files = {a.path for a in client.list_artifacts(pruned.info.run_id)}
    assert {"confusion_matrix.png", "confusion_matrix.json", "learning_curves.png"} <= files


def test_confusion_matrix_counts_match_the_logged_accuracy(client, tmp_path):
    for run in runs(client, "trial"):
        path = client.download_artifacts(run.info.run_id, "confusion_matrix.json", tmp_path)
        payload = json.loads(Path(path).read_text())
        counts = np.array(payload["counts"])
        assert counts.shape == (10, 10)
        assert counts.sum() == N_VAL
        accuracy = run.data.metrics["val_accuracy"]  # the latest epoch's value
        assert np.trace(counts) / counts.sum() == pytest.approx(accuracy, abs=1e-9)
        assert payload["class_names"][9] == "Ankle boot"


def test_champion_alias_points_at_the_best_trial(client):
    version = client.get_model_version_by_alias(MODEL, "champion")
    (parent,) = runs(client, "study")
    assert version.tags["trial"] == parent.data.tags["best_trial"]
    assert version.tags["study"] == STUDY
    test_accuracy = parent.data.metrics["test_accuracy"]
    assert 0.5 < test_accuracy <= 1.0
    assert float(version.tags["test_accuracy"]) == pytest.approx(test_accuracy, abs=1e-4)
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "test_confusion_matrix.png", "test_confusion_matrix.json"} <= files


def test_same_command_again_resumes_without_new_trials_then_adds_missing_ones(study_dir):
    again = hpsearch(study_dir, "run", "--spec", "spec.yaml", "--trials", "3",
                     "--study-name", STUDY, "--train-subset", str(N_TRAIN), "--device", "cpu")
    assert again.returncode == 0, again.stderr
    assert "3 of 3 trials finished; 0 to run" in again.stderr
    assert "already registered" in again.stdout
    more = hpsearch(study_dir, "run", "--spec", "spec.yaml", "--trials", "4",
                    "--study-name", STUDY, "--train-subset", str(N_TRAIN), "--device", "cpu")
    assert more.returncode == 0, more.stderr
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{study_dir / 'hpsearch.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_champion_answers_with_the_logged_test_accuracy(study_dir, client):
    port = free_port()
    env = clean_env() | {"MLFLOW_TRACKING_URI": f"sqlite:///{study_dir / 'mlflow.db'}"}
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow_exe), "models", "serve", "-m", f"models:/{MODEL}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=study_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_ready(port, server)
        _, test = load_dataset("fashion_mnist")
        images, labels = test.images[:2000], test.labels[:2000]
        body = json.dumps({"inputs": (images.astype(np.float32) / 255.0).tolist()}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            logits = np.asarray(json.loads(response.read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert logits.shape == (2000, 10)
    served_accuracy = float((logits.argmax(1) == labels).mean())
    (parent,) = [r for r in runs(client, "study") if "test_accuracy" in r.data.metrics]
    # 2,000 of the 10,000 test images: a sampling error of about 1 point.
    assert served_accuracy == pytest.approx(parent.data.metrics["test_accuracy"], abs=0.04)


def wait_until_ready(port: int, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise AssertionError(f"mlflow models serve not ready after {timeout_s} s")


def test_missing_data_is_one_clear_error_with_exit_code_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = hpsearch(tmp_path, "run", "--dataset", "mnist", "--data-dir", str(empty),
                      "--trials", "1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "mnist" in result.stderr and str(empty) in result.stderr
    assert not (tmp_path / "hpsearch.db").exists()  # nothing half-written


def test_unknown_dataset_and_bad_spec_are_rejected_with_exit_code_2(tmp_path):
    unknown = hpsearch(tmp_path, "run", "--dataset", "imagenet", "--trials", "1")
    assert unknown.returncode == 2
    assert "imagenet" in unknown.stderr and "fashion_mnist" in unknown.stderr
    (tmp_path / "bad.yaml").write_text("dataset: fashion_mnist\nepoch: 3\n")
    bad = hpsearch(tmp_path, "run", "--spec", "bad.yaml")
    assert bad.returncode == 2
    assert "bad.yaml: epoch: unknown key" in bad.stderr
    assert "Traceback" not in unknown.stderr + bad.stderr
