"""Host and GPU memory per trial over a whole study run in-process by ``run_study``: does
memory grow from trial to trial?

Runs a study exactly as ``hpsearch run`` does (``run_study`` with sqlite Optuna and MLflow
stores in a temp dir) with a reporter that, after every trial, records the process's
resident set (``VmRSS``), its peak during the trial (``VmHWM``, reset after each trial via
``/proc/self/clear_refs``) and, on CUDA, ``torch.cuda.max_memory_allocated`` during the
trial (reset after each)::

    python benchmarks/memory.py --trials 50 --epochs 2 --train-subset 2000

The default search space is a small one (widths 16/32, depth 1-2, batch 128/256, all four
architectures) and a 5 % validation split, so 50 trials take minutes on two CPU cores;
``--full-space`` keeps the built-in Fashion-MNIST space and validation split.

Prints one JSON line per trial and a summary line: first / last / peak RSS, RSS after trial
10 and after the last trial, and the growth as the least-squares slope of RSS over trials
10..N (MiB per trial). Memory figures are MiB.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from _common import (
    MB,
    add_common_options,
    emit,
    log,
    machine_info,
    markdown_table,
    read_proc_status_kb,
    render_section,
    resolve_device,
    working_directory,
    write_section,
)

from hpsearch.search.config import RunConfig
from hpsearch.search.progress import Reporter
from hpsearch.search.study import run_study
from hpsearch.studies import load_builtin_spec

SMALL_SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
    "batch_size": [128, 256],
    "depth": {"type": "int", "low": 1, "high": 2},
    "width": [16, 32],
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "arch": ["cnn", "resnet", "vgg", "mlp"],
    "optimizer": ["adamw", "sgd"],
    "weight_decay": {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True},
}
SMALL_VAL_FRACTION = 0.05  # 3,000 validation images: evaluation dominates on a small subset


def rss_mb() -> float:
    """Resident set of this process now (MiB), from /proc/self/status VmRSS."""
    return (read_proc_status_kb("VmRSS") or 0) * 1024 / MB


def peak_rss_mb() -> float:
    """Peak resident set (MiB) since start or the last :func:`reset_peak_rss`, from VmHWM."""
    return (read_proc_status_kb("VmHWM") or 0) * 1024 / MB


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs).

    Returns:
        Whether it worked; if not, VmHWM stays the peak since the process started.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryReporter(Reporter):
    """hpsearch's progress reporter that also records memory after every trial.

    Args:
        metric: the study's metric, for the progress lines.
        device: where trials train; GPU figures only on CUDA.
    """

    def __init__(self, metric: str, device: torch.device) -> None:
        super().__init__(metric, stream=sys.stderr, verbose=False)
        self.device = device
        self.records: list[dict[str, Any]] = []
        self.peak_resets = reset_peak_rss()
        self._last = time.perf_counter()

    def trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().trial_finished(study, trial)
        now = time.perf_counter()
        params = trial.user_attrs.get("hyperparameters", trial.params)
        record = {
            "benchmark": "memory",
            "trial": trial.number,
            "count": len(self.records) + 1,
            "state": trial.state.name,
            "arch": params.get("arch"),
            "seconds": round(now - self._last, 2),
            "rss_mb": round(rss_mb(), 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "gpu_peak_mb": None,
            "gpu_reserved_mb": None,
        }
        if self.device.type == "cuda":
            record["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated(self.device) / MB, 1)
            record["gpu_reserved_mb"] = round(torch.cuda.memory_reserved(self.device) / MB, 1)
            torch.cuda.reset_peak_memory_stats(self.device)
        reset_peak_rss()
        self.records.append(record)
        emit(record)
        self._last = time.perf_counter()


def growth_slope(records: list[dict[str, Any]], start: int) -> tuple[float | None, int]:
    """Least-squares slope of RSS (MiB) against the trial count, from count ``start`` on.

    With fewer than ``start + 2`` trials the second half of the trials is used instead.

    Returns:
        (slope in MiB per trial or None with under 2 trials, the first count used).
    """
    if len(records) < 2:
        return None, 1
    if len(records) < start + 2:  # too few trials: fit the second half (at least 2 points)
        start = max(1, min(len(records) // 2 + 1, len(records) - 1))
    used = [r for r in records if r["count"] >= start]
    counts = np.array([r["count"] for r in used], dtype=np.float64)
    rss = np.array([r["rss_mb"] for r in used], dtype=np.float64)
    return float(np.polyfit(counts, rss, 1)[0]), start


def summarize(reporter: MemoryReporter, *, rss_before: float, rss_after: float,
              peak_total: float, wall_s: float, args: argparse.Namespace,
              device: torch.device) -> dict[str, Any]:
    records = reporter.records
    slope, start = growth_slope(records, args.slope_from)
    states: dict[str, int] = {}
    for r in records:
        states[r["state"]] = states.get(r["state"], 0) + 1
    at = {r["count"]: r["rss_mb"] for r in records}
    gpu = [r["gpu_peak_mb"] for r in records if r["gpu_peak_mb"] is not None]
    return {
        "benchmark": "memory",
        "summary": True,
        "device": device.type,
        "trials": len(records),
        "states": states,
        "epochs": args.epochs,
        "train_subset": args.train_subset,
        "space": "full" if args.full_space else "small",
        "wall_s": round(wall_s, 1),
        "rss_before_mb": round(rss_before, 1),
        "rss_first_mb": records[0]["rss_mb"] if records else None,
        "rss_at_slope_start_mb": at.get(start),
        "rss_last_mb": records[-1]["rss_mb"] if records else None,
        "rss_after_study_mb": round(rss_after, 1),
        "peak_rss_mb": round(peak_total, 1),
        "slope_from_trial": start,
        "slope_mb_per_trial": None if slope is None else round(slope, 3),
        "peak_gpu_mb": max(gpu) if gpu else None,
        "peak_resets_per_trial": reporter.peak_resets,
    }


def build_config(args: argparse.Namespace, workdir: Path) -> RunConfig:
    spec = load_builtin_spec(args.dataset).replace(epochs=args.epochs, enqueue_trials=[])
    if not args.full_space:
        spec = spec.replace(search_space=SMALL_SPACE, val_fraction=SMALL_VAL_FRACTION)
    name = "memory-benchmark"
    # Keywords only: RunConfig may gain fields; their defaults are what `hpsearch run` uses,
    # except the number of worker processes: the reporter sees only trials run in-process.
    extra = {"jobs": 1} if "jobs" in {f.name for f in dataclasses.fields(RunConfig)} else {}
    return RunConfig(spec=spec, trials=args.trials, study_name=name,
                     register_name=f"hpsearch-{name}",
                     storage=f"sqlite:///{workdir / 'hpsearch.db'}",
                     tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
                     train_subset=args.train_subset, device=args.device, seed=args.seed,
                     **extra)


def docs_section(args: argparse.Namespace, summary: dict[str, Any],
                 records: list[dict[str, Any]], device: torch.device) -> str:
    columns = {
        "trials": "trials",
        "peak_rss_mb": "peak host RSS (MiB)",
        "peak_gpu_mb": "peak GPU allocated (MiB)",
        "rss_first_mb": "RSS after trial 1 (MiB)",
        "rss_at_slope_start_mb": f"RSS after trial {summary['slope_from_trial']} (MiB)",
        "rss_last_mb": f"RSS after trial {summary['trials']} (MiB)",
        "slope_mb_per_trial": f"slope trials {summary['slope_from_trial']}.."
                              f"{summary['trials']} (MiB/trial)",
        "rss_after_study_mb": "RSS after registration (MiB)",
    }
    step = max(1, len(records) // 10)
    sampled = [r for r in records if r["count"] == 1 or r["count"] % step == 0]
    trend = {str(r["count"]): r["rss_mb"] for r in sampled}
    space = ("the built-in search space" if args.full_space else
             "a small search space (all four architectures, widths 16/32, depth 1-2, "
             "batch 128/256, 5 % validation split)")
    subset = f"{args.train_subset:,}" if args.train_subset else "all"
    states = ", ".join(f"{n} {state}" for state, n in summary["states"].items())
    notes = (
        f"One study of {summary['trials']} trials ({states}) run in-process by `run_study`: "
        f"at most {args.epochs} epoch(s) per trial, {subset} training images, "
        f"{space}; sqlite stores in a temp dir; {summary['wall_s']:.0f} s in all. RSS before "
        f"the study {summary['rss_before_mb']:.0f} MiB. Peak host RSS is VmHWM (reset after "
        "every trial); RSS is VmRSS after each trial; the slope is a least-squares fit of RSS "
        "against the trial count."
    )
    body = "\n\n".join([markdown_table([summary], columns), "RSS (MiB) after trial:",
                        markdown_table([trend], {k: k for k in trend})])
    return render_section("memory", title="Memory per trial over a study",
                          machine=machine_info(device), body=body, notes=notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--dataset", default="fashion_mnist",
                        help="built-in study spec (default fashion_mnist)")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=2000, metavar="N",
                        help="training images per trial (default 2000; 0 = all)")
    parser.add_argument("--full-space", action="store_true",
                        help="the built-in search space and validation split, not the small ones")
    parser.add_argument("--slope-from", type=int, default=10,
                        help="fit the RSS growth from this trial count on (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    add_common_options(parser)
    args = parser.parse_args()
    if min(args.trials, args.epochs) < 1 or args.train_subset < 0:
        parser.error("--trials and --epochs must be >= 1, --train-subset >= 0")
    args.train_subset = args.train_subset or None
    device = resolve_device(args.device)
    args.device = device.type
    rss_before = rss_mb()
    with tempfile.TemporaryDirectory(prefix="hpsearch-memory-") as tmp, working_directory(tmp):
        config = build_config(args, Path(tmp))
        reporter = MemoryReporter(config.spec.metric, device)
        start = time.perf_counter()
        summary_of_run = run_study(config, reporter)
        wall = time.perf_counter() - start
    if summary_of_run.exit_code:
        sys.exit(f"the study stopped early: {summary_of_run.stop_reason}")
    peak = max([peak_rss_mb(), *(r["peak_rss_mb"] for r in reporter.records)])
    summary = summarize(reporter, rss_before=rss_before, rss_after=rss_mb(), peak_total=peak,
                        wall_s=wall, args=args, device=device)
    emit(summary)
    if args.write_docs:
        write_section(args.docs, "memory", docs_section(args, summary, reporter.records, device))
    log(f"registered {summary_of_run.registration}")


if __name__ == "__main__":
    main()
