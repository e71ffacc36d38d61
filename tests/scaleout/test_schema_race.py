"""Workers started at the same instant on a fresh PostgreSQL database: Optuna creates its
tables on first use, and without the schema lock two creators collide (a unique violation
in PostgreSQL's type catalogue, seen with three `hpsearch run` workers started at once)."""

from __future__ import annotations

import multiprocessing

import pytest

from hpsearch.search.config import RunConfig
from hpsearch.search.coordination import schema_lock
from hpsearch.search.storage import open_study
from hpsearch.studies import load_builtin_spec

pytestmark = pytest.mark.slow
WORKERS = 4


def _open_at_once(storage: str, barrier, use_lock: bool) -> str:
    config = RunConfig(spec=load_builtin_spec("fashion_mnist"), trials=1, study_name="race",
                       register_name="unused", storage=storage)
    barrier.wait(timeout=60)
    try:
        if use_lock:
            with schema_lock(storage):
                open_study(config, tracking_uri="unused")
        else:
            open_study(config, tracking_uri="unused")
    except Exception as exc:  # reported to the test, which names it
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def _race(storage: str, use_lock: bool) -> list[str]:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(WORKERS)
        with context.Pool(WORKERS) as pool:
            return pool.starmap(_open_at_once, [(storage, barrier, use_lock)] * WORKERS)


def test_workers_started_together_create_the_schema_once(postgres):
    outcomes = _race(postgres.create_database("schema_race"), use_lock=True)
    assert outcomes == ["ok"] * WORKERS
