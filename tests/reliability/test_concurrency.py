"""Several ``hpsearch run`` processes started at once on one fresh study, storage and sqlite
tracking store: no race on schema creation, no duplicate trial numbers, nothing RUNNING,
exactly the target number of trials and one registered champion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import clean_env, tiny_mlp_spec
from observations import record

pytestmark = pytest.mark.slow

WORKERS, TRIALS = 3, 6
SPEC = tiny_mlp_spec(epochs=1)


def test_workers_started_at_once_share_one_fresh_study(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    exe = Path(sys.executable).with_name("hpsearch")
    command = [str(exe), "run", "--spec", "spec.yaml", "--study-name", "shared", "--trials",
               str(TRIALS), "--train-subset", "1000", "--device", "cpu", "--quiet"]
    workers = [subprocess.Popen(command, cwd=tmp_path, env=clean_env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for _ in range(WORKERS)]
    results = [(w.wait(timeout=600), *w.communicate()) for w in workers]
    for code, _, err in results:
        assert code == 0, err[-3000:]

    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 'hpsearch.db'}")
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers)))  # unique and gap-free
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and "FAIL" not in states
    # Trial slots are taken under the study lock: the target is exact, never overshot.
    assert states.count("COMPLETE") == TRIALS

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "shared"]
    runs = client.search_runs([experiment.experiment_id])
    trial_numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in runs
                           if r.data.tags["hpsearch.role"] == "trial")
    assert trial_numbers == numbers  # one run per trial, none twice
    parents = [r for r in runs if r.data.tags["hpsearch.role"] == "study"]
    assert len(parents) == WORKERS
    assert {r.info.status for r in runs} == {"FINISHED"}
    # Only the last worker to finish registers; the others find trials still running or
    # the alias already on the study's best trial.
    versions = client.search_model_versions("name = 'hpsearch-shared'")
    assert len(versions) == 1
    assert versions[0].tags["trial"] == str(study.best_trial.number)
    record(f"{WORKERS} workers started at once on a fresh sqlite study and tracking store",
           f"all exited 0; {len(numbers)} trials numbered 0..{len(numbers) - 1} without "
           "duplicates; schema created once", f"exactly {states.count('COMPLETE')} complete "
           f"trials (the target), one MLflow run each, {WORKERS} parent runs FINISHED, one "
           "registered version")
