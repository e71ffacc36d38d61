"""Wall time, trials per hour and champion test accuracy of a fixed search budget, run by
the ``hpsearch run`` command line with ``--jobs`` 1, 2 and 4.

For each ``--jobs N`` it runs, in a fresh temp dir with its own sqlite stores::

    hpsearch run --dataset fashion_mnist --trials T --study-name e2e-jobsN --jobs N \\
        [--epochs E] [--train-subset S] --device D \\
        --storage sqlite:///DIR/hpsearch.db --tracking-uri sqlite:///DIR/mlflow.db

while sampling, every 0.5 s, the resident memory of the command and all its descendants
(RSS summed, which counts shared pages once per process, and PSS summed, which splits them;
the peak of each sum is reported). Afterwards it reads the finished trials and the best
validation value from the Optuna storage and the champion's test accuracy from the MLflow
model registry (model ``hpsearch-<study>``, alias ``champion``, version tag
``test_accuracy``). trials/hour = finished (complete + pruned) trials / wall hours.

Example::

    python benchmarks/end_to_end.py --jobs 1 --jobs 2 --jobs 4 --trials 20 --epochs 3

Prints one JSON line per N and a last line with the speedup of each N over ``--jobs 1``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from _common import (
    MB,
    add_common_options,
    descendants,
    emit,
    log,
    machine_info,
    markdown_table,
    render_section,
    resolve_device,
    write_section,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def hpsearch_executable() -> str:
    """The ``hpsearch`` console script of this interpreter's environment, else on PATH.

    Raises:
        SystemExit: there is none.
    """
    beside = Path(sys.executable).parent / "hpsearch"
    found = str(beside) if beside.is_file() else shutil.which("hpsearch")
    if not found:
        sys.exit("no `hpsearch` command found; install the package (pip install -e .)")
    return found


def check_jobs_option(executable: str) -> None:
    """Fail with one clear line when ``hpsearch run`` has no ``--jobs`` option."""
    help_text = subprocess.run([executable, "run", "--help"], capture_output=True, text=True,
                               check=False).stdout
    if "--jobs" not in help_text:
        sys.exit("end_to_end.py: `hpsearch run` has no --jobs option in this checkout "
                 f"({executable}); this benchmark needs the parallel-workers version of "
                 "hpsearch (see `hpsearch run --help`)")


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _gpu_used_mb() -> float | None:
    """Memory in use on GPU 0 (MiB, all processes), from nvidia-smi; None without it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                              "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=5, check=True).stdout
        return float(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


class TreeMemorySampler(threading.Thread):
    """Samples the summed RSS and PSS of ``pid`` and its descendants every ``interval_s``.

    Attributes:
        peak_rss: largest summed RSS seen (bytes).
        peak_pss: largest summed PSS seen (bytes).
        peak_processes: most processes in the tree at one sample.
        peak_gpu_mb: most memory in use on GPU 0 (MiB), when ``gpu`` and nvidia-smi exist.
    """

    def __init__(self, pid: int, *, interval_s: float = 0.5, gpu: bool = False) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.gpu = pid, interval_s, gpu
        self.peak_rss = self.peak_pss = self.peak_processes = 0
        self.peak_gpu_mb: float | None = None
        self._done = threading.Event()  # not _stop: Thread has one

    def run(self) -> None:
        while True:
            self.sample()
            if self._done.wait(self.interval_s):
                return

    def sample(self) -> None:
        pids = descendants(self.pid)
        self.peak_rss = max(self.peak_rss, sum(_rss_bytes(p) for p in pids))
        self.peak_pss = max(self.peak_pss, sum(_pss_bytes(p) for p in pids))
        self.peak_processes = max(self.peak_processes, len(pids))
        used = _gpu_used_mb() if self.gpu else None
        if used is not None:
            self.peak_gpu_mb = max(self.peak_gpu_mb or 0.0, used)

    def stop(self) -> None:
        self._done.set()
        self.join()


def study_results(study_name: str, storage: str, tracking_uri: str) -> dict[str, Any]:
    """Trial counts and best value from Optuna, the champion's test accuracy from MLflow."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    counts = {state: len(study.get_trials(deepcopy=False, states=(state,)))
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    result: dict[str, Any] = {
        "complete": counts[TrialState.COMPLETE],
        "pruned": counts[TrialState.PRUNED],
        "failed": counts[TrialState.FAIL],
        "best_val": study.best_value if counts[TrialState.COMPLETE] else None,
        "best_trial": study.best_trial.number if counts[TrialState.COMPLETE] else None,
        "test_accuracy": None,
        "champion_version": None,
    }
    try:
        version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(
            f"hpsearch-{study_name}", "champion")
    except MlflowException:
        return result  # nothing registered (no complete trial)
    accuracy = version.tags.get("test_accuracy")
    result["test_accuracy"] = float(accuracy) if accuracy is not None else None
    result["champion_version"] = version.version
    return result


def run_once(args: argparse.Namespace, executable: str, jobs: int,
             device: torch.device) -> dict[str, Any]:
    """One ``hpsearch run --jobs JOBS`` in a fresh temp dir; its measurements."""
    workdir = Path(tempfile.mkdtemp(prefix=f"hpsearch-e2e-jobs{jobs}-"))
    study_name = f"e2e-jobs{jobs}"
    storage = f"sqlite:///{workdir / 'hpsearch.db'}"
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    source = ["--spec", str(Path(args.spec).resolve())] if args.spec else ["--dataset",
                                                                          args.dataset]
    command = [executable, "run", *source, "--trials", str(args.trials),
               "--study-name", study_name, "--jobs", str(jobs)]
    if args.epochs is not None:
        command += ["--epochs", str(args.epochs)]
    if args.train_subset is not None:
        command += ["--train-subset", str(args.train_subset)]
    command += ["--device", device.type, "--storage", storage, "--tracking-uri", tracking_uri]
    log(f"jobs {jobs}: {' '.join(command)}  (in {workdir})")
    with open(workdir / "stdout.log", "w") as out, open(workdir / "stderr.log", "w") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=err)
        sampler = TreeMemorySampler(process.pid, gpu=device.type == "cuda")
        sampler.start()
        try:
            exit_code = process.wait()
        finally:
            if process.poll() is None:  # interrupted here: stop the study cleanly
                process.terminate()
                process.wait()
            sampler.stop()
        wall = time.perf_counter() - start
    record: dict[str, Any] = {
        "benchmark": "end_to_end",
        "jobs": jobs,
        "device": device.type,
        "dataset": args.dataset,
        "trials": args.trials,
        "epochs": args.epochs,
        "train_subset": args.train_subset,
        "exit_code": exit_code,
        "wall_s": round(wall, 1),
        "peak_rss_tree_mb": round(sampler.peak_rss / MB, 1),
        "peak_pss_tree_mb": round(sampler.peak_pss / MB, 1),
        "peak_processes": sampler.peak_processes,
        "peak_gpu_used_mb": sampler.peak_gpu_mb,
    }
    try:
        record |= study_results(study_name, storage, tracking_uri)
    except Exception as exc:  # no study was created: the command failed early
        record["error"] = f"{type(exc).__name__}: {exc}"
    finished = record.get("complete", 0) + record.get("pruned", 0)
    record["finished"] = finished
    record["trials_per_hour"] = round(finished / (wall / 3600), 1)
    if exit_code != 0 or "error" in record:
        tail = (workdir / "stderr.log").read_text().strip().splitlines()[-15:]
        log(f"jobs {jobs}: exit code {exit_code}; kept {workdir}; stderr ends:\n"
            + "\n".join(tail))
    elif not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        record["workdir"] = str(workdir)
    return record


def speedups(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Trials/hour of each N over that of ``--jobs 1`` (else of the smallest N run)."""
    ok = [r for r in records if r["exit_code"] == 0 and r["finished"]]
    if not ok:
        return {"benchmark": "end_to_end", "summary": True, "speedup": {}}
    base = next((r for r in ok if r["jobs"] == 1), min(ok, key=lambda r: r["jobs"]))
    for r in ok:
        r["speedup"] = round(r["trials_per_hour"] / base["trials_per_hour"], 2)
    return {"benchmark": "end_to_end", "summary": True, "baseline_jobs": base["jobs"],
            "speedup": {str(r["jobs"]): r["speedup"] for r in ok},
            "wall_ratio": {str(r["jobs"]): round(base["wall_s"] / r["wall_s"], 2) for r in ok}}


COLUMNS = {
    "jobs": "--jobs",
    "wall_min": "wall (min)",
    "states": "complete / pruned / failed",
    "trials_per_hour": "trials/hour",
    "speedup": "speedup",
    "best_val": "best val accuracy",
    "test_accuracy": "champion test accuracy",
    "peak_rss_tree_mb": "peak RSS, process tree (MiB)",
    "peak_pss_tree_mb": "peak PSS, process tree (MiB)",
}


def section_name(args: argparse.Namespace) -> str:
    """The built-in spec's section, or a second one for a ``--spec`` run."""
    return "end_to_end_spec" if args.spec else "end_to_end"


def docs_section(args: argparse.Namespace, records: list[dict[str, Any]],
                 device: torch.device) -> str:
    spec_text = f"--spec {Path(args.spec).name}" if args.spec else f"--dataset {args.dataset}"
    title_suffix = f" ({Path(args.spec).name})" if args.spec else ""
    columns = dict(COLUMNS)
    if device.type == "cuda":
        columns["peak_gpu_used_mb"] = "peak GPU used (MiB, nvidia-smi)"
    rows = [r | {"wall_min": r["wall_s"] / 60,
                 "states": f"{r.get('complete', 0)} / {r.get('pruned', 0)} / "
                           f"{r.get('failed', 0)}"} for r in records]
    subset = (f"{args.train_subset:,} training images" if args.train_subset
              else "all training images")
    epochs = f"at most {args.epochs} epoch(s)" if args.epochs else "the spec's epochs"
    notes = (
        f"Budget: `hpsearch run {spec_text} --trials {args.trials}` with "
        f"{epochs} per trial and {subset}, sqlite stores in a fresh temp dir per row, device "
        f"{device.type}. Wall time covers the whole command (data loading, trials, test "
        "evaluation and registration of the champion). trials/hour = (complete + pruned) / "
        "wall hours; speedup is relative to `--jobs 1`. Memory is sampled every 0.5 s over "
        "the command and its child processes: RSS summed over processes (shared pages "
        "counted in each) and PSS summed (shared pages split)."
    )
    return render_section(section_name(args), title=f"End to end{title_suffix}: a fixed "
                          "search budget with "
                          "--jobs 1, 2, 4", machine=machine_info(device),
                          body=markdown_table(rows, columns), notes=notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--jobs", type=int, action="append",
                        help="parallel workers of `hpsearch run` (repeatable; default 1 2 4)")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--spec", default=None,
                        help="a study spec file instead of --dataset's built-in one (e.g. "
                             "one architecture, so every trial costs the same); its table "
                             "goes to its own docs section")
    parser.add_argument("--trials", type=int, default=20,
                        help="finished trials per study (default 20)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="most epochs per trial (default: the spec's)")
    parser.add_argument("--train-subset", type=int, default=None, metavar="N",
                        help="train on N images (default: all)")
    parser.add_argument("--keep", action="store_true",
                        help="keep each run's temp dir (stores and logs)")
    add_common_options(parser)
    args = parser.parse_args()
    jobs = args.jobs or [1, 2, 4]
    if min(jobs) < 1 or args.trials < 1:
        parser.error("--jobs and --trials must be >= 1")
    device = resolve_device(args.device)
    executable = hpsearch_executable()
    check_jobs_option(executable)
    records = []
    for n in jobs:
        records.append(run_once(args, executable, n, device))
        emit(records[-1])
    emit(speedups(records))
    if args.write_docs:
        write_section(args.docs, section_name(args), docs_section(args, records, device))
    if any(r["exit_code"] != 0 or "error" in r for r in records):
        sys.exit(1)


if __name__ == "__main__":
    main()
