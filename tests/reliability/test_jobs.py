"""``hpsearch run --jobs 2``: two worker processes on one study with one progress display;
one worker is killed (SIGKILL) mid-trial and its trial retried by the other; the budget is
exact and the champion registered once; ``hpsearch register`` registers it again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import clean_env, cli, hpsearch, kill_tree, tiny_mlp_spec
from observations import record

pytestmark = pytest.mark.slow

TRIALS = 5
SPEC = tiny_mlp_spec(epochs=3)
ARGS = ("run", "--spec", "spec.yaml", "--study-name", "jobs", "--trials", str(TRIALS),
        "--train-subset", "8000", "--device", "cpu", "--jobs", "2", "--heartbeat-interval", "1")


def run_and_kill_worker_2(cwd: Path) -> tuple[int, str, int]:
    """Start the run; once worker 2 has trained one epoch of a trial, SIGKILL it.

    Returns:
        (exit code, all stderr, number of the trial worker 2 was running).
    """
    (cwd / "spec.yaml").write_text(SPEC)
    exe = Path(sys.executable).with_name("hpsearch")
    proc = subprocess.Popen([str(exe), *ARGS], cwd=cwd, env=clean_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(600, kill_tree, args=(proc.pid,))
    watchdog.start()
    pids, seen, killed_trial = {}, [], None
    try:
        for line in proc.stderr:
            seen.append(line)
            started = re.match(r"\[w(\d)\] worker started, pid (\d+)", line)
            if started:
                pids[started[1]] = int(started[2])
            epoch = re.match(r"\[w2\]   trial +(\d+)  epoch   1/", line)
            if epoch and killed_trial is None:
                os.kill(pids["2"], signal.SIGKILL)
                killed_trial = int(epoch[1])
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
    return proc.returncode, "".join(seen), killed_trial


def test_jobs_share_the_study_retry_a_killed_worker_and_register_once(tmp_path):
    code, err, killed = run_and_kill_worker_2(tmp_path)
    assert code == 0, err[-3000:]
    assert killed is not None, err[-3000:]
    # One display: every progress line of a trial comes tagged with its worker.
    assert re.search(r"^\[w1\] trial +\d+  COMPLETE", err, re.M)
    assert "[w2] worker ended with signal SIGKILL" in err

    study = optuna.load_study(study_name="jobs", storage=f"sqlite:///{tmp_path / 'hpsearch.db'}")
    states = {t.number: t.state.name for t in study.trials}
    assert list(states) == list(range(len(states)))  # no duplicate numbers
    assert list(states.values()).count("COMPLETE") == TRIALS  # exact, not TRIALS + 1
    assert states[killed] == "FAIL"
    (retry,) = [t for t in study.trials if t.system_attrs.get("retry_history") == [killed]]
    assert retry.state.name == "COMPLETE"
    assert retry.params == study.trials[killed].params
    # Workers draw from differently seeded samplers: no two random draws alike.
    fresh = [t.params["lr"] for t in study.trials if "retry_history" not in t.system_attrs]
    assert len(set(fresh)) == len(fresh)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("jobs")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags["hpsearch.role"] == "study"]
    assert parent.info.status == "FINISHED"
    trial_runs = [r for r in runs if r.data.tags["hpsearch.role"] == "trial"]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in trial_runs) == list(states)
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {parent.info.run_id}
    assert len({r.data.tags["hpsearch.pid"] for r in trial_runs}) == 2  # two processes
    killed_run = next(r for r in trial_runs if r.data.tags["optuna.trial_number"] == str(killed))
    assert killed_run.info.status == "KILLED"
    assert killed_run.data.tags["hpsearch.retried_as"] == str(retry.number)

    versions = client.search_model_versions("name = 'hpsearch-jobs'")
    assert len(versions) == 1
    champion = client.get_model_version_by_alias("hpsearch-jobs", "champion")
    assert champion.tags["trial"] == str(study.best_trial.number)

    # `hpsearch register` registers the best trial again, as a new version under the alias.
    again = hpsearch(tmp_path, "register", "jobs", "--device", "cpu")
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(r"registered hpsearch-jobs version 2 \(alias champion\): trial "
                     rf"{study.best_trial.number}, test accuracy 0\.\d{{4}}", again.stdout)
    champion = client.get_model_version_by_alias("hpsearch-jobs", "champion")
    assert str(champion.version) == "2" and champion.tags["trial"] == str(study.best_trial.number)
    (register_run,) = client.search_runs([experiment.experiment_id],
                                         filter_string="tags.`hpsearch.role` = 'register'")
    assert register_run.info.status == "FINISHED"
    assert 0.5 < register_run.data.metrics["test_accuracy"] <= 1.0
    record("`--jobs 2`, worker 2 SIGKILLed one epoch into a trial",
           f"exit 0; trial {killed} FAIL, retried as trial {retry.number} by worker 1 with "
           "the same parameters", f"exactly {TRIALS} complete trials, one parent run, one "
           "registered version; `hpsearch register` added version 2")


def test_register_names_a_missing_study(tmp_path):
    result = cli(tmp_path, "register", "nope", "--device", "cpu")
    assert result.returncode == 2
    assert "no study 'nope' in sqlite:///hpsearch.db" in result.stderr
    assert "Traceback" not in result.stderr


def test_ctrl_c_with_jobs_interrupts_every_worker_once_and_resumes(tmp_path):
    """SIGINT to the `hpsearch run --jobs 2` process (as Ctrl-C in its terminal): each
    worker's running trial ends as interrupted, the command exits 130, nothing stays
    RUNNING; the same command again finishes exactly the target.

    One worker is made to hang while it records its interrupted trial (trial 0, held at
    its first epoch's end, then stuck): the coordinator prints its stack, kills it after the
    shutdown time (shortened to 10 s here) and records that trial as interrupted itself."""
    (tmp_path / "spec.yaml").write_text(SPEC)
    exe = Path(sys.executable).with_name("hpsearch")
    args = [a if a != "jobs" else "jobs-int" for a in ARGS]
    env = clean_env(HPSEARCH_TEST_PAUSE="epoch.end.trial0=600,trial.interrupted.trial0=600",
                    HPSEARCH_TEST_LIMITS="workers.shutdown_s=10")
    proc = subprocess.Popen([str(exe), *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(600, kill_tree, args=(proc.pid,))
    watchdog.start()
    held, other, seen = False, False, []
    try:
        for line in proc.stderr:
            seen.append(line)
            held |= line.strip() == "hpsearch-test: paused at epoch.end.trial0"
            other |= bool(re.match(r"\[w\d\]   trial +[1-9]\d*  epoch   1/", line))
            if held and other:  # trial 0 held in one worker, the other one training
                proc.send_signal(signal.SIGINT)
                break
        proc_out, err = proc.communicate(timeout=180)
    finally:
        watchdog.cancel()
    err = "".join(seen) + err
    assert proc.returncode == 130, err[-3000:]
    assert "finished trials are kept: run the same command to resume" in proc_out
    assert "Traceback" not in err
    # The stuck worker: its stack (where it hung), killed, its trial recorded for it.
    (stuck,) = re.findall(r"\[w(\d)\] did not end within 10 s of the signal; killed", err)
    assert "hpsearch-test: paused at trial.interrupted.trial0" in err
    assert re.search(r'File ".*_testhooks\.py", line \d+ in pause', err), err[-3000:]
    assert "trial(s) 0 of the killed worker(s) recorded as interrupted by SIGINT" in err

    storage = f"sqlite:///{tmp_path / 'hpsearch.db'}"
    study = optuna.load_study(study_name="jobs-int", storage=storage)
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    interrupted = [t for t in study.trials if t.state.name == "FAIL"]
    # Trial 0 recorded by the coordinator, the other worker's trial by that worker.
    assert len(interrupted) == 2 and interrupted[0].number == 0, err[-3000:]
    assert all(t.user_attrs["fail_reason"] == "interrupted by SIGINT" for t in interrupted)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("jobs-int").experiment_id])
    assert {r.info.status for r in runs if r.data.tags["hpsearch.role"] == "study"} == {"KILLED"}
    assert "RUNNING" not in {r.info.status for r in runs}
    (run_0,) = [r for r in runs if r.data.tags.get("optuna.trial_number") == "0"]
    assert run_0.info.status == "KILLED"
    assert run_0.data.tags["hpsearch.reason"].startswith("interrupted by SIGINT")

    again = hpsearch(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    study = optuna.load_study(study_name="jobs-int", storage=storage)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == TRIALS
    record("`--jobs 2`, SIGINT to `hpsearch run` while both workers train, one of them "
           "hanging while it records its trial",
           "exit 130; both running trials FAIL \"interrupted by SIGINT\" (the hung worker's "
           f"[w{stuck}]: its stack printed, killed after the shutdown time, its trial recorded "
           "by the coordinator), their runs and the parent run KILLED, nothing RUNNING",
           f"the same command again: exit 0, exactly {TRIALS} complete trials")


def test_only_the_killed_workers_trials_on_this_machine_are_failed_for_them(tmp_path):
    """Unit level (fail_abandoned_trials): a killed worker's RUNNING trial is failed as
    interrupted and its run closed KILLED; a trial of another live process, or of a process
    with the same pid on another machine sharing the stores, is left running."""
    import platform

    from hpsearch.search.storage import fail_abandoned_trials

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("abandoned")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                study_name="abandoned")
    here, killed = platform.node(), 4242
    owners = {"killed worker": (here, killed), "live worker": (here, killed + 1),
              "same pid elsewhere": ("another-machine", killed)}
    runs = {}
    for number, (name, (host, pid)) in enumerate(owners.items()):
        trial = study.ask()
        runs[name] = client.create_run(experiment, tags={
            "hpsearch.role": "trial", "optuna.trial_number": str(number), "host": host,
            "hpsearch.pid": str(pid)}).info.run_id
        trial.set_user_attr("mlflow_run_id", runs[name])

    assert fail_abandoned_trials(study, client, experiment, {killed},
                                 "interrupted by SIGINT") == [0]
    states = [t.state.name for t in study.get_trials()]
    assert states == ["FAIL", "RUNNING", "RUNNING"]
    assert study.trials[0].user_attrs["fail_reason"] == "interrupted by SIGINT"
    assert study.trials[0].user_attrs["failure_kind"] == "interrupted"
    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {"killed worker": "KILLED", "live worker": "RUNNING",
                      "same pid elsewhere": "RUNNING"}
