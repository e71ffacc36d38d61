"""The scale-out services on loopback (PostgreSQL for Optuna and MLflow, ``mlflow server``
proxying artifacts) and today's ``hpsearch run`` against them as one worker: the study lands
in PostgreSQL, the runs, artifacts and registered model on the server, nothing in the cwd."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import hpsearch, needs_fashion_mnist, tiny_mlp_spec

pytestmark = pytest.mark.slow

STUDY, TRIALS = "so1", 2
SPEC = tiny_mlp_spec(epochs=1)


def test_servers_take_a_study_and_a_proxied_artifact(postgres, mlflow_server, tmp_path):
    study = optuna.create_study(study_name="probe", storage=postgres.optuna_url)
    study.enqueue_trial({"x": 1.0})
    study.optimize(lambda trial: trial.suggest_float("x", 0, 2), n_trials=1)
    assert optuna.load_study(study_name="probe", storage=postgres.optuna_url).best_value == 1.0

    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = client.create_run(client.create_experiment("probe"))
    (tmp_path / "note.txt").write_text("proxied")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))

    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    stored = mlflow_server.local_path(run.info.artifact_uri) / "note.txt"
    assert stored.read_text() == "proxied"


@dataclass(frozen=True)
class Finished:
    """One ``hpsearch run`` worker's finished study on the shared services."""

    result: subprocess.CompletedProcess
    cwd: Path
    client: MlflowClient
    experiment_id: str


@pytest.fixture(scope="module")
def one_worker(postgres, mlflow_server, tmp_path_factory) -> Finished:
    cwd = tmp_path_factory.mktemp("worker")
    (cwd / "spec.yaml").write_text(SPEC)
    result = hpsearch(cwd, "run", "--spec", "spec.yaml", "--storage", postgres.optuna_url,
                      "--tracking-uri", mlflow_server.url, "--study-name", STUDY,
                      "--device", "cpu", "--trials", str(TRIALS), "--train-subset", "500",
                      timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = client.get_experiment_by_name(STUDY)
    assert experiment is not None
    return Finished(result, cwd, client, experiment.experiment_id)


def _runs(finished: Finished) -> tuple[object, list]:
    """(the study's parent run, its trial runs), from the server."""
    runs = finished.client.search_runs([finished.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    return parents[0], [r for r in runs if "mlflow.parentRunId" in r.data.tags]


@needs_fashion_mnist
def test_one_worker_finishes_its_trials_in_postgres(one_worker, postgres):
    study = optuna.load_study(study_name=STUDY, storage=postgres.optuna_url)
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,
                                        optuna.trial.TrialState.PRUNED))
    assert len(finished) == TRIALS == len(study.trials)


@needs_fashion_mnist
def test_trial_runs_nest_under_the_study_run_on_the_server(one_worker):
    parent, trials = _runs(one_worker)
    assert len(trials) == TRIALS
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parent.info.run_id}


@needs_fashion_mnist
def test_artifacts_go_through_the_server_to_its_destination(one_worker, mlflow_server):
    _, trials = _runs(one_worker)
    trial = trials[0]
    listed = {f.path for f in one_worker.client.list_artifacts(trial.info.run_id)}
    assert "confusion_matrix.json" in listed, listed

    on_server = mlflow_server.local_path(trial.info.artifact_uri) / "confusion_matrix.json"
    assert on_server.is_file() and on_server.stat().st_size > 0
    assert not (one_worker.cwd / "mlruns").exists()
    assert not (one_worker.cwd / "mlartifacts").exists()
    assert not list(one_worker.cwd.glob("*.db")), list(one_worker.cwd.iterdir())


@needs_fashion_mnist
def test_champion_is_registered_on_the_server(one_worker):
    parent, _ = _runs(one_worker)
    version = one_worker.client.get_model_version_by_alias(f"hpsearch-{STUDY}", "champion")
    assert version.run_id == parent.info.run_id
    assert version.status == "READY"
