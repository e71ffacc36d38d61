"""``hpsearch run`` on one GPU through the command line: two worker processes with CUDA-graph
steps, then the champion it registered, predicting on a machine view without CUDA."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from hpsearch.data_utils import load_dataset
from hpsearch.training.device import autocast_dtype

from conftest import clean_env, hpsearch

pytestmark = pytest.mark.slow  # a minute or two of GPU time: not in gpu_report --quick

STUDY, TRIALS = "gpu", 4
SPEC = """
dataset: fashion_mnist
epochs: 2
pruner: none
search_space:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: 128
  depth: 1
  width: 16
  dropout: 0.1
  arch: [mlp, cnn]
"""


@pytest.fixture(scope="module")
def gpu_study(tmp_path_factory, data_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """A 4-trial study run by 2 workers on the GPU, with CUDA graphs asked for."""
    cwd = tmp_path_factory.mktemp("gpu-study")
    (cwd / "spec.yaml").write_text(SPEC)
    result = hpsearch(cwd, "run", "--spec", "spec.yaml", "--study-name", STUDY, "--trials",
                      str(TRIALS), "--jobs", "2", "--cuda-graphs", "--device", "cuda",
                      "--train-subset", "4000", "--data-dir", str(data_dir), timeout=600)
    (cwd / "run.log").write_text(result.stdout + result.stderr)
    return cwd, result


def test_two_workers_share_one_gpu_and_finish_the_study(gpu_study) -> None:
    cwd, result = gpu_study
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("in 2 worker processes (no NVIDIA MPS" in result.stderr
            or "in 2 worker processes (NVIDIA MPS in use" in result.stderr), result.stderr[:2000]
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{cwd / 'hpsearch.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == TRIALS, states
    assert {"[w1]", "[w2]"} <= {line[:4] for line in result.stderr.splitlines()}


def test_every_trial_step_ran_as_a_captured_cuda_graph(gpu_study) -> None:
    cwd, _ = gpu_study
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id],
                              filter_string="tags.`hpsearch.role` = 'trial'")
    modes = [run.data.tags.get("hpsearch.step_mode", "") for run in runs]
    assert len(modes) == TRIALS
    assert all(mode.startswith("cuda graph (whole step captured") for mode in modes), modes


def test_the_champion_trained_on_cuda_registers_and_predicts_on_the_cpu(gpu_study,
                                                                       data_dir) -> None:
    cwd, _ = gpu_study
    tracking_uri = f"sqlite:///{cwd / 'mlflow.db'}"
    version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(
        f"hpsearch-{STUDY}", "champion")
    amp = autocast_dtype(torch.device("cuda"))
    assert version.tags["test_precision"] == ("bfloat16 autocast" if amp else "float32")
    _, test = load_dataset("fashion_mnist", data_dir)
    np.save(cwd / "batch.npy", test.images[:3, 0])

    predicted = hpsearch(cwd, "predict", "batch.npy", "--model", f"hpsearch-{STUDY}",
                         "--tracking-uri", tracking_uri,
                         env=clean_env(CUDA_VISIBLE_DEVICES=""), timeout=300)

    assert predicted.returncode == 0, predicted.stderr[-3000:]
    lines = predicted.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == [f"batch.npy[{i}]" for i in range(3)]
