"""Every GPU figure of hpsearch in one command, into one results folder.

On the GPU machine, from the project root of this checkout (the machine has torch but no
optuna, mlflow or data: ``../shared/gpu/prepare-bundle.sh``, run beforehand on the CPU
machine, puts the wheels in ``.whl/`` and Fashion-MNIST in ``.data/``; carry both)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \\
        --target /tmp/site .whl/*.whl \\
      && export PYTHONPATH=/tmp/site:$PWD HPSEARCH_DATA_DIR=$PWD/.data PYTHONUNBUFFERED=1 \\
      || exit; python3 benchmarks/gpu_report.py

About 25 minutes on one H100 (``--quick``, a health check of the main paths without the
slow tests and without ``torch.compile``: under 6). Each part runs in its own process
under its own time limit, so one that fails or overruns is recorded and the others still
run:

1. ``tests``: ``pytest -m gpu tests/gpu`` (``--quick``: not the slow ones);
2. ``throughput``: ``throughput.py``, the trainer against the conventional DataLoader
   loop, every architecture at batch 128 and 512;
3. ``step_modes``: ``step_modes.py``, one 54,000-image epoch of the default CNN (cnn,
   depth 3, width 32) eager, as a CUDA graph, with ``--compile`` and with ``--compile
   --compile-mode reduce-overhead``; kernels per step and GPU busy share;
4. ``mlflow``: ``mlflow_overhead.py``, MLflow's share of a trial's wall time;
5. ``streaming``: ``streaming.py``, training images per second with the data resident on
   the device against streamed from host memory (a memory map, as an own-images cache),
   for the default CNN on Fashion-MNIST and the backbones resnet18 and mobilenet_v3_small
   on 4,096 images upscaled to 224 px RGB (fine-tuning throughput), and the per-trial copy
   that splits kept resident across trials save;
6. ``search_jobs1``, ``search_default``: ``hpsearch run --trials 50 --dataset
   fashion_mnist`` with ``--jobs 1`` and with the default ``--jobs``: wall time, champion
   test accuracy, GPU memory per worker (``nvidia-smi``).

Results: ``--out`` (default ``$OUT/gpu-report`` when ``$OUT`` is set, else
``./gpu-report-DATE``) holds ``report.json`` (every record), ``report.md`` (the docs
section), ``readme_gpu.md`` (lines for the README), ``benchmarks.md`` (``--docs`` with the
section rewritten) and each part's output and log. The section ``gpu_report`` of
``--docs`` (default ``docs/benchmarks.md``) is rewritten in place too.

Where one command may run for at most 10 minutes (this project's lent GPU machines), run
the parts in several commands and merge their folders afterwards, on any machine::

    python3 benchmarks/gpu_report.py --parts tests,throughput,mlflow     # at most 8.2 min
    python3 benchmarks/gpu_report.py --parts step_modes                  # at most 8.7 min
    python3 benchmarks/gpu_report.py --parts search_jobs1,streaming      # at most 9 min
    python3 benchmarks/gpu_report.py --parts search_default              # at most 6 min
    python benchmarks/gpu_report.py --merge RUN1 RUN2 RUN3 RUN4          # writes the docs

(each GPU command starting with the pip install and export line above; each writes its
own ``$OUT/gpu-report``, which comes back as RUN1, RUN2, ...).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from _common import REPO_ROOT, descendants, log, machine_info, resolve_device, write_section
from _gpu_report_docs import docs_section, readme_lines
from _gpu_sampler import GpuProcessSampler

from hpsearch.search.gpu_sharing import default_jobs, mps_active, mps_pipe_directory

BENCHMARKS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Plan:
    """What one run measures and the seconds each part may take.

    Attributes:
        total_s: the whole run's budget; a part gets at most what is left of it.
        tests: pytest's marker expression, and its limit.
        throughput: ``throughput.py``'s arguments, and its limit.
        step_runs: ``(batch size, mode, limit)`` of each ``step_modes.py`` run.
        step_args: their other arguments.
        mlflow: ``mlflow_overhead.py``'s arguments, and its limit.
        streaming: ``(arguments, limit)`` of each ``streaming.py`` run.
        search: ``hpsearch run``'s budget arguments.
        search_timeout_s: its ``--timeout`` (no new trial after it).
        search_s: its limit.
    """

    total_s: float
    tests: tuple[str, float]
    throughput: tuple[list[str], float]
    step_runs: tuple[tuple[int, str, float], ...]
    step_args: list[str]
    mlflow: tuple[list[str], float]
    streaming: tuple[tuple[list[str], float], ...]
    search: list[str]
    search_timeout_s: int
    search_s: float


ARCHS = ["--arch", "cnn", "--arch", "mlp", "--arch", "resnet", "--arch", "vgg"]
BATCHES = ["--batch-size", "128", "--batch-size", "512"]
# Each group of parts fits one 10-minute command (see the docstring): tests + throughput +
# mlflow 490 s at most, step_modes 520 s, search_jobs1 + streaming 540 s, search_default
# 360 s.
STREAM_CNN = ["--arch", "cnn", "--batch-size", "512"]
# The two backbones the fine-tuning issue names, at 224 px RGB: resident and streamed.
STREAM_RESNET = ["--arch", "resnet18", "--arch", "mobilenet_v3_small", "--image-size", "224",
                 "--channels", "3", "--train-subset", "4096", "--batch-size", "128"]
PLANS = {
    "full": Plan(total_s=27.5 * 60, tests=("gpu", 240),
                 throughput=([*ARCHS, *BATCHES, "--epochs", "3", "--train-subset", "20000"],
                             150),
                 step_runs=((512, "eager", 45), (512, "cuda-graphs", 45),
                            (512, "compile", 100), (512, "compile-reduce-overhead", 120),
                            (128, "eager", 45), (128, "cuda-graphs", 45),
                            (128, "compile-reduce-overhead", 120)),
                 step_args=["--epochs", "2"],
                 mlflow=(["--trials", "3", "--epochs", "12", "--train-subset", "0"], 100),
                 streaming=(([*STREAM_CNN, "--epochs", "3"], 60),
                            ([*STREAM_RESNET, "--epochs", "3"], 120)),
                 search=["--trials", "50"], search_timeout_s=300, search_s=360),
    "quick": Plan(total_s=5.5 * 60, tests=("gpu and not slow", 80),
                  throughput=(["--arch", "cnn", *BATCHES, "--epochs", "2",
                               "--train-subset", "10000"], 40),
                  step_runs=((512, "eager", 30), (512, "cuda-graphs", 30)),
                  step_args=["--epochs", "2"],
                  mlflow=(["--trials", "2", "--epochs", "3", "--train-subset", "10000"], 30),
                  streaming=(([*STREAM_CNN, "--epochs", "2", "--train-subset", "10000"], 40),),
                  search=["--trials", "6", "--epochs", "2", "--train-subset", "5000"],
                  search_timeout_s=20, search_s=50),
    # The CPU dry run: every code path, tiny budgets (a test runs it).
    "cpu-quick": Plan(total_s=6 * 60, tests=("gpu", 60),
                      throughput=(["--arch", "cnn", "--batch-size", "128", "--epochs", "2",
                                   "--train-subset", "512"], 60),
                      step_runs=((128, "eager", 60), (128, "cuda-graphs", 60),
                                 (128, "compile", 90)),
                      step_args=["--epochs", "1", "--train-subset", "256", "--val-subset",
                                 "256", "--profile-steps", "2"],
                      mlflow=(["--trials", "1", "--epochs", "1", "--train-subset", "512"], 60),
                      streaming=((["--arch", "cnn", "--batch-size", "128", "--epochs", "2",
                                   "--train-subset", "512", "--val-subset", "256"], 60),),
                      search=["--spec", str(BENCHMARKS / "specs" / "fixed_mlp.yaml"),
                              "--trials", "2", "--epochs", "1", "--train-subset", "256"],
                      search_timeout_s=30, search_s=120),
}


@dataclass
class Report:
    """The run's results folder, clock and records."""

    out: Path
    device: torch.device
    plan: Plan
    deadline: float
    env: dict[str, str]
    scratch: Path
    saved: dict[str, Any]  # what report.json holds: the run and its parts so far

    def save(self, part: str, result: dict[str, Any]) -> None:
        """Record ``part``'s result (so far) in report.json: a run cut short keeps what it
        measured."""
        self.saved["parts"][part] = result
        (self.out / "report.json").write_text(json.dumps(self.saved, indent=2, default=str))

    def limit(self, cap: float) -> float:
        """Seconds a part may take: its cap, or what is left of the whole budget."""
        return min(cap, self.deadline - time.monotonic())

    def run(self, name: str, command: list[str], cap: float,
            cwd: Path | None = None) -> dict[str, Any]:
        """Run ``command`` with stdout to ``NAME.out`` and stderr to ``NAME.log``; its JSON
        lines, exit code, seconds, and whether it ran out of time."""
        limit = self.limit(cap)
        if limit < 5:
            return {"status": "skipped", "reason": "out of time", "records": []}
        log(f"[{name}] {' '.join(command)}  (limit {limit:.0f} s)")
        stdout, stderr = self.out / f"{name}.out", self.out / f"{name}.log"
        start = time.monotonic()
        with open(stdout, "w") as out, open(stderr, "w") as err:
            process = subprocess.Popen(command, stdout=out, stderr=err, env=self.env,
                                       cwd=cwd or REPO_ROOT, start_new_session=True)
            timed_out = _wait(process, limit)
        seconds = round(time.monotonic() - start, 1)
        records = _json_lines(stdout)
        status = ("timed out" if timed_out else "ok" if process.returncode == 0
                  else "failed")
        result = {"status": status, "exit_code": process.returncode, "seconds": seconds,
                  "records": records}
        if status != "ok":
            result["reason"] = (f"no result after {limit:.0f} s" if timed_out
                                else _tail(stderr))
        log(f"[{name}] {status} in {seconds} s")
        return result


def _wait(process: subprocess.Popen, limit: float) -> bool:
    """Wait for ``process``; past ``limit`` end it and its descendants: SIGTERM (hpsearch
    then records its running trials as interrupted), SIGKILL 20 s later. Returns whether it
    ran out of time."""
    try:
        process.wait(timeout=limit)
        return False
    except subprocess.TimeoutExpired:
        pass
    tree = descendants(process.pid)
    _signal(tree, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    _signal(tree, signal.SIGKILL)
    process.wait()
    return True


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:  # gone already
            pass


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects among ``path``'s lines (the benchmarks print one per result)."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def _tail(path: Path, lines: int = 3) -> str:
    """The last lines of a log (a traceback's last lines name the error)."""
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(line.strip() for line in text[-lines:])[-1000:]


def part_environment(report: Report) -> dict[str, Any]:
    info = machine_info(report.device)
    info |= {"mps": mps_active(), "mps_pipe_directory": str(mps_pipe_directory()),
             "default_jobs": default_jobs(report.device), "python": sys.version.split()[0]}
    for package in ("optuna", "mlflow", "mlflow-skinny", "torchvision", "numpy"):
        try:
            info[f"{package}_version"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[f"{package}_version"] = None
    smi = shutil.which("nvidia-smi")
    if smi:
        query = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=20, check=False)
        info["nvidia_smi"] = query.stdout.strip()
    return {"status": "ok", "records": [info]}


def part_tests(report: Report) -> dict[str, Any]:
    marker, cap = report.plan.tests
    junit = report.out / "tests.xml"
    # -o addopts: one process on the one GPU, and no pytest-xdist needed (setup.cfg's -n 2).
    result = report.run("tests", [sys.executable, "-m", "pytest", "-m", marker, "tests/gpu",
                                  "-o", "addopts=", "-q", "-rfEs", "-p", "no:cacheprovider",
                                  f"--junitxml={junit}"], cap)
    if junit.exists():
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed = [f"{case.get('classname')}::{case.get('name')}"
                  for case in suite.iter("testcase")
                  if case.find("failure") is not None or case.find("error") is not None]
        result["records"] = [counts | {"passed": counts["tests"] - counts["failures"]
                                       - counts["errors"] - counts["skipped"],
                                       "failed_tests": failed}]
    return result


def _benchmark(report: Report, name: str, script: str, arguments: list[str],
               cap: float) -> dict[str, Any]:
    """Run ``benchmarks/SCRIPT`` on the report's device."""
    return report.run(name, [sys.executable, str(BENCHMARKS / script), "--device",
                             report.device.type, *arguments], cap)


def part_throughput(report: Report) -> dict[str, Any]:
    return _benchmark(report, "throughput", "throughput.py", *report.plan.throughput)


def _runs(report: Report, part: str, script: str,
          runs: list[tuple[str, list[str], float]]) -> dict[str, Any]:
    """``script`` once per ``(label, arguments, cap)``, the part's result saved after each
    run: ``ok``, ``partial`` (some runs failed) or ``failed``."""
    records, problems = [], []
    result: dict[str, Any] = {"status": "skipped", "records": [], "reason": "no run planned"}
    for label, arguments, cap in runs:
        one = _benchmark(report, f"{part}-{label}", script, arguments, cap)
        records += one["records"]
        if one["status"] != "ok":
            problems.append(f"{label}: {one['status']} ({one.get('reason', '')})")
        status = "ok" if not problems else "partial" if records else "failed"
        result = {"status": status, "records": records, "reason": "; ".join(problems) or None}
        report.save(part, result)
    return result


def part_step_modes(report: Report) -> dict[str, Any]:
    return _runs(report, "step_modes", "step_modes.py", [
        (f"{mode}-b{batch}", ["--mode", mode, "--batch-size", str(batch),
                              *report.plan.step_args], cap)
        for batch, mode, cap in report.plan.step_runs])


def part_mlflow(report: Report) -> dict[str, Any]:
    return _benchmark(report, "mlflow", "mlflow_overhead.py", *report.plan.mlflow)


def part_streaming(report: Report) -> dict[str, Any]:
    return _runs(report, "streaming", "streaming.py", [
        (arguments[arguments.index("--arch") + 1], arguments, cap)
        for arguments, cap in report.plan.streaming])


def part_search_jobs1(report: Report) -> dict[str, Any]:
    return _search_once(report, 1, "1")


def part_search_default(report: Report) -> dict[str, Any]:
    default = default_jobs(report.device)
    if default == 1:
        return {"status": "skipped", "records": [],
                "reason": f"the default --jobs is 1 on {report.device.type}: search_jobs1"}
    return _search_once(report, None, f"default ({default})")


def _search_once(report: Report, jobs: int | None, label: str) -> dict[str, Any]:
    """One ``hpsearch run`` in a fresh directory, GPU memory sampled per process."""
    from end_to_end import study_results  # optuna and mlflow: only this part needs them

    name = f"search-jobs{jobs or 'default'}"
    workdir = report.scratch / name
    workdir.mkdir(parents=True)
    storage = f"sqlite:///{workdir / 'hpsearch.db'}"
    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    command = [sys.executable, "-m", "hpsearch.cli", "run", "--dataset", "fashion_mnist",
               *report.plan.search, "--study-name", name, "--device", report.device.type,
               "--storage", storage, "--tracking-uri", tracking, "--quiet",
               "--timeout", str(report.plan.search_timeout_s)]
    command += ["--jobs", str(jobs)] if jobs else []
    sampler = GpuProcessSampler(enabled=report.device.type == "cuda")
    sampler.start()
    try:
        result = report.run(name, command, report.plan.search_s, cwd=workdir)
    finally:
        sampler.stop()
    budget = " ".join(report.plan.search)
    if "--spec" in report.plan.search:  # the spec by its name, not its path
        budget = budget.replace(str(BENCHMARKS / "specs") + "/", "")
    record = {"jobs": label, "budget": budget, "wall_s": result.get("seconds"),
              "exit_code": result.get("exit_code"), **sampler.summary()}
    try:
        record |= study_results(name, storage, tracking)
    except Exception as exc:  # no study: the command failed before creating it
        record["results_error"] = f"{type(exc).__name__}: {exc}"
    stderr = (report.out / f"{name}.log").read_text(errors="replace")
    record["header"] = next((line for line in stderr.splitlines()
                             if line.startswith("study ")), None)
    return result | {"records": [record]}


PARTS = {"environment": part_environment, "tests": part_tests,
         "throughput": part_throughput, "step_modes": part_step_modes,
         "mlflow": part_mlflow, "streaming": part_streaming,
         "search_jobs1": part_search_jobs1,
         "search_default": part_search_default}


def default_out() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu-report"
    return Path.cwd() / f"gpu-report-{datetime.date.today().isoformat()}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--quick", action="store_true", help="small budgets: under 6 minutes")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--parts", default=",".join(list(PARTS)[1:]),
                        help="comma-separated parts to run (default: all): "
                             + ", ".join(list(PARTS)[1:]))
    parser.add_argument("--merge", nargs="+", type=Path, metavar="DIR",
                        help="measure nothing: merge these results folders' report.json")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md",
                        help="docs file whose gpu_report section is rewritten")
    args = parser.parse_args()
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))}")
    return args


def main() -> None:
    args = parse_args()
    out = (args.out or default_out()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs = merged(args.merge) if args.merge else [measure(args, out)]
    parts = {name: part for run in runs for name, part in run["parts"].items()}
    write_outputs(parts, runs, out, args.docs)
    log(f"results in {out}")


def measure(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run the chosen parts; report.json is rewritten after each, so a run cut short keeps
    what it measured."""
    device = resolve_device(args.device)
    profile = "full" if not args.quick else "cpu-quick" if device.type == "cpu" else "quick"
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT),
                                                    env.get("PYTHONPATH")) if p)
    run = {"profile": profile, "device": device.type,
           "date": datetime.date.today().isoformat(),
           "command": " ".join(["python", "benchmarks/gpu_report.py", *sys.argv[1:]]),
           "parts": {}}
    chosen = ["environment", *(p for p in args.parts.split(",") if p != "environment")]
    with tempfile.TemporaryDirectory(prefix="gpu-report-") as scratch:
        plan = PLANS[profile]
        report = Report(out=out, device=device, plan=plan, env=env, scratch=Path(scratch),
                        deadline=time.monotonic() + plan.total_s, saved=run)
        for name in chosen:
            try:
                report.save(name, PARTS[name](report))
            except Exception as exc:  # one part's bug must not lose the others' figures
                report.save(name, {"status": "error", "records": [],
                                   "reason": f"{type(exc).__name__}: {exc}"})
    return run


def merged(folders: list[Path]) -> list[dict[str, Any]]:
    """The runs saved in ``folders`` (each holding report.json, or a gpu-report/ that does),
    in order: a part measured again overrides the earlier one."""
    runs = []
    for folder in folders:
        path = next((p for p in (folder / "report.json", folder / "gpu-report" / "report.json")
                     if p.exists()), None)
        if path is None:
            sys.exit(f"--merge: no report.json in {folder}")
        runs.append(json.loads(path.read_text()))
    return runs


def write_outputs(parts: dict[str, Any], runs: list[dict[str, Any]], out: Path,
                  docs: Path) -> None:
    profiles = {run["profile"] for run in runs}
    combined = {"profile": profiles.pop() if len(profiles) == 1 else "mixed",
                "device": runs[-1]["device"], "date": runs[-1]["date"],
                "commands": [run["command"] for run in runs], "parts": parts}
    (out / "report.json").write_text(json.dumps(combined, indent=2, default=str))
    section = docs_section(parts, profile=combined["profile"], device=combined["device"],
                           commands=combined["commands"], date=combined["date"])
    (out / "report.md").write_text(section)
    (out / "readme_gpu.md").write_text(readme_lines(parts, combined["device"]))
    try:
        write_section(docs, "gpu_report", section)
        shutil.copy(docs, out / "benchmarks.md")
    except (OSError, ValueError) as exc:
        log(f"could not rewrite {docs}: {exc}")


if __name__ == "__main__":
    main()
