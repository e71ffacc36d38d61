"""Search efficiency: the best model per minute of compute, as an anytime curve.

Runs, in one invocation on one machine, hpsearch's built-in study against (a) random search
over the same space (the built-in spec with ``sampler: random`` and no enqueued trials) and
(b) ``plain_optuna.py``, the Optuna + torchvision DataLoader script users write today, at
the same flags, for several seeds each. Runs are interleaved (seed by seed, the methods'
order rotated) so that drift in a shared machine's speed spreads over all methods.

Every run is a fresh process in a fresh directory, timed from its start to its exit: imports,
store creation, data loading, trials, test evaluation and (hpsearch) registration included.
Prints one JSON line per run (wall s, best validation accuracy, champion test accuracy,
seconds to reach within 0.5 points of the final best) and, with ``--write-docs``, writes the
table and the anytime curves (``docs/search_efficiency.png``) into ``docs/benchmarks.md``.

    python benchmarks/search_efficiency.py --device cpu --write-docs
    python benchmarks/search_efficiency.py --device cuda --write-docs   # the 50-trial default
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import (
    REPO_ROOT,
    add_common_options,
    emit,
    log,
    machine_info,
    markdown_table,
    render_section,
    resolve_device,
    write_section,
)

# name -> hpsearch run flags; the GPU budget is the README's default command.
BUDGETS = {
    "small": ["--trials", "4", "--epochs", "2", "--train-subset", "3000"],
    "large": ["--trials", "20", "--epochs", "3", "--train-subset", "10000"],
    "gpu": ["--trials", "50"],
}
METHODS = ("hpsearch", "random", "plain")
TOLERANCE = 0.005  # "within 0.5 points" of accuracy


VARIANTS: dict[str, Path] = {}  # --variant NAME=SPEC: other specs compared as methods


def hpsearch_command(method: str, budget: list[str], seed: int, device: str,
                     workdir: Path) -> list[str]:
    exe = Path(sys.executable).with_name("hpsearch")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "hpsearch.cli"]
    command += ["run", "--dataset", "fashion_mnist", *budget, "--seed", str(seed), "--device",
                device, "--quiet", "--study-name", "bench"]
    if method in VARIANTS:
        command[command.index("--dataset"):command.index("--dataset") + 2] = [
            "--spec", str(VARIANTS[method])]
    if method == "random":
        from hpsearch.studies import load_builtin_spec

        spec = load_builtin_spec("fashion_mnist").to_dict()
        spec["sampler"], spec["enqueue_trials"] = {"name": "random"}, []
        (workdir / "random.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        command[command.index("--dataset"):command.index("--dataset") + 2] = [
            "--spec", "random.yaml"]
    return command


def run_hpsearch(method: str, budget: list[str], seed: int, device: str) -> dict:
    """One hpsearch run in a fresh directory; its trials read back from its Optuna store."""
    import optuna

    workdir = Path(tempfile.mkdtemp(prefix=f"search-efficiency-{method}-"))
    try:
        command = hpsearch_command(method, budget, seed, device, workdir)
        start = time.time()
        result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
        wall = time.time() - start
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n"
                               f"{result.stderr[-3000:]}")
        test = re.search(r"^test accuracy (\d\.\d+)", result.stdout, re.M)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name="bench", storage=f"sqlite:///{workdir}/hpsearch.db")
        trials = [{"number": t.number, "state": t.state.name,
                   "value": t.value if t.value is not None else (
                       t.intermediate_values[max(t.intermediate_values)]
                       if t.intermediate_values else None),
                   "end_s": t.datetime_complete.timestamp() - start,
                   "arch": t.user_attrs.get("hyperparameters", {}).get("arch"),
                   "seconds": (t.datetime_complete - t.datetime_start).total_seconds()}
                  for t in study.trials if t.datetime_complete]
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        best = max(complete, key=lambda t: t.value) if complete else None
        return {"wall_s": wall, "best_val": best.value if best else None,
                "test_accuracy": float(test[1]) if test else None, "trials": trials}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_plain(budget: list[str], seed: int, device: str) -> dict:
    flags = dict(zip(budget[::2], budget[1::2]))
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "plain_optuna.py"),
               "--trials", flags["--trials"], "--seed", str(seed), "--device", device]
    for flag in ("--epochs", "--train-subset"):
        if flag in flags:
            command += [flag, flags[flag]]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"plain_optuna.py exited {result.returncode}:\n{result.stderr[-3000:]}")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    trials = [{"number": t["number"], "state": t["state"], "value": t["value"],
               "end_s": t["end_s"], "arch": "cnn", "seconds": t["end_s"] - t["start_s"]}
              for t in record["trials"]]
    return {"wall_s": record["wall_s"], "best_val": record["best_val"],
            "test_accuracy": record["test_accuracy"], "trials": trials}


def time_to_best(trials: list[dict]) -> float | None:
    """Seconds from the run's start until its best complete value so far first came within
    :data:`TOLERANCE` of the final best."""
    best, curve = None, []
    for t in sorted(trials, key=lambda t: t["end_s"]):
        if t["state"] == "COMPLETE" and t["value"] is not None:
            best = t["value"] if best is None else max(best, t["value"])
        curve.append((t["end_s"], best))
    finals = [b for _, b in curve if b is not None]
    if not finals:
        return None
    return next(s for s, b in curve if b is not None and b >= finals[-1] - TOLERANCE)


def first_trial(trials: list[dict]) -> dict | None:
    """The first finished trial (its end since the run's start, and value)."""
    done = sorted(trials, key=lambda t: t["end_s"])
    return done[0] if done else None


def summarize(records: list[dict]) -> list[dict]:
    rows = []
    for budget in dict.fromkeys(r["budget"] for r in records):
        plain = [r for r in records if r["budget"] == budget and r["method"] == "plain"]
        plain_wall = statistics.median(r["wall_s"] for r in plain) if plain else None
        plain_test = statistics.median(r["test_accuracy"] for r in plain) if plain else None
        for method in dict.fromkeys(r["method"] for r in records):
            runs = [r for r in records if r["budget"] == budget and r["method"] == method]
            if not runs:
                continue
            wall = statistics.median(r["wall_s"] for r in runs)
            test = statistics.median(r["test_accuracy"] for r in runs)
            rows.append({
                "budget": budget, "method": method, "seeds": len(runs),
                "wall_s": round(wall, 1),
                "wall_vs_plain": round(wall / plain_wall, 2) if plain_wall else None,
                "best_val": round(statistics.median(r["best_val"] for r in runs), 4),
                "test_accuracy": round(test, 4),
                "test_vs_plain_points": (round(100 * (test - plain_test), 2)
                                         if plain_test is not None else None),
                "time_to_best_s": round(statistics.median(r["time_to_best_s"] for r in runs), 1),
                "first_trial_end_s": round(statistics.median(
                    r["first_trial_end_s"] for r in runs), 1),
                "first_trial_val": round(statistics.median(
                    r["first_trial_val"] for r in runs), 4),
                "per_seed_test": " / ".join(f"{r['test_accuracy']:.4f}" for r in runs),
            })
    return rows


def anytime_png(records: list[dict], path: Path) -> None:
    """Best validation accuracy so far against seconds since the run started: one panel per
    budget, one line per run, coloured by method."""
    from matplotlib.figure import Figure

    budgets = list(dict.fromkeys(r["budget"] for r in records))
    fig = Figure(figsize=(6.5 * len(budgets), 4.5), dpi=100)
    axes = fig.subplots(1, len(budgets), squeeze=False)[0]
    palette = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]
    colours = dict(zip(dict.fromkeys(r["method"] for r in records), palette))
    for ax, budget in zip(axes, budgets):
        for record in (r for r in records if r["budget"] == budget):
            best, xs, ys = None, [0.0], [float("nan")]
            for t in sorted(record["trials"], key=lambda t: t["end_s"]):
                if t["state"] == "COMPLETE" and t["value"] is not None:
                    best = t["value"] if best is None else max(best, t["value"])
                xs.append(t["end_s"])
                ys.append(best if best is not None else float("nan"))
            xs.append(record["wall_s"])
            ys.append(ys[-1])
            ax.step(xs, ys, where="post", color=colours[record["method"]], alpha=0.8,
                    label=record["method"] if record["seed"] == record["first_seed"] else None)
            ax.plot([record["wall_s"]], [ys[-1]], "|", color=colours[record["method"]],
                    markersize=10)
        ax.set(title=f"budget {budget}: {' '.join(BUDGETS[budget])}", xlabel="seconds since "
               "the run started (| = the run ended)", ylabel="best validation accuracy so far")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        lows = [y for r in records if r["budget"] == budget for y in
                [r["best_val"]] if y is not None]
        if lows:
            ax.set_ylim(min(lows) - 0.06, max(lows) + 0.01)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser)
    parser.add_argument("--budget", action="append", choices=list(BUDGETS),
                        help="budgets to run (default: small and large on a CPU, gpu on CUDA)")
    parser.add_argument("--seed", action="append", type=int, help="seeds (default: 0 1 2)")
    parser.add_argument("--method", action="append", choices=METHODS,
                        help="methods (default: all three)")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write every record as JSON lines here")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SPEC",
                        help="also compare this spec file as method NAME (design studies)")
    args = parser.parse_args()
    for variant in args.variant:
        name, _, path = variant.partition("=")
        VARIANTS[name] = Path(path).resolve()
    device = resolve_device(args.device)
    budgets = args.budget or (["gpu"] if device.type == "cuda" else ["small", "large"])
    seeds = args.seed or [0, 1, 2]
    methods = (args.method or ([] if VARIANTS else list(METHODS))) + list(VARIANTS)
    records = []
    for budget in budgets:
        for i, seed in enumerate(seeds):
            order = methods[i % len(methods):] + methods[:i % len(methods)]
            for method in order:
                log(f"{budget} seed {seed}: {method} ...")
                run = (run_plain if method == "plain" else
                       lambda b, s, d, m=method: run_hpsearch(m, b, s, d))(
                    BUDGETS[budget], seed, device.type)
                first = first_trial(run["trials"])
                record = {"benchmark": "search_efficiency", "budget": budget, "method": method,
                          "seed": seed, "first_seed": seeds[0], **run,
                          "time_to_best_s": time_to_best(run["trials"]),
                          "first_trial_end_s": first["end_s"] if first else None,
                          "first_trial_val": first["value"] if first else None}
                emit({k: v for k, v in record.items() if k != "trials"})
                records.append(record)
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(record) + "\n")
    rows = summarize(records)
    for row in rows:
        emit({"benchmark": "search_efficiency", "summary": True, **row})
    if args.write_docs:
        png = args.docs.parent / "search_efficiency.png"
        anytime_png(records, png)
        body = markdown_table(rows, {
            "budget": "budget", "method": "method", "seeds": "seeds",
            "wall_s": "wall (s)", "wall_vs_plain": "wall / plain",
            "best_val": "best val", "test_accuracy": "champion test",
            "test_vs_plain_points": "test - plain (points)",
            "time_to_best_s": "s to within 0.5 points of final best",
            "first_trial_end_s": "first trial done (s)",
            "first_trial_val": "first trial val", "per_seed_test": "test per seed"})
        body += ("\n\nMedians over the seeds. Every run is a fresh process in a fresh "
                 "directory, timed from its start to its exit (imports, store creation, data, "
                 "trials, test evaluation, registration). Budgets: "
                 + "; ".join(f"{b}: `{' '.join(BUDGETS[b])}`" for b in budgets)
                 + ". hpsearch: the built-in Fashion-MNIST study; random: the same space and "
                 "pruner, `sampler: random`, no enqueued trials; plain: "
                 "`benchmarks/plain_optuna.py` (TPE + median pruner over a CNN family, "
                 "torchvision DataLoader, Adam, no augmentation), the kind of script users "
                 "write today.\n\n![Anytime curves](search_efficiency.png)\n")
        write_section(args.docs, "search_efficiency", render_section(
            "search_efficiency", title="Search efficiency: best model per minute of compute",
            machine=machine_info(device), body=body))


if __name__ == "__main__":
    main()
