"""A full disk during a study: the study stops with one line naming the full directory and its
free space, exit code 74, finished trials kept, no traceback; the next run closes every MLflow
run the stopped (or killed) process left RUNNING, with its Optuna state and the reason.

Injected in-process (an ``OSError(ENOSPC)`` from the tracking writes, always runs) and real
(a small tmpfs as the working directory, where this machine lets the test mount one)."""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
from image_files import class_tree
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hpsearch.errors import EX_IOERR, DiskFull, format_bytes, is_disk_full
from hpsearch.search.config import RunConfig
from hpsearch.search.diskspace import disk_full_error
from hpsearch.search.progress import Reporter
from hpsearch.search.study import run_study
from hpsearch.studies import load_spec
from hpsearch.tracking.runs import StudyTracker, TrialRun

from conftest import cli, hpsearch, needs_fashion_mnist, tiny_mlp_spec
from observations import record


def _full_sqlite_error() -> MlflowException:
    """What MLflow's sqlite store raises on a full disk: sqlite3's OperationalError inside
    SQLAlchemy's, inside an MlflowException holding only the text (SQL and parameters too)."""
    try:
        try:
            try:
                raise sqlite3.OperationalError("database or disk is full")
            except sqlite3.OperationalError as exc:
                raise sqlalchemy.exc.OperationalError(
                    "INSERT INTO metrics VALUES (?)", [("val_loss", 0.5)], exc) from exc
        except sqlalchemy.exc.OperationalError as exc:
            raise MlflowException(message=exc) from exc
    except MlflowException as exc:
        return exc


def _wrapped(outer: type[Exception], inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer("An exception is raised during the commit.") from exc
    except outer as exc:
        return exc


def test_a_full_disk_is_recognised_however_the_libraries_wrap_it():
    full = [OSError(errno.ENOSPC, "No space left on device"),
            OSError(errno.EDQUOT, "Disk quota exceeded"),
            _full_sqlite_error(),
            _wrapped(optuna.exceptions.StorageInternalError, _full_sqlite_error().__cause__),
            _wrapped(AssertionError, _full_sqlite_error()),  # Optuna's "Should not reach."
            MlflowException("[Errno 28] No space left on device: '/x/mlruns/1'"),
            DiskFull()]
    assert all(is_disk_full(exc) for exc in full)
    others = [OSError(errno.EACCES, "Permission denied"), ValueError("injected bug"),
              _wrapped(optuna.exceptions.StorageInternalError, ValueError("database locked")),
              None]
    assert not any(is_disk_full(exc) for exc in others)


def test_the_full_directory_is_named_with_its_free_space(tmp_path):
    stores = tmp_path / "stores"
    stores.mkdir()
    urls = {"storage": f"sqlite:///{stores / 'optuna.db'}",
            "tracking_uri": f"sqlite:///{stores / 'mlflow.db'}"}
    assert disk_full_error(ValueError("injected bug"), **urls) is None
    # No file named (sqlite's error): the stores' directory, with the space left there.
    error = disk_full_error(_full_sqlite_error(), **urls)
    assert error.directory == str(stores) and error.exit_code == EX_IOERR
    assert str(error) == (f"no space left on device: {stores} has "
                          f"{format_bytes(error.free_bytes)} free")
    assert abs(error.free_bytes - shutil.disk_usage(stores).free) < 64 * 2**20
    # A file named (an artifact copy, a temporary file): its directory.
    artifacts = tmp_path / "mlruns" / "1"
    artifacts.mkdir(parents=True)
    named = OSError(errno.ENOSPC, "No space left on device", str(artifacts / "a.png"))
    assert disk_full_error(named, **urls).directory == str(artifacts)
    assert [format_bytes(n) for n in (0, 1023, 4096, 3 * 2**20)] == [
        "0 B", "1023 B", "4.0 KB", "3.0 MB"]


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_runs_left_running_by_ended_processes_are_closed_with_the_reason(tmp_path):
    """Unit level: the rule for each kind of RUNNING run, on a real MLflow store."""
    from hpsearch.search.storage import close_runs_of_ended_processes

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("closing")

    def run(role, **tags):
        return client.create_run(experiment, tags={"hpsearch.role": role, **tags}).info.run_id

    host = os.uname().nodename
    runs = {"failed trial": run("trial", **{"optuna.trial_number": "0"}),
            "interrupted trial": run("trial", **{"optuna.trial_number": "1"}),
            "running trial": run("trial", **{"optuna.trial_number": "2"}),
            # Trial 0 of another study of the same name (another storage): not this one's.
            "same number, not the trial's run": run("trial", **{"optuna.trial_number": "0"}),
            "dead parent": run("study", host=host, **{"hpsearch.pid": str(_dead_pid())}),
            "live parent": run("study", host=host, **{"hpsearch.pid": str(os.getppid())}),
            "other host's parent": run("study", host="elsewhere",
                                       **{"hpsearch.pid": str(_dead_pid())})}
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                study_name="closing")
    for name, state, attrs in (
            ("failed trial", optuna.trial.TrialState.FAIL,
             {"fail_reason": "DiskFull: no space left on device"}),
            ("interrupted trial", optuna.trial.TrialState.FAIL,
             {"failure_kind": "interrupted", "fail_reason": "interrupted by SIGINT"}),
            ("running trial", optuna.trial.TrialState.RUNNING, {})):
        trial = study.ask()
        for key, value in {**attrs, "mlflow_run_id": runs[name]}.items():
            trial.set_user_attr(key, value)
        if state != optuna.trial.TrialState.RUNNING:
            study.tell(trial, state=state)
    assert close_runs_of_ended_processes(study, client, experiment) == 3
    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {"failed trial": "FAILED", "interrupted trial": "KILLED",
                      "running trial": "RUNNING", "same number, not the trial's run": "RUNNING",
                      "dead parent": "KILLED", "live parent": "RUNNING",
                      "other host's parent": "RUNNING"}
    failed = client.get_run(runs["failed trial"]).data.tags
    assert failed["optuna.state"] == "FAIL"
    assert failed["hpsearch.reason"].startswith("DiskFull: no space left on device; its "
                                                "process ended without closing this run")
    assert "ended without closing this run" in client.get_run(
        runs["dead parent"]).data.tags["hpsearch.reason"]
    assert close_runs_of_ended_processes(study, client, experiment) == 0  # idempotent


def _config(tmp_path: Path, trials: int) -> RunConfig:
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(tiny_mlp_spec(1))
    return RunConfig(spec=load_spec(spec_path), trials=trials, study_name="full",
                     register_name="hpsearch-full", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                     tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", train_subset=1000,
                     device="cpu", heartbeat_interval_s=1)


@pytest.fixture
def disk_fills_in_trial_1(monkeypatch):
    """From trial 1's first epoch on, every tracking write of trial 1 and the end of the
    parent run raise ENOSPC, as on a disk that filled up: trial 1's run and the parent run
    cannot be closed."""
    first_run: list[str] = []
    log_epoch, finish = TrialRun.log_epoch, TrialRun.finish

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def first_or_full(method):
        def call(self, *args, **kwargs):
            first_run[:] = first_run or [self.run_id]
            return (method if self.run_id == first_run[0] else full)(self, *args, **kwargs)
        return call

    monkeypatch.setattr(TrialRun, "log_epoch", first_or_full(log_epoch))
    monkeypatch.setattr(TrialRun, "finish", first_or_full(finish))
    monkeypatch.setattr(StudyTracker, "end_parent", full)


def _stores(tmp_path: Path, storage_file: str = "optuna.db"):
    study = optuna.load_study(study_name="full", storage=f"sqlite:///{tmp_path / storage_file}")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("full").experiment_id])
    trial_runs = {int(r.data.tags["optuna.trial_number"]): r for r in runs
                  if r.data.tags.get("hpsearch.role") == "trial"}
    parents = [r for r in runs if r.data.tags.get("hpsearch.role") == "study"]
    return study, client, trial_runs, parents


@pytest.mark.slow
@needs_fashion_mnist
def test_injected_full_disk_stops_the_study_in_one_line_and_the_next_run_closes_its_runs(
        tmp_path, disk_fills_in_trial_1, monkeypatch):
    progress = io.StringIO()
    with pytest.raises(DiskFull) as stopped:
        run_study(_config(tmp_path, trials=3), Reporter("val_accuracy", stream=progress))
    assert stopped.value.exit_code == 74
    assert stopped.value.directory == str(tmp_path)  # the stores' directory, no file named
    assert re.fullmatch(rf"no space left on device: {re.escape(str(tmp_path))} has "
                        r"\d+(\.\d)? [KMG]?B free", str(stopped.value))
    study, client, trial_runs, (parent,) = _stores(tmp_path)
    # Trial 0 is kept; trial 1 failed with the reason; no trial 2: the study stopped.
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    assert "No space left on device" in study.trials[1].user_attrs["fail_reason"]
    assert trial_runs[0].info.status == "FINISHED"
    # What a full store leaves: trial 1's run and the parent run could not be closed.
    assert trial_runs[1].info.status == "RUNNING" and parent.info.status == "RUNNING"
    assert "Traceback" not in progress.getvalue()
    # In the command line the process exits now; in this test it goes on, so its parent
    # run is pointed at a process that has ended, as the command's would be.
    client.set_tag(parent.info.run_id, "hpsearch.pid", str(_dead_pid()))

    monkeypatch.undo()  # space freed: the same study again
    progress = io.StringIO()
    summary = run_study(_config(tmp_path, trials=3), Reporter("val_accuracy", stream=progress))
    assert summary.exit_code == 0 and summary.n_complete == 3
    assert ("closed 2 MLflow run(s) left RUNNING by processes that ended"
            in progress.getvalue())
    study, client, trial_runs, parents = _stores(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    closed = trial_runs[1]
    assert closed.info.status == "FAILED" and closed.data.tags["optuna.state"] == "FAIL"
    assert closed.data.tags["hpsearch.reason"].startswith(
        study.trials[1].user_attrs["fail_reason"])
    by_status = {p.info.status: p for p in parents}
    assert sorted(by_status) == ["FINISHED", "KILLED"]
    assert "ended without closing this run" in by_status["KILLED"].data.tags["hpsearch.reason"]
    assert {r.info.status for r in trial_runs.values()} == {"FINISHED", "FAILED"}
    record("disk full (ENOSPC injected into trial 1's tracking writes and the parent run's "
           "end)",
           "DiskFull, one line 'no space left on device: DIR has N free' (exit code 74 on "
           "the command line), no traceback; trial 1 FAIL with the reason; no further trial "
           "started", "trial 0; the next run closed trial 1's run (FAILED, Optuna's reason) "
           "and the dead process's parent run (KILLED, with the reason), then ran the "
           "missing trials: 3 complete, nothing RUNNING")


# --- the real thing: a small tmpfs as the working directory ---------------------------------

TMPFS_MB = 40
LEFT_FREE_KB = 300  # after the first run: less than a trial's runs and artifacts need


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB tmpfs mounted in ``tmp_path``, unmounted afterwards; skipped where the test
    may not mount one (not root, or no CAP_SYS_ADMIN in a container)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(directory: Path, leave_bytes: int) -> Path:
    """A file taking all free space of ``directory``'s file system but ``leave_bytes``."""
    filler = directory / "filler"
    size = max(0, shutil.disk_usage(directory).free - leave_bytes)
    with open(filler, "wb") as f:
        for _ in range(size // 2**20):
            f.write(bytes(2**20))
        f.write(bytes(size % 2**20))
    return filler


ARGS = ("run", "--spec", "spec.yaml", "--study-name", "full", "--train-subset", "1000",
        "--device", "cpu", "--heartbeat-interval", "1")


@pytest.mark.slow
@needs_fashion_mnist
def test_real_full_disk_stops_with_exit_74_and_the_same_command_resumes(small_disk):
    (small_disk / "spec.yaml").write_text(tiny_mlp_spec(1))
    first = hpsearch(small_disk, *ARGS, "--trials", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    filler = _fill(small_disk, LEFT_FREE_KB * 1024)

    full = hpsearch(small_disk, *ARGS, "--trials", "8")
    output = full.stdout + full.stderr
    assert full.returncode == 74, output[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    assert re.match(rf"hpsearch: error: no space left on device: {re.escape(str(small_disk))} "
                    r"has \d+(\.\d)? [KMG]?B free; the study stopped, its finished trials are "
                    r"kept: ", last), last
    assert "Traceback" not in output and "[SQL:" not in output
    assert "database or disk is full" not in full.stderr.replace(last, "")  # said once, above
    lines = len(output.splitlines())
    print(output)  # for the record: what a user sees
    study, _, _, _ = _stores(small_disk, "hpsearch.db")
    kept = sum(t.state.name == "COMPLETE" for t in study.trials)
    assert kept >= 2

    filler.unlink()
    again = hpsearch(small_disk, *ARGS, "--trials", "8")
    assert again.returncode == 0, again.stderr[-3000:]
    study, _, trial_runs, parents = _stores(small_disk, "hpsearch.db")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 8
    assert "RUNNING" not in {t.state.name for t in study.trials}
    assert "RUNNING" not in {r.info.status for r in [*trial_runs.values(), *parents]}
    # Every trial's run says what Optuna says.
    expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": ("FAILED", "KILLED")}
    for number, run in trial_runs.items():
        assert run.info.status in expected[study.trials[number].state.name], number
    record(f"disk full: a {TMPFS_MB} MB tmpfs as the working directory, {LEFT_FREE_KB} KB "
           "left free after the first 2 trials",
           f"exit code 74 after {lines} lines: one line 'hpsearch: error: no space left on "
           "device: DIR has N free; ...', no traceback, no SQL",
           f"the {kept} finished trials; after freeing space the same command closed the runs "
           "left RUNNING (their Optuna state, the reason) and reached its 8 trials, nothing "
           "RUNNING")


def test_a_full_disk_while_decoding_own_images_names_the_cache_folder(small_disk, tmp_path):
    """`hpsearch data cache` with its cache folder on a full disk: exit 74, one line naming
    the cache folder (the workers' ENOSPC names no file), nothing of the build left."""
    class_tree(tmp_path / "photos", {"a": 150, "b": 150}, size=(64, 64))  # 3.7 MB of pixels
    cache = small_disk / "cache"
    cache.mkdir()
    _fill(small_disk, LEFT_FREE_KB * 1024)
    full = cli(tmp_path, "data", "cache", "photos", "--cache-dir", str(cache))
    output = full.stdout + full.stderr
    assert full.returncode == 74, output[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    assert re.match(rf"hpsearch: error: no space left on device: {re.escape(str(cache))} has "
                    r"\d+(\.\d)? [KMG]?B free; nothing of the cache was kept: ", last), last
    assert "Traceback" not in output
    assert {p.name for p in cache.iterdir()} <= {"locks", "probes"}
    record("disk full while `hpsearch data cache` decodes own images (the cache folder on a "
           f"{TMPFS_MB} MB tmpfs with {LEFT_FREE_KB} KB left free)",
           "exit code 74, one line 'hpsearch: error: no space left on device: CACHE has N "
           "free; nothing of the cache was kept: ...', no traceback",
           "no partial cache: the build's temporary folder removed")


def test_a_full_directory_already_known_keeps_its_name(tmp_path):
    """An image cache's DiskFull names its folder; the run's disk-full check keeps it rather
    than naming the stores' directory."""
    known = DiskFull(str(tmp_path / "cache"), 1234)
    try:
        try:
            raise known
        except DiskFull as exc:
            raise RuntimeError("while loading the data") from exc
    except RuntimeError as wrapped:
        assert disk_full_error(wrapped, storage="sqlite:///x.db",
                               tracking_uri="sqlite:///y.db") is known
