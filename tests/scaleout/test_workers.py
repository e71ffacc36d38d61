"""Three ``hpsearch run`` workers, each in its own directory (no shared disk), on one study in
PostgreSQL and one ``mlflow server``: one worker is killed mid-trial; the others retry its
trial, finish exactly the target number of trials and register the champion once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import clean_env, hpsearch, needs_fashion_mnist, tiny_mlp_spec

pytestmark = [pytest.mark.slow, needs_fashion_mnist]

STUDY, TRIALS, WORKERS = "three", 12, 3
SPEC = tiny_mlp_spec(epochs=3)


@dataclass(frozen=True)
class Outcome:
    codes: list[int]
    stdout: list[str]
    stderr: list[str]
    killed_worker: int
    killed_trial: int
    storage: str
    client: MlflowClient
    experiment_id: str


def _worker(cwd: Path, storage: str, tracking_uri: str) -> subprocess.Popen:
    (cwd / "spec.yaml").write_text(SPEC)
    exe = Path(sys.executable).with_name("hpsearch")
    command = [str(exe), "run", "--spec", "spec.yaml", "--study-name", STUDY, "--trials",
               str(TRIALS), "--storage", storage, "--tracking-uri", tracking_uri,
               "--train-subset", "3000", "--device", "cpu", "--heartbeat-interval", "1"]
    # Three workers on a 2-core machine: one thread each, so they do not thrash.
    return subprocess.Popen(command, cwd=cwd, env=clean_env(OMP_NUM_THREADS="1"), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def outcome(postgres, mlflow_server, tmp_path_factory) -> Outcome:
    storage = postgres.create_database("three_workers")
    workers = [_worker(tmp_path_factory.mktemp(f"machine{k}"), storage, mlflow_server.url)
               for k in range(WORKERS)]
    killed: dict[str, int] = {}
    stderr: list[list[str]] = [[] for _ in workers]
    kill_lock = threading.Lock()

    def read(k: int) -> None:
        """Collect worker k's stderr; the first worker to train an epoch of its second
        trial is SIGKILLed there (mid-trial, after it has finished one)."""
        trials_started = set()
        for line in workers[k].stderr:
            stderr[k].append(line)
            match = re.match(r"  trial +(\d+)  epoch   1/", line)
            if match:
                trials_started.add(int(match[1]))
                with kill_lock:
                    if len(trials_started) == 2 and not killed:
                        workers[k].send_signal(signal.SIGKILL)
                        killed.update(worker=k, trial=int(match[1]))

    readers = [threading.Thread(target=read, args=(k,)) for k in range(WORKERS)]
    for thread in readers:
        thread.start()
    deadline = time.monotonic() + 600
    codes = []
    for worker in workers:
        try:
            codes.append(worker.wait(timeout=max(1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            worker.kill()
            codes.append(worker.wait())
    for thread in readers:
        thread.join(timeout=30)
    stdout = [worker.stdout.read() for worker in workers]
    assert killed, "no worker reached a second trial: " + "".join(stderr[0])[-2000:]
    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = client.get_experiment_by_name(STUDY)
    return Outcome(codes, stdout, ["".join(lines) for lines in stderr], killed["worker"],
                   killed["trial"], storage, client, experiment.experiment_id)


def _survivors(outcome: Outcome) -> list[int]:
    return [k for k in range(WORKERS) if k != outcome.killed_worker]


def test_surviving_workers_exit_cleanly_and_the_killed_one_was_killed(outcome):
    assert outcome.codes[outcome.killed_worker] == -signal.SIGKILL
    for k in _survivors(outcome):
        assert outcome.codes[k] == 0, outcome.stderr[k][-3000:]


def test_exactly_the_target_number_of_trials_finished_without_duplicates(outcome):
    study = optuna.load_study(study_name=STUDY, storage=outcome.storage)
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers)))
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == TRIALS
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    # The only failure is the killed worker's trial.
    assert [t.number for t in study.get_trials(states=(TrialState.FAIL,))] == \
        [outcome.killed_trial]


def test_the_killed_workers_trial_was_retried_by_another_worker(outcome):
    study = optuna.load_study(study_name=STUDY, storage=outcome.storage)
    killed = study.trials[outcome.killed_trial]
    (retry,) = [t for t in study.trials
                if t.system_attrs.get("retry_history") == [outcome.killed_trial]]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == killed.params
    ran_retry = [k for k in _survivors(outcome)
                 if re.search(rf"^trial +{retry.number}  COMPLETE", outcome.stderr[k], re.M)]
    assert len(ran_retry) == 1


def test_one_experiment_holds_one_nested_run_per_trial(outcome):
    study = optuna.load_study(study_name=STUDY, storage=outcome.storage)
    runs = outcome.client.search_runs([outcome.experiment_id], max_results=1000)
    parents = {r.info.run_id: r for r in runs if r.data.tags["hpsearch.role"] == "study"}
    assert len(parents) == WORKERS
    trial_runs = [r for r in runs if r.data.tags["hpsearch.role"] == "trial"]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in trial_runs) == \
        [t.number for t in study.trials]
    assert all(r.data.tags["mlflow.parentRunId"] in parents for r in trial_runs)
    killed_run = next(r for r in trial_runs
                      if r.data.tags["optuna.trial_number"] == str(outcome.killed_trial))
    assert killed_run.info.status == "KILLED"
    assert killed_run.data.tags["hpsearch.retried_as"]
    statuses = sorted(p.info.status for p in parents.values())
    assert statuses == ["FINISHED", "FINISHED", "KILLED"]  # the dead worker's parent run


def test_the_champion_is_registered_exactly_once(outcome):
    study = optuna.load_study(study_name=STUDY, storage=outcome.storage)
    versions = outcome.client.search_model_versions(f"name = 'hpsearch-{STUDY}'")
    assert len(versions) == 1
    champion = outcome.client.get_model_version_by_alias(f"hpsearch-{STUDY}", "champion")
    assert champion.tags["study"] == STUDY
    assert champion.tags["trial"] == str(study.best_trial.number)
    # One worker registered; the other found the alias already on the best trial.
    said = [re.search(rf"^(already )?registered: hpsearch-{STUDY} version 1 ",
                      outcome.stdout[k], re.M) for k in _survivors(outcome)]
    assert sorted(bool(m and m[1]) for m in said) == [False, True], outcome.stdout


def test_register_command_adds_a_version_through_the_server(outcome, mlflow_server, tmp_path):
    # The storage URL (with a password, in real use) from the environment, not argv.
    result = hpsearch(tmp_path, "register", STUDY, "--tracking-uri", mlflow_server.url,
                      "--device", "cpu",
                      env=clean_env(OMP_NUM_THREADS="1", HPSEARCH_STORAGE=outcome.storage))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"registered hpsearch-{STUDY} version 2 (alias champion)" in result.stdout
    champion = outcome.client.get_model_version_by_alias(f"hpsearch-{STUDY}", "champion")
    assert str(champion.version) == "2"
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "mlruns").exists()
    assert os.listdir(tmp_path) == []
