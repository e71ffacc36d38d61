"""Share of a trial's wall time spent in MLflow logging, from real trials of hpsearch's
``Objective``.

Runs ``--trials`` trials with one fixed set of hyperparameters (the study's whole search
space, so every trial is the same configuration; no pruning) through ``Objective`` with a
``StudyTracker`` on a fresh sqlite tracking store in a temp dir (or ``--tracking-uri``, e.g.
an HTTP server),
exactly as ``hpsearch run`` drives them::

    python benchmarks/mlflow_overhead.py --trials 3 --epochs 3 --train-subset 10000

Every public ``MlflowClient`` method of the tracker's client is wrapped with a timer (only
the outermost call counts, so a method calling another is not counted twice). Matplotlib
work is timed too: building hpsearch's figures (confusion matrices, learning curves, the
misclassified grid; outside the client) and ``Figure.savefig`` (inside ``log_figure``, so
already part of the client time). Prints one JSON line per trial and a summary line:

* ``mlflow_client_s``: seconds inside MlflowClient calls;
* ``figures_build_s`` / ``figures_save_s``: building / rendering figures (the latter is
  included in ``mlflow_client_s``);
* ``trial_wall_s``: the whole ``Objective.__call__``; ``fit_s``: its ``fit()`` call
  (training, validation and the per-epoch callback with its ``log_batch``);
* ``mlflow_share`` = client / wall; ``tracking_share`` = (client + figure building) / wall:
  what the trial would save without tracking. (The misclassified grid reuses the last
  epoch's validation predictions: no extra inference.)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib.figure
import optuna
import torch
from _common import (
    add_common_options,
    emit,
    log,
    machine_info,
    markdown_table,
    render_section,
    resolve_device,
    synchronize,
    working_directory,
    write_section,
)

import hpsearch.search.session as session_module
import hpsearch.tracking.report as report_module
import hpsearch.tracking.runs as runs_module
from hpsearch.data_utils import get_dataset_info, load_dataset, split_train_val
from hpsearch.search.objective import Objective, TrialData
from hpsearch.search.progress import Reporter
from hpsearch.studies import load_builtin_spec
from hpsearch.tracking.provenance import dataset_inputs, provenance_tags
from hpsearch.tracking.report import log_study_report
from hpsearch.tracking.runs import StudyTracker


class Timers:
    """Seconds and calls per name; ``outermost`` timers ignore calls nested in another."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth = 0

    @contextlib.contextmanager
    def time(self, name: str, *, outermost: bool = False) -> Iterator[None]:
        if outermost and self._depth:
            yield
            return
        self._depth += outermost
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1
            self._depth -= outermost

    def wrap(self, fn: Callable, name: str, *, outermost: bool = False) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.time(name, outermost=outermost):
                return fn(*args, **kwargs)
        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def instrument(tracker: StudyTracker, client_timers: Timers, other: Timers,
               device: torch.device) -> None:
    """Wrap the tracker's client methods and hpsearch's figure and fit calls.

    The client is patched on the instance (every ``TrialRun`` shares it); hpsearch's
    functions are patched where they are looked up (module globals), for this process only.
    """
    client = tracker.client
    for name, member in inspect.getmembers(type(client)):
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(client, name, client_timers.wrap(getattr(client, name), name,
                                                     outermost=True))
    for module, name in ((runs_module, "confusion_matrix_figure"),
                         (runs_module, "learning_curves_figure"),
                         (report_module, "image_grid_figure")):
        setattr(module, name, other.wrap(getattr(module, name), "figures_build"))
    matplotlib.figure.Figure.savefig = other.wrap(matplotlib.figure.Figure.savefig,
                                                  "figures_save")

    def synchronized(fn: Callable) -> Callable:
        def call(*args, **kwargs):
            result = fn(*args, **kwargs)
            synchronize(device)
            return result
        return call

    # A trial trains in TrainingSession.fit, which looks fit() up in its module.
    session_module.fit = other.wrap(synchronized(session_module.fit), "fit")


def trial_params(args: argparse.Namespace) -> dict[str, Any]:
    return {"arch": args.arch, "depth": args.depth, "width": args.width,
            "dropout": args.dropout, "lr": args.lr, "batch_size": args.batch_size,
            "optimizer": "adamw", "weight_decay": 5e-4}


def run(args: argparse.Namespace, workdir: Path, device: torch.device) -> list[dict]:
    # The built-in study's settings with one fixed configuration as its whole space.
    spec = load_builtin_spec("fashion_mnist").replace(
        epochs=args.epochs, pruner={"name": "none"}, search_space=trial_params(args),
        enqueue_trials=[])
    info = get_dataset_info(spec.dataset)
    train, _ = load_dataset(spec.dataset)
    train, val = split_train_val(train, val_fraction=spec.val_fraction, seed=args.seed,
                                 train_subset=args.train_subset)
    tracking_uri = args.tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    study_name = f"mlflow-overhead-{time.strftime('%Y%m%d-%H%M%S')}"
    client_timers, other = Timers(), Timers()
    with client_timers.time("study_setup"):
        tracker = StudyTracker(tracking_uri=tracking_uri, study_name=study_name)
        tracker.start_parent(params={"benchmark": "mlflow_overhead"},
                             spec_yaml=spec.to_yaml(),
                             run_tags=provenance_tags(device, args.seed),
                             inputs=dataset_inputs({"training": train, "validation": val},
                                                   spec.dataset))
    setup_s = client_timers.seconds.pop("study_setup")
    instrument(tracker, client_timers, other, device)
    study = optuna.create_study(storage=f"sqlite:///{workdir / 'optuna.db'}",
                                study_name=study_name, direction=spec.direction,
                                sampler=optuna.samplers.RandomSampler(seed=args.seed),
                                pruner=optuna.pruners.NopPruner())
    objective = Objective(spec=spec, data=TrialData(info=info, train=train, val=val),
                          device=device, tracker=tracker, seed=args.seed,
                          reporter=Reporter(spec.metric, stream=sys.stderr))
    records = []
    for _ in range(args.trials):
        trial = study.ask()
        client_timers.reset()
        other.reset()
        start = time.perf_counter()
        value = objective(trial)
        wall = time.perf_counter() - start
        study.tell(trial, value)
        records.append(trial_record(trial, wall, client_timers, other, study, device))
        emit(records[-1])
    client_timers.reset()
    with client_timers.time("study_report"):
        log_study_report(tracker.client, tracker.parent_run_id, study)
    tracker.end_parent("FINISHED")
    summary = summarize(records, setup_s, client_timers.seconds["study_report"], args,
                        tracking_uri, len(train), len(val), device)
    emit(summary)
    return [*records, summary]


def trial_record(trial: optuna.Trial, wall: float, client_timers: Timers, other: Timers,
                 study: optuna.Study, device: torch.device) -> dict:
    client_s = sum(client_timers.seconds.values())
    frozen = study.trials[trial.number]
    tracking_s = client_s + other.seconds["figures_build"]
    calls = {name: {"calls": client_timers.calls[name], "s": round(s, 4)}
             for name, s in sorted(client_timers.seconds.items(), key=lambda kv: -kv[1])}
    return {
        "benchmark": "mlflow_overhead",
        "device": device.type,
        "trial": trial.number,
        "value": frozen.value,
        "checkpoint_logged": bool(frozen.user_attrs.get("checkpoint")),
        "trial_wall_s": round(wall, 3),
        "fit_s": round(other.seconds["fit"], 3),
        "mlflow_client_s": round(client_s, 3),
        "figures_build_s": round(other.seconds["figures_build"], 3),
        "figures_save_s": round(other.seconds["figures_save"], 3),
        "tracking_s": round(tracking_s, 3),
        "mlflow_share": round(client_s / wall, 4),
        "tracking_share": round(tracking_s / wall, 4),
        "client_calls": calls,
    }


def summarize(records: list[dict], setup_s: float, report_s: float, args: argparse.Namespace,
              tracking_uri: str, n_train: int, n_val: int, device: torch.device) -> dict:
    """Totals over all trials, and the mean shares with and without the first trial (which
    pays one-time costs: matplotlib's font cache, lazy imports)."""
    def total(key: str, rows: list[dict]) -> float:
        return sum(r[key] for r in rows)

    later = records[1:] or records
    wall = total("trial_wall_s", records)
    return {
        "benchmark": "mlflow_overhead",
        "summary": True,
        "device": device.type,
        "tracking": tracking_uri.split(":", 1)[0],
        "trials": len(records),
        "epochs": args.epochs,
        "train_images": n_train,
        "val_images": n_val,
        "trial_wall_s": round(wall, 2),
        "mlflow_client_s": round(total("mlflow_client_s", records), 2),
        "figures_build_s": round(total("figures_build_s", records), 2),
        "figures_save_s": round(total("figures_save_s", records), 2),
        "mlflow_share": round(total("mlflow_client_s", records) / wall, 4),
        "tracking_s": round(total("tracking_s", records), 2),
        "tracking_share": round(total("tracking_s", records) / wall, 4),
        "mlflow_share_after_first": round(
            total("mlflow_client_s", later) / total("trial_wall_s", later), 4),
        "mlflow_client_s_per_trial_after_first": round(
            total("mlflow_client_s", later) / len(later), 3),
        "study_setup_s": round(setup_s, 3),
        "study_report_s": round(report_s, 3),
    }


TRIAL_COLUMNS = {
    "trial": "trial",
    "trial_wall_s": "trial wall (s)",
    "fit_s": "fit (s)",
    "mlflow_client_s": "MLflow client (s)",
    "figures_build_s": "figures built (s)",
    "figures_save_s": "figures saved (s, in client)",
    "mlflow_share": "MLflow share",
    "tracking_share": "tracking share",
}


def docs_section(args: argparse.Namespace, rows: list[dict], device: torch.device) -> str:
    *trials, summary = rows
    per_call: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for record in trials:
        for name, entry in record["client_calls"].items():
            per_call[name][0] += entry["calls"]
            per_call[name][1] += entry["s"]
    calls = [{"method": name, "calls": n, "total_s": s, "mean_ms": 1000 * s / n}
             for name, (n, s) in sorted(per_call.items(), key=lambda kv: -kv[1][1])]
    body = "\n\n".join([
        markdown_table(trials, TRIAL_COLUMNS),
        markdown_table(calls, {"method": "MlflowClient method", "calls": "calls",
                               "total_s": "total (s)", "mean_ms": "per call (ms)"}),
    ])
    notes = (
        f"{summary['trials']} trials of `{args.arch}` depth {args.depth}, width {args.width}, "
        f"batch {args.batch_size}, {args.epochs} epoch(s) on {summary['train_images']:,} "
        f"training / {summary['val_images']:,} validation images; tracking store: "
        f"{summary['tracking']}. Over all trials MLflow client calls took "
        f"{summary['mlflow_share']:.1%} of the trial wall time "
        f"({summary['mlflow_share_after_first']:.1%} after the first trial, "
        f"{summary['mlflow_client_s_per_trial_after_first']:.2f} s per trial). Figure saving "
        "happens inside `log_figure` and is part of the client time; figure building and "
        "the misclassified-grid inference are not, and are added in the tracking share. "
        f"Once per study: parent run setup {summary['study_setup_s']:.2f} s; one study "
        f"report refresh {summary['study_report_s']:.2f} s."
    )
    return render_section("mlflow_overhead", title="MLflow logging overhead per trial",
                          machine=machine_info(device), body=body, notes=notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=10000, metavar="N",
                        help="training images per trial (default 10000; 0 = all 54,000)")
    parser.add_argument("--arch", default="cnn")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: sqlite in a temp dir)")
    add_common_options(parser)
    args = parser.parse_args()
    if args.trials < 1 or args.epochs < 1 or args.train_subset < 0:
        parser.error("--trials and --epochs must be >= 1, --train-subset >= 0")
    args.train_subset = args.train_subset or None
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as hpsearch run does
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with (tempfile.TemporaryDirectory(prefix="hpsearch-mlflow-overhead-") as tmp,
          working_directory(tmp)):
        log(f"stores in {tmp}")
        rows = run(args, Path(tmp), device)
    if args.write_docs:
        write_section(args.docs, "mlflow_overhead", docs_section(args, rows, device))


if __name__ == "__main__":
    main()
