"""An interrupted trial continues instead of starting over: a real ``hpsearch run`` stopped
(SIGINT, or SIGKILL) at the end of epoch 2 of 3 of trial 0, at the test-only pause
``epoch.end``, then the same command again. The retry runs before the spec's enqueued trials,
trains only epoch 3, reports epochs 1-2 again (Optuna and one MLflow curve), and its
checkpoint folder is gone when it ends."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import clean_env, hpsearch, signal_at_pause
from observations import record

pytestmark = pytest.mark.slow

# Seconds-long trials of three epochs, three of them enqueued: when trial 0 is interrupted
# two wait, and its retry is enqueued after them.
SPEC = """
dataset: fashion_mnist
epochs: 3
pruner: none
search_space:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: 128
  depth: 1
  width: 16
  dropout: 0.1
  arch: mlp
enqueue_trials:
  - {lr: 3.0e-3}
  - {lr: 5.0e-3}
  - {lr: 7.0e-3}
"""
ARGS = ("run", "--spec", "spec.yaml", "--study-name", "resume", "--trials", "3",
        "--train-subset", "2000", "--device", "cpu", "--heartbeat-interval", "1")


def stop_after_epoch_2_of_trial_0(cwd: Path, signum: int) -> tuple[int, str]:
    """Run, send ``signum`` while trial 0 pauses after its 2nd epoch; (exit code, stderr)."""
    (cwd / "spec.yaml").write_text(SPEC)
    exe = Path(sys.executable).with_name("hpsearch")
    proc = subprocess.Popen([str(exe), *ARGS], cwd=cwd, text=True,
                            env=clean_env(HPSEARCH_TEST_PAUSE="epoch.end=1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = signal_at_pause(proc, "epoch.end", signum, times=2)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, seen + err


def val_accuracy(client: MlflowClient, runs, number: int) -> dict[int, float]:
    run = next(r for r in runs if r.data.tags.get("optuna.trial_number") == str(number))
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}


def check_continued(cwd: Path, again: subprocess.CompletedProcess) -> optuna.Study:
    """The retry of trial 0 (trial 3) ran first and continued after epoch 2."""
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{cwd / 'hpsearch.db'}")
    trials = {t.number: t for t in study.trials}
    retry = trials[3]
    assert retry.system_attrs["retry_history"] == [0] and retry.params == trials[0].params
    assert retry.state.name == "COMPLETE"
    assert retry.datetime_start < trials[1].datetime_start  # before the enqueued trials
    folder = cwd / "hpsearch-checkpoints" / "resume"
    assert (f"trial    3  continues trial 0 after epoch 2 of 3 (checkpoint {folder}"
            in again.stderr)
    # Only epoch 3 trained again; epochs 1-2 reported to the pruner as trial 0 reported them.
    assert "trial    3  epoch   3/3" in again.stderr
    assert "trial    3  epoch   1/3" not in again.stderr
    assert "trial    3  epoch   2/3" not in again.stderr
    assert {k: retry.intermediate_values[k] for k in (1, 2)} == trials[0].intermediate_values
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    curve, before = val_accuracy(client, runs, 3), val_accuracy(client, runs, 0)
    assert sorted(curve) == [1, 2, 3] and {k: curve[k] for k in (1, 2)} == before
    assert not folder.exists()  # removed when the retry completed
    assert not list((cwd / "mlruns").rglob("state.pt"))  # never an artifact
    return study


def test_sigint_after_epoch_2_costs_no_finished_epoch(tmp_path):
    code, err = stop_after_epoch_2_of_trial_0(tmp_path, signal.SIGINT)
    assert code == 130
    state = tmp_path / "hpsearch-checkpoints" / "resume" / "trial-0" / "state.pt"
    assert state.exists()
    # The first estimate, on a CPU, once an epoch is timed.
    assert "estimate: epoch 1 of trial 0 took " in err

    again = hpsearch(tmp_path, *ARGS)
    assert ("interrupted trial(s) 0 run again first, with the same parameters; trial 0 "
            f"continues from the last epoch saved in {state.parent.parent}") in again.stderr
    study = check_continued(tmp_path, again)
    assert [t.state.name for t in study.trials].count("COMPLETE") == 3
    record("SIGINT at the end of epoch 2 of 3 of trial 0 (2 enqueued trials waiting)",
           "exit code 130; trial 0's state (weights, optimizer, schedule, random generators, "
           "epochs so far) kept in hpsearch-checkpoints/STUDY/trial-0; the same command ran "
           "its retry first and it continued after epoch 2: only epoch 3 trained again",
           "epochs 1-2 of trial 0 (reported again to the pruner and on the retry's run: one "
           "curve); the checkpoint folder removed when the retry completed")


def test_sigkill_after_epoch_2_is_retried_from_the_checkpoint(tmp_path):
    code, _ = stop_after_epoch_2_of_trial_0(tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    time.sleep(4)  # past the grace period of 3 heartbeats (--heartbeat-interval 1)

    again = hpsearch(tmp_path, *ARGS)

    check_continued(tmp_path, again)
    record("SIGKILL at the end of epoch 2 of 3 of trial 0",
           "next run: trial 0 found stale by its heartbeat and retried as trial 3 before the "
           "enqueued trials; the retry found trial 0's checkpoint and trained only epoch 3",
           "epochs 1-2 of trial 0 (one MLflow curve on the retry's run); the checkpoint folder "
           "removed when the retry completed")


def test_a_checkpoint_dir_under_a_file_is_bad_input(tmp_path):
    (tmp_path / "afile").write_text("")
    result = hpsearch(tmp_path, "run", "--trials", "1", "--checkpoint-dir", "afile/sub",
                      timeout=120)
    assert result.returncode == 2, result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"hpsearch: error: --checkpoint-dir {tmp_path / 'afile' / 'sub'}: "
        f"{tmp_path / 'afile'} is not a directory"]
    assert {p.name for p in tmp_path.iterdir()} == {"afile"}
    record("bad input: --checkpoint-dir under a file", "exit code 2, one line: 'is not a "
           "directory'", "nothing written in the working directory")


def test_a_signal_while_an_epoch_is_recorded_waits_for_its_records(tmp_path):
    """SIGINT in the middle of an epoch's records (after its progress line, before the
    pruner's report and the checkpoint: test pause ``epoch.recording``) is acted on once they
    are written, never inside a store's write: the epoch is reported, logged and
    checkpointed, then the trial ends as interrupted. (One CI run had left a trial RUNNING
    after an interrupt that arrived there.)"""
    (tmp_path / "spec.yaml").write_text(SPEC)
    exe = Path(sys.executable).with_name("hpsearch")
    proc = subprocess.Popen([str(exe), *ARGS], cwd=tmp_path, text=True,
                            env=clean_env(HPSEARCH_TEST_PAUSE="epoch.recording.trial0=2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = signal_at_pause(proc, "epoch.recording.trial0", signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = seen + err
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err

    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{tmp_path / 'hpsearch.db'}")
    trial = study.trials[0]
    assert trial.state.name == "FAIL"
    assert trial.user_attrs["fail_reason"] == "interrupted by SIGINT"
    assert list(trial.intermediate_values) == [1]  # epoch 1 reported after the signal came
    assert (tmp_path / "hpsearch-checkpoints" / "resume" / "trial-0" / "state.pt").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert "RUNNING" not in {r.info.status for r in runs}
    record("SIGINT while an epoch's results are being recorded (after its progress line, "
           "before the pruner's report and the checkpoint)",
           "exit 130 once the records are written: the epoch reported to Optuna and "
           "checkpointed, then the trial FAIL \"interrupted by SIGINT\", nothing RUNNING",
           "epoch 1 kept: its checkpoint (state.pt) is there for the retry")
