"""Trials per hour of one study run by 1 and by 3 ``hpsearch run`` workers sharing PostgreSQL
and an ``mlflow server``, and MLflow's per-metric logging latency there and to sqlite.

It starts a throwaway PostgreSQL cluster (durable settings) and ``mlflow server`` on
loopback (the code of ``tests/scaleout/conftest.py``), then for each ``--workers K`` starts
K worker processes at once, each in its own empty directory (no shared disk)::

    hpsearch run --dataset fashion_mnist --trials T --study-name scaleout-K \\
        --storage postgresql://.../optuna_K --tracking-uri http://127.0.0.1:PORT ...

with ``OMP_NUM_THREADS`` = cores // K, so workers on one machine share its cores instead of
thrashing (on separate machines each would have its own). Wall time runs from the first
start to the last exit; trials/hour = finished (complete + pruned) trials / wall hours.
Then it times MLflow logging calls against that server and a sqlite file
(``logging_latency.py``). Example::

    python benchmarks/scaleout.py --workers 1 --workers 3 --trials 12 --epochs 2 \\
        --train-subset 4000 --write-docs

Prints one JSON line per K and per logging call kind.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from _common import (
    add_common_options,
    emit,
    log,
    machine_info,
    markdown_table,
    render_section,
    resolve_device,
    write_section,
)
from end_to_end import hpsearch_executable, study_results
from logging_latency import measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from scaleout.conftest import running_mlflow_server, running_postgres


def run_workers(args: argparse.Namespace, executable: str, workers: int, storage: str,
                tracking_uri: str, device: torch.device) -> dict[str, Any]:
    """K workers on study ``scaleout-K``; their wall time, exit codes and the study."""
    study = f"scaleout-{workers}"
    source = ["--spec", str(Path(args.spec).resolve())] if args.spec else ["--dataset",
                                                                          args.dataset]
    command = [executable, "run", *source, "--trials", str(args.trials),
               "--study-name", study, "--storage", storage, "--tracking-uri", tracking_uri,
               "--device", device.type, "--quiet"]
    if args.epochs is not None:
        command += ["--epochs", str(args.epochs)]
    if args.train_subset is not None:
        command += ["--train-subset", str(args.train_subset)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    log(f"{workers} worker(s), {threads} thread(s) each: {' '.join(command)}")
    with ExitStack() as stack:
        directories = [stack.enter_context(tempfile.TemporaryDirectory(prefix="worker-"))
                       for _ in range(workers)]
        logs = [stack.enter_context(open(Path(d, "stderr.log"), "w+")) for d in directories]
        start = time.perf_counter()
        processes = [subprocess.Popen(command, cwd=d, env=env, stdout=subprocess.DEVNULL,
                                      stderr=err) for d, err in zip(directories, logs)]
        codes = [p.wait() for p in processes]
        wall = time.perf_counter() - start
        for code, err in zip(codes, logs):
            if code != 0:
                err.seek(0)
                log(f"worker exited {code}; stderr ends:\n{err.read()[-3000:]}")
    record: dict[str, Any] = {"benchmark": "scaleout", "workers": workers,
                              "threads_per_worker": threads, "device": device.type,
                              "trials": args.trials, "exit_codes": codes,
                              "wall_s": round(wall, 1)}
    record |= study_results(study, storage, tracking_uri)
    finished = record["complete"] + record["pruned"]
    record |= {"finished": finished, "trials_per_hour": round(finished / (wall / 3600), 1)}
    return record


def docs_section(args: argparse.Namespace, records: list[dict], latencies: list[dict],
                 device: torch.device) -> str:
    base = next((r for r in records if r["workers"] == 1), records[0])
    rows = [r | {"wall_min": r["wall_s"] / 60,
                 "states": f"{r['complete']} / {r['pruned']} / {r['failed']}",
                 "speedup": r["trials_per_hour"] / base["trials_per_hour"]} for r in records]
    table = markdown_table(rows, {
        "workers": "workers", "threads_per_worker": "threads each", "wall_min": "wall (min)",
        "states": "complete / pruned / failed", "trials_per_hour": "trials/hour",
        "speedup": "vs 1 worker", "best_val": "best val accuracy",
        "test_accuracy": "champion test accuracy", "champion_version": "registered version"})
    latency_table = markdown_table(latencies, {
        "store": "tracking store", "call": "call", "p50_ms": "p50 (ms)", "p99_ms": "p99 (ms)",
        "mean_ms": "mean (ms)", "mean_ms_per_metric": "per metric (ms)"})
    source = f"--spec {Path(args.spec).name}" if args.spec else f"--dataset {args.dataset}"
    notes = (
        f"`hpsearch run {source} --trials {args.trials}`"
        f"{f' --epochs {args.epochs}' if args.epochs else ''}"
        f"{f' --train-subset {args.train_subset}' if args.train_subset else ''}, started K "
        "times at once on one study in PostgreSQL with one `mlflow server` (PostgreSQL "
        "backend, artifacts proxied to its disk), all on loopback on this one machine; each "
        "worker in its own empty directory. All workers here share this machine's cores, so "
        "this measures the coordination (exact budget, one registration), not the speedup of "
        "separate machines.\n\nMLflow logging latency (`logging_latency.py`): "
        f"{latencies[0]['calls'] if latencies else 0} timed calls each; `log_batch` sends one "
        "epoch's metrics.\n\n" + latency_table
    )
    return render_section("scaleout", title="Scale-out: workers on PostgreSQL and an MLflow "
                          "tracking server", machine=machine_info(device), body=table,
                          notes=notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--workers", type=int, action="append",
                        help="worker processes (repeatable; default 1 3)")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--spec", default=None,
                        help="a study spec file instead of --dataset's built-in one")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-subset", type=int, default=None, metavar="N")
    parser.add_argument("--calls", type=int, default=300, help="timed logging calls per kind")
    add_common_options(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    executable = hpsearch_executable()
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    records, latencies = [], []
    with (running_postgres(durable=True) as postgres,
          tempfile.TemporaryDirectory(prefix="mlflow-server-") as base,
          running_mlflow_server(postgres.mlflow_url, Path(base)) as server,
          tempfile.TemporaryDirectory(prefix="mlflow-sqlite-") as sqlite_dir):
        for workers in args.workers or [1, 3]:
            storage = postgres.create_database(f"optuna_{workers}")
            records.append(run_workers(args, executable, workers, storage, server.url, device))
            emit(records[-1])
        for store, uri in (("sqlite", f"sqlite:///{Path(sqlite_dir, 'mlflow.db')}"),
                           ("mlflow server + PostgreSQL", server.url)):
            for result in measure(store, uri, calls=args.calls, warmup=10):
                latencies.append(result | {"calls": args.calls})
                emit(result)
    if args.write_docs:
        write_section(args.docs, "scaleout", docs_section(args, records, latencies, device))
    if any(code != 0 for r in records for code in r["exit_codes"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
