"""Faults injected into trials of a real study (real sqlite stores, real MLflow runs, real
Fashion-MNIST): NaN losses, out-of-memory errors and bugs. The study must go on, record each
trial honestly, keep a finite best value and register its champion."""

from __future__ import annotations

import io

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

import hpsearch.search.session as session_module
from hpsearch.search.config import RunConfig
from hpsearch.search.progress import Reporter
from hpsearch.search.study import run_study
from hpsearch.studies import load_spec

from observations import record

pytestmark = pytest.mark.slow

# Learning rates that mark the injected fault (distinct: Optuna skips duplicate enqueues).
GOOD, NAN, OOM, BUG, GOOD2 = 1e-3, 2e-3, 3e-3, 4e-3, 5e-3


class Faulty(nn.Module):
    """Wraps a real network; misbehaves while training, as its fault says."""

    def __init__(self, network: nn.Module, fault: str) -> None:
        super().__init__()
        self.network, self.fault = network, fault

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.fault == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.training and self.fault == "bug":
            raise ValueError("injected bug")
        logits = self.network(x)
        return logits * float("nan") if self.fault == "nan" else logits


@pytest.fixture
def faulty_networks(monkeypatch):
    real = session_module.build_network
    faults = {NAN: "nan", OOM: "oom", BUG: "bug"}

    def build(params, info, **kwargs):
        fault = faults.get(params.lr)
        network = real(params, info, **kwargs)
        return Faulty(network, fault) if fault else network

    monkeypatch.setattr(session_module, "build_network", build)


def spec_file(tmp_path, trials):
    """A spec that enqueues ``trials``: (lr, dropout) pairs, each distinct."""
    enqueued = "\n".join(f"  - {{lr: {lr}, dropout: {dropout}}}" for lr, dropout in trials)
    path = tmp_path / "spec.yaml"
    path.write_text(f"""
dataset: fashion_mnist
epochs: 2
pruner: none
sampler: {{name: random}}
search_space:
  lr: [{GOOD}, {NAN}, {OOM}, {BUG}, {GOOD2}]
  batch_size: 128
  depth: 1
  width: 16
  dropout: [0.0, 0.1]
  arch: mlp
enqueue_trials:
{enqueued}
""")
    return load_spec(path)


def study_config(tmp_path, spec, trials, **overrides) -> RunConfig:
    return RunConfig(spec=spec, trials=trials, study_name="faults", register_name="faults",
                     storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                     tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", train_subset=1000,
                     device="cpu", **overrides)


def trial_runs(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("faults")
    runs = client.search_runs([experiment.experiment_id])
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in runs
                 if r.data.tags.get("hpsearch.role") == "trial"}
    return client, runs, by_number


def test_nan_oom_and_bug_end_their_trials_while_the_study_goes_on(tmp_path, faulty_networks):
    spec = spec_file(tmp_path,
                     [(GOOD, 0.0), (NAN, 0.0), (OOM, 0.0), (BUG, 0.0), (GOOD2, 0.0)])
    summary = run_study(study_config(tmp_path, spec, trials=3), Reporter("val_accuracy",
                                                                          stream=io.StringIO()))
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "FAIL", "FAIL", "COMPLETE"]
    nan, oom, bug = trials[1], trials[2], trials[3]
    assert nan.user_attrs["diverged_epoch"] == 1 and not nan.intermediate_values
    assert oom.user_attrs["failure_kind"] == "out_of_memory"
    assert "out of memory with batch_size 128 and arch mlp" in oom.user_attrs["fail_reason"]
    assert bug.user_attrs["fail_reason"] == "ValueError: injected bug"
    assert summary.best_value is not None and summary.best_value == study.best_value
    assert study.best_trial.number in (0, 4)
    assert summary.registration is not None and summary.stop_reason is None

    client, runs, by_number = trial_runs(tmp_path)
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED", "FAILED"}  # none RUNNING
    assert by_number[1].info.status == "KILLED"  # pruned: stopped on purpose
    assert "diverged at epoch 1" in by_number[1].data.tags["hpsearch.reason"]
    assert by_number[1].data.tags["hpsearch.diverged_epoch"] == "1"
    assert by_number[2].info.status == "FAILED" and by_number[3].info.status == "FAILED"
    traceback_text = client.download_artifacts(by_number[3].info.run_id, "traceback.txt",
                                               str(tmp_path))
    assert "ValueError: injected bug" in open(traceback_text).read()
    record("NaN loss in a trial", "trial PRUNED at epoch 1, reason 'diverged at epoch 1: "
           "train_loss nan', run KILLED; the study went on",
           "no NaN reported to Optuna; best value finite")
    record("out-of-memory error in a trial (torch.OutOfMemoryError injected)",
           "trial FAILED, reason names batch_size 128 and arch mlp; the study went on (memory "
           "release runs but is not measured on CPU)",
           "earlier and later trials; champion registered")
    record("exception (a bug) in a trial", "trial FAILED with traceback.txt on its run; "
           "the study went on", "earlier and later trials; champion registered")


def test_study_stops_after_consecutive_errors_but_not_after_out_of_memory(tmp_path,
                                                                           faulty_networks):
    spec = spec_file(tmp_path, [(OOM, 0.0), (OOM, 0.1), (BUG, 0.0), (BUG, 0.1), (GOOD, 0.0)])
    summary = run_study(study_config(tmp_path, spec, trials=3, max_consecutive_failures=2),
                        Reporter("val_accuracy", stream=io.StringIO()))
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    # The fifth enqueued trial never started: the study stopped before it.
    assert [t.state.name for t in study.trials] == ["FAIL"] * 4 + ["WAITING"]
    assert summary.stop_reason == ("stopped after 2 failed trials in a row; last: "
                                   "ValueError: injected bug")
    assert summary.registration is None
    _, runs, _ = trial_runs(tmp_path)
    assert "RUNNING" not in {r.info.status for r in runs}
    record("the same bug in every trial (2 in a row, --max-failures 2)",
           "study stopped with 'stopped after 2 failed trials in a row; last: ValueError: "
           "injected bug'; two earlier out-of-memory failures did not count",
           "all 4 trials recorded as FAIL; no run left RUNNING")
