"""The study lock, trial slots and worker numbers that coordinate workers of one study,
driven with ask/tell on a sqlite storage (no training)."""

from __future__ import annotations

import multiprocessing
import time

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.search.coordination import (
    StudyLock,
    claim_worker_number,
    count_trials,
    slots_left,
)


@pytest.fixture
def storage(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


@pytest.fixture
def study(storage) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(study_name="s", storage=storage, direction="maximize")


def test_sqlite_lock_excludes_a_second_holder_until_released(storage):
    first, second = StudyLock(storage, "s"), StudyLock(storage, "s")
    first.acquire()
    assert first.held
    assert not second._try_acquire()
    first.release()
    assert second._try_acquire()
    second.close()
    first.close()


def test_locks_of_different_studies_do_not_exclude_each_other(storage):
    first, other = StudyLock(storage, "s"), StudyLock(storage, "another")
    first.acquire()
    assert other._try_acquire()
    other.close()
    first.close()


def test_release_is_idempotent_and_hold_releases(storage):
    lock = StudyLock(storage, "s")
    lock.release()  # not held: nothing happens
    with lock.hold():
        assert lock.held
    assert not lock.held
    lock.release()
    assert StudyLock(storage, "s")._try_acquire()
    lock.close()


def _hold_for(storage: str, seconds: float, started) -> None:
    lock = StudyLock(storage, "s")
    lock.acquire()
    started.set()
    time.sleep(seconds)
    lock.close()


def test_lock_waits_for_another_process_and_is_freed_when_it_dies(storage):
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    holder = context.Process(target=_hold_for, args=(storage, 60.0, started))
    holder.start()
    assert started.wait(60)
    lock = StudyLock(storage, "s")
    assert not lock._try_acquire()
    holder.kill()  # a worker killed while holding the lock: the kernel frees it
    holder.join()
    begin = time.monotonic()
    lock.acquire()
    assert time.monotonic() - begin < 5
    lock.close()


def test_unknown_storage_kind_gets_no_lock():
    lock = StudyLock("redis://localhost/0", "s")
    assert not lock.supported
    lock.acquire()  # returns at once
    lock.release()


def test_slots_count_finished_and_running_trials_but_not_waiting_ones(study):
    assert slots_left(study, 4) == 4
    done = study.ask()
    study.tell(done, 0.5)
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    study.ask()  # running
    study.enqueue_trial({})  # waiting: runs in a slot, takes none
    assert count_trials(study, TrialState.WAITING) == 1
    assert slots_left(study, 4) == 1
    assert slots_left(study, 2) == -1


def test_worker_numbers_are_distinct_and_recorded_in_the_study(study, storage):
    lock = StudyLock(storage, "s")
    assert [claim_worker_number(study, lock) for _ in range(3)] == [0, 1, 2]
    assert optuna.load_study(study_name="s", storage=storage).user_attrs["hpsearch.workers"] == 3
    lock.close()


def test_default_jobs_is_one_on_a_cpu_two_on_a_gpu_and_four_with_mps(monkeypatch, tmp_path):
    import os

    import torch

    from hpsearch.search import gpu_sharing
    from hpsearch.search.runner import default_jobs

    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    monkeypatch.setattr(gpu_sharing, "usable_cores", lambda: 16)
    assert default_jobs(torch.device("cpu")) == 1
    assert default_jobs(torch.device("cuda")) == 2  # no MPS: the contexts time-slice
    os.mkfifo(tmp_path / "control")  # an MPS control daemon's pipe
    assert default_jobs(torch.device("cuda")) == 4
    monkeypatch.setattr(gpu_sharing, "usable_cores", lambda: 4)
    assert default_jobs(torch.device("cuda")) == 2  # at most half the cores
    monkeypatch.setattr(gpu_sharing, "usable_cores", lambda: 1)
    assert default_jobs(torch.device("cuda")) == 1
