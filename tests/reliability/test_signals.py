"""Signals sent to a real ``hpsearch run`` subprocess mid-trial, then the same command again:
finished trials are kept, nothing stays RUNNING, and the study completes its target."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import clean_env, cli, hpsearch, signal_at_pause, tiny_mlp_spec
from observations import record

pytestmark = pytest.mark.slow

TRIALS = 3
# Trials of a second or two each (one-layer MLPs on 1,000 images); the signal lands while
# trial 1 is paused after its first epoch (HPSEARCH_TEST_PAUSE, hpsearch/_testhooks.py),
# in the middle of the trial whatever the machine's speed.
SPEC = tiny_mlp_spec(epochs=2)
ARGS = ("run", "--spec", "spec.yaml", "--study-name", "signals", "--trials", str(TRIALS),
        "--train-subset", "1000", "--device", "cpu", "--heartbeat-interval", "1")
PAUSE_POINT = "epoch.end.trial1"  # after each epoch of trial 1 (hpsearch/_testhooks.py)


def start(cwd: Path) -> subprocess.Popen:
    (cwd / "spec.yaml").write_text(SPEC)
    exe = Path(sys.executable).with_name("hpsearch")
    return subprocess.Popen([str(exe), *ARGS], cwd=cwd, text=True,
                            env=clean_env(HPSEARCH_TEST_PAUSE=f"{PAUSE_POINT}=120"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def signal_inside_trial_1(proc: subprocess.Popen, signum: int) -> tuple[str, str]:
    """Wait until trial 1 has trained one epoch and paused, send ``signum``, return
    (stdout, stderr)."""
    seen = signal_at_pause(proc, PAUSE_POINT, signum)
    out, err = proc.communicate(timeout=120)
    return out, seen + err


def stores(cwd: Path):
    study = optuna.load_study(study_name="signals", storage=f"sqlite:///{cwd / 'hpsearch.db'}")
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("signals")
    return study, client.search_runs([experiment.experiment_id])


def trial_run(runs, number: int):
    return next(r for r in runs if r.data.tags.get("optuna.trial_number") == str(number))


def parents(runs):
    return [r for r in runs if r.data.tags.get("hpsearch.role") == "study"]


def assert_resumed_to_target(cwd: Path) -> tuple[optuna.Study, list, object]:
    again = hpsearch(cwd, *ARGS)
    assert again.returncode == 0, again.stderr
    study, runs = stores(cwd)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == TRIALS
    assert "RUNNING" not in states
    assert "RUNNING" not in {r.info.status for r in runs}
    assert study.best_value == study.best_value  # finite, not NaN
    return study, runs, again


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_fails_the_running_trial_and_the_same_command_resumes(tmp_path, signum,
                                                                        code):
    name = signal.Signals(signum).name
    proc = start(tmp_path)
    out, err = signal_inside_trial_1(proc, signum)
    assert proc.returncode == code
    assert f"interrupted by {name}" in out  # the summary so far
    study, runs = stores(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    assert study.trials[1].user_attrs["fail_reason"] == f"interrupted by {name}"
    assert trial_run(runs, 0).info.status == "FINISHED"
    assert trial_run(runs, 1).info.status == "KILLED"
    assert trial_run(runs, 1).data.tags["hpsearch.failure_kind"] == "interrupted"
    assert [p.info.status for p in parents(runs)] == ["KILLED"]
    assert "Traceback" not in err

    # Counted as interrupted, not failed, in the summary and by `hpsearch studies`.
    assert "1 complete, 0 pruned, 0 failed, 1 interrupted" in out
    listed = cli(tmp_path, "studies", "--format", "json")
    (row,) = json.loads(listed.stdout)
    assert (row["failed"], row["interrupted"]) == (0, 1)

    study, runs, again = assert_resumed_to_target(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    # The interrupted trial ran again first, with its parameters, tagged as a retry.
    retry = study.trials[2]
    assert retry.system_attrs["retry_history"] == [1] and retry.params == study.trials[1].params
    assert trial_run(runs, 2).data.tags["hpsearch.retry_of"] == "1"
    assert "interrupted trial(s) 1 run again first, with the same parameters" in again.stderr
    assert sorted(p.info.status for p in parents(runs)) == ["FINISHED", "KILLED"]
    record(f"{name} during trial 1",
           f"exit code {code}; trial 1 counted INTERRUPTED (not failed) by the summary and "
           f"`hpsearch studies`, reason 'interrupted by {name}', its run and the parent run "
           "KILLED", "trial 0; the same command then ran trial 1 again first with its "
           "parameters (tagged hpsearch.retry_of), then the missing trial (3 complete)")


def test_sigkill_mid_trial_is_detected_retried_and_its_runs_closed(tmp_path):
    proc = start(tmp_path)
    signal_inside_trial_1(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    _, runs = stores(tmp_path)
    assert trial_run(runs, 1).info.status == "RUNNING"  # orphaned by the dead worker
    time.sleep(4)  # past the grace period of 3 heartbeats (--heartbeat-interval 1)

    study, runs, _ = assert_resumed_to_target(tmp_path)
    dead = study.trials[1]
    assert dead.state.name == "FAIL"
    (retry,) = [t for t in study.trials if t.system_attrs.get("retry_history") == [1]]
    assert retry.state.name == "COMPLETE" and retry.params == dead.params
    orphan = trial_run(runs, 1)
    assert orphan.info.status == "KILLED"
    assert orphan.data.tags["hpsearch.retried_as"] == str(retry.number)
    assert trial_run(runs, retry.number).data.tags["hpsearch.retry_of"] == "1"
    assert sorted(p.info.status for p in parents(runs)) == ["FINISHED", "KILLED"]
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(finished) == TRIALS and len({t.number for t in finished}) == TRIALS
    record("SIGKILL during trial 1 (no clean-up possible)",
           "next run: trial 1 found stale by its heartbeat, set FAIL and retried with the same "
           f"parameters as trial {retry.number}; its orphaned run and parent run closed KILLED, "
           "tagged retried_as / retry_of", "trial 0; 3 complete trials in all, none counted "
           "twice, nothing RUNNING")
