"""Per-call latency of MLflow metric logging: to a sqlite tracking store and to a tracking server.

For example::

    python benchmarks/logging_latency.py --server http://127.0.0.1:5000
    python benchmarks/logging_latency.py --start-servers

The sqlite store is a fresh ``mlflow.db`` in a temporary directory; ``--server URL`` adds a
running tracking server (e.g. ``mlflow server`` on a PostgreSQL backend store), and
``--start-servers`` adds a throwaway one: PostgreSQL with its default (durable) settings plus
``mlflow server``, started by ``tests/scaleout/conftest.py``'s helpers and stopped at the end.

On each store it creates one run, then times ``--calls`` ``MlflowClient.log_metric`` calls
(one metric, step i) and ``--calls`` ``MlflowClient.log_batch`` calls of one epoch's metrics
(``EPOCH_METRICS``, what an ``hpsearch`` trial logs after each epoch), after ``--warmup``
calls of each, and prints one JSON line per store and call: latency p50 / p99 / mean per call
(ms, client side, synchronous logging) and mean ms per metric.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

# The names hpsearch's EpochResult.metrics() logs once per epoch, in one log_batch call.
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                 "epoch_seconds", "images_per_second")


def time_calls(call: Callable[[int], None], calls: int, warmup: int) -> list[float]:
    """Seconds per ``call(step)``, for steps 0..calls-1, after ``warmup`` untimed calls."""
    for step in range(warmup):
        call(calls + step)  # steps after the timed ones, so the timed steps stay 0..calls-1
    latencies = []
    for step in range(calls):
        start = time.perf_counter()
        call(step)
        latencies.append(time.perf_counter() - start)
    return latencies


def summary(latencies: list[float], metrics_per_call: int) -> dict:
    ms = 1000 * np.asarray(latencies)
    return {
        "metrics_per_call": metrics_per_call,
        "calls": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "mean_ms_per_metric": round(float(ms.mean()) / metrics_per_call, 3),
    }


def measure(store: str, tracking_uri: str, *, calls: int, warmup: int) -> Iterator[dict]:
    """Time log_metric and log_batch on a new run in ``tracking_uri``; one result per call."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.create_experiment(f"logging-latency-{time.time_ns()}")
    run_id = client.create_run(experiment_id).info.run_id

    def log_metric(step: int) -> None:
        client.log_metric(run_id, "val_loss", 0.5, step=step)

    def log_batch(step: int) -> None:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(name, 0.5, now, step)
                                          for name in EPOCH_METRICS])

    for name, call, per_call in (("log_metric", log_metric, 1),
                                 ("log_batch", log_batch, len(EPOCH_METRICS))):
        yield {"benchmark": "logging_latency", "store": store, "tracking_uri": tracking_uri,
               "call": name, **summary(time_calls(call, calls, warmup), per_call)}
    client.set_terminated(run_id)
    client.delete_experiment(experiment_id)  # leave nothing in the user's own server


@contextmanager
def throwaway_server() -> Iterator[str]:
    """PostgreSQL (durable settings) and ``mlflow server`` on loopback; yields the server URL."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from scaleout.conftest import running_mlflow_server, running_postgres

    with (running_postgres(durable=True) as postgres,
          tempfile.TemporaryDirectory(prefix="mlflow-server-") as base,
          running_mlflow_server(postgres.mlflow_url, Path(base)) as server):
        yield server.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="append", default=[], metavar="URL",
                        help="tracking server URL (repeatable)")
    parser.add_argument("--start-servers", action="store_true",
                        help="also start a throwaway PostgreSQL + mlflow server on loopback")
    parser.add_argument("--calls", type=int, default=300, help="timed calls per kind of call")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first")
    args = parser.parse_args()
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # stdout: JSON lines only
    with ExitStack() as stack:
        sqlite_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mlflow-")))
        stores = [("sqlite", f"sqlite:///{sqlite_dir / 'mlflow.db'}")]
        stores += [("server", url) for url in args.server]
        if args.start_servers:
            url = stack.enter_context(throwaway_server())
            stores.append(("server (started: PostgreSQL backend)", url))
        for store, uri in stores:
            for result in measure(store, uri, calls=args.calls, warmup=args.warmup):
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
