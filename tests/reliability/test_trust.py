"""Trust: no password in what hpsearch writes or prints, no silent resume of a changed study,
every failed trial says why, a study stopped by failures exits 1, and corrupt data files get
one line and exit code 2 with nothing written. Each case tries the exact input a user would;
the cases that end before training run the command line in this process (conftest.cli)."""

from __future__ import annotations

import gzip
import io
import os
import textwrap

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

import hpsearch.search.session as session_module
from hpsearch.errors import HpsearchError
from hpsearch.search.config import RunConfig
from hpsearch.search.progress import Reporter
from hpsearch.search.study import run_study
from hpsearch.studies import load_spec

from conftest import cli, hpsearch, tiny_mlp_spec
from observations import record

pytestmark = pytest.mark.slow

SECRET = "S3cretPassw0rd"

# ---------------------------------------------------------------------------------------------
# 1. No secret in the tracking store, the progress lines or the errors
# ---------------------------------------------------------------------------------------------

SECRET_CASES = {
    "run --storage": (["run", "--trials", "1", "--storage",
                       f"postgresql://hp:{SECRET}@127.0.0.1:1/optuna"], "hp:***@127.0.0.1"),
    "run HPSEARCH_STORAGE": (["run", "--trials", "1"], "hp:***@127.0.0.1"),
    "run --tracking-uri": (["run", "--trials", "1", "--tracking-uri",
                            f"http://hp:{SECRET}@127.0.0.1:1"], "http://hp:***@127.0.0.1:1"),
    "studies": (["studies", "--storage", f"postgresql://hp:{SECRET}@127.0.0.1:1/optuna"],
                "hp:***@127.0.0.1"),
    "show": (["show", "x", "--storage", f"postgresql://hp:{SECRET}@127.0.0.1:1/optuna"],
             "hp:***@127.0.0.1"),
    "serve": (["serve", "--tracking-uri", f"http://hp:{SECRET}@127.0.0.1:1"],
              "http://hp:***@127.0.0.1:1"),
    "ui": (["ui", "--tracking-uri", f"https://hp:{SECRET}@mlflow.lab"],
           "https://hp:***@mlflow.lab"),
}


@pytest.mark.parametrize("case", SECRET_CASES)
def test_a_password_in_a_url_never_reaches_an_error_or_progress_line(tmp_path, case):
    from conftest import clean_env

    args, shown = SECRET_CASES[case]
    env = clean_env(HPSEARCH_STORAGE=f"postgresql://hp:{SECRET}@127.0.0.1:1/optuna")
    result = cli(tmp_path, *args, env=env)
    assert result.returncode != 0
    assert SECRET not in result.stdout + result.stderr
    assert shown in result.stdout + result.stderr, result.stderr
    record(f"a password in a URL: {case}", f"exit code {result.returncode}; the URL shown as "
           f"{shown!r}", "the password only in the user's own URL")


# ---------------------------------------------------------------------------------------------
# 2. A changed study stops before any training
# ---------------------------------------------------------------------------------------------

FIRST = """
dataset: fashion_mnist
epochs: 1
pruner: none
search_space:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: [64]
  depth: 1
  width: 16
  dropout: 0.0
  arch: [mlp]
"""
RUN = ("run", "--spec", "spec.yaml", "--study-name", "changed", "--train-subset", "1000",
       "--device", "cpu", "--quiet")


def test_a_changed_study_stops_before_training_naming_each_change(tmp_path):
    (tmp_path / "spec.yaml").write_text(FIRST)
    first = hpsearch(tmp_path, *RUN, "--trials", "1")
    assert first.returncode == 0, first.stderr
    (tmp_path / "spec.yaml").write_text(FIRST.replace("[64]", "[128]").replace("[mlp]", "[cnn]"))

    changed = cli(tmp_path, *RUN, "--trials", "3")

    assert changed.returncode == 2
    message = changed.stderr.strip()
    assert message.count("\n") == 0 and "Traceback" not in message
    assert "study 'changed' in sqlite:///hpsearch.db was created with other settings" in message
    assert "search_space.batch_size [64] -> [128]" in message
    assert "search_space.arch ['mlp'] -> ['cnn']" in message
    assert "--study-name" in message
    (tmp_path / "spec.yaml").write_text(FIRST)
    epochs = cli(tmp_path, *RUN, "--trials", "3", "--epochs", "2")
    assert epochs.returncode == 2 and "epochs 1 -> 2" in epochs.stderr
    subset = cli(tmp_path, *RUN[:5], "--device", "cpu", "--trials", "3")
    assert subset.returncode == 2 and "train_subset 1000 -> None" in subset.stderr
    study = optuna.load_study(study_name="changed", storage=f"sqlite:///{tmp_path}/hpsearch.db")
    assert len(study.trials) == 1  # nothing ran
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("changed").experiment_id])
    assert len(runs) == 2  # the first run's parent and trial: no parent run was started
    same = hpsearch(tmp_path, *RUN, "--trials", "2")  # same settings, more trials: resumes
    assert same.returncode == 0, same.stderr
    record("resuming a study with another spec (batch_size [64] -> [128], arch [mlp] -> "
           "[cnn]), another --epochs, another --train-subset",
           "exit code 2 before any training, one line naming each changed key with old and "
           "new value and suggesting --study-name", "the study's trials and runs untouched; "
           "the same settings with more --trials resume")


# ---------------------------------------------------------------------------------------------
# 3, 4. Every failed trial says why; failures in a row stop the study with exit code 1
# ---------------------------------------------------------------------------------------------


def _write(tmp_path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_every_failed_trial_says_why_whatever_raised(tmp_path, monkeypatch):
    """Failures in sampling (before the trial's MLflow run exists), in model building and in
    logging: each trial has a fail_reason, its progress line shows it, the study goes on."""
    spec = load_spec(_write(tmp_path, tiny_mlp_spec(epochs=1) + textwrap.dedent("""
        enqueue_trials:
          - {lr: 1.0e-3}
          - {lr: 2.0e-3}
          - {lr: 3.0e-3}
          - {lr: 4.0e-3}
    """)))
    from hpsearch.studies.spec import StudySpec

    real_sample, real_build = StudySpec.sample, session_module.build_network
    calls = {"n": 0}

    def sample(self, trial):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("sampling went wrong\nsecond line")
        return real_sample(self, trial)

    def build(params, info, **kwargs):
        if params.lr == 2.0e-3:
            raise ValueError("no such layer")
        return real_build(params, info, **kwargs)

    def log_epoch(self, result):
        raise OSError("disk full")

    monkeypatch.setattr(StudySpec, "sample", sample)
    monkeypatch.setattr(session_module, "build_network", build)
    stream = io.StringIO()
    config = RunConfig(spec=spec, trials=1, study_name="why", register_name="why",
                       storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                       tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", train_subset=500,
                       device="cpu", max_consecutive_failures=5)
    import hpsearch.tracking.runs as runs_module

    with monkeypatch.context() as patch:
        patch.setattr(runs_module.TrialRun, "log_epoch", lambda self, r: (
            log_epoch(self, r) if calls["n"] == 3 else None))
        summary = run_study(config, Reporter("val_accuracy", stream=stream, verbose=False))
    study = optuna.load_study(study_name="why", storage=config.storage)
    reasons = [t.user_attrs.get("fail_reason") for t in study.trials if t.state.name == "FAIL"]
    assert reasons == ["RuntimeError: sampling went wrong", "ValueError: no such layer",
                       "OSError: disk full"]
    assert "mlflow_run_id" not in study.trials[0].user_attrs  # failed before its run existed
    lines = stream.getvalue().splitlines()
    for reason in reasons:
        assert any(line.startswith("trial") and f"FAIL     {reason}" in line for line in lines)
    assert summary.n_complete == 1 and summary.exit_code == 0
    record("a trial failing in sampling (before its MLflow run exists), in model building, "
           "in MLflow logging", "each trial FAIL with its fail_reason (first line of the "
           "error), shown on its progress line; the study went on", "the later complete "
           "trial; champion registered")


BROKEN_ARCH = """
from torch import nn
from hpsearch.models.registry import register_model

@register_model("broken")
def broken(*, in_channels, image_size, num_classes, depth, width, dropout):
    raise ValueError("injected bug in the model")
"""


def test_a_study_stopped_by_max_failures_exits_1_and_says_so(tmp_path):
    from conftest import clean_env

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "sitecustomize.py").write_text(BROKEN_ARCH)
    _write(tmp_path, tiny_mlp_spec(epochs=1).replace("arch: mlp", "arch: broken"))
    path = os.pathsep.join(filter(None, [str(tmp_path / "plugins"),
                                         os.environ.get("PYTHONPATH")]))
    result = hpsearch(tmp_path, "run", "--spec", "spec.yaml", "--trials", "5",
                      "--max-failures", "2", "--device", "cpu", "--train-subset", "500",
                      env=clean_env(PYTHONPATH=path))
    assert result.returncode == 1, result.stderr
    assert ("stopped early: stopped after 2 failed trials in a row; last: ValueError: injected "
            "bug in the model") in result.stdout
    assert "the study stopped because its trials kept failing" in result.stdout
    record("every trial fails with the same bug (--max-failures 2)", "the study stops after 2 "
           "failures in a row, exit code 1, the summary says why and what to do",
           "both failed trials with their reason")


# ---------------------------------------------------------------------------------------------
# 5. Corrupt or inconsistent data files: one line, exit code 2, nothing written
# ---------------------------------------------------------------------------------------------

IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
       "t10k-labels-idx1-ubyte")


def _idx(array: np.ndarray) -> bytes:
    magic = 2051 if array.ndim == 3 else 2049
    return (magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
            + array.astype(np.uint8).tobytes())


def _data_dir(tmp_path, *, n_train=60, n_test=20, **replace: bytes):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train),
              rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))
    for stem, array in zip(IDX, arrays):
        payload = replace.get(stem, gzip.compress(_idx(array)))
        (data / f"{stem}.gz").write_bytes(payload)
    return data


DATA_CASES = {
    "truncated train-images-idx3-ubyte.gz": (
        lambda: {"train-images-idx3-ubyte": gzip.compress(_idx(np.zeros((60, 28, 28))))[:-40]},
        "train-images-idx3-ubyte.gz: corrupt or truncated gzip file"),
    "labels that do not match the images in number": (
        lambda: {"train-labels-idx1-ubyte": gzip.compress(_idx(np.zeros(10)))},
        "train-labels-idx1-ubyte.gz: 10 labels, but train-images-idx3-ubyte.gz holds 60 "
        "images"),
    "a labels file where the images should be (wrong magic number)": (
        lambda: {"t10k-images-idx3-ubyte": gzip.compress(_idx(np.zeros(20)))},
        "t10k-images-idx3-ubyte.gz: bad IDX magic number: expected 2051, found 2049"),
    "images of the wrong size": (
        lambda: {"train-images-idx3-ubyte": gzip.compress(_idx(np.zeros((60, 32, 32))))},
        "train-images-idx3-ubyte.gz: images have shape (1, 32, 32), fashion_mnist needs "
        "(1, 28, 28)"),
    "an empty file": (lambda: {"t10k-labels-idx1-ubyte": gzip.compress(b"")},
                      "t10k-labels-idx1-ubyte.gz: empty file"),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_corrupt_data_is_one_line_with_exit_code_2_and_writes_nothing(tmp_path, case):
    replace, message = DATA_CASES[case]
    data = _data_dir(tmp_path, **replace())
    work = tmp_path / "work"
    work.mkdir()

    result = cli(work, "run", "--trials", "1", "--data-dir", str(data), "--device", "cpu")

    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hpsearch: error: "), result.stderr
    assert message in lines[0]
    assert not list(work.iterdir())
    record(f"bad data: {case}", f"exit code 2, one line: {message!r}",
           "nothing written in the working directory")


def test_loading_raises_hpsearch_error_not_a_traceback(tmp_path):
    from hpsearch.search.runner import load_data

    data = _data_dir(tmp_path, **{"train-labels-idx1-ubyte": b""})
    with pytest.raises(HpsearchError, match=r"train-labels-idx1-ubyte\.gz: empty file"):
        load_data("fashion_mnist", str(data))
