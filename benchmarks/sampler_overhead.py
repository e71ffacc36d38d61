"""Seconds the sampler and the pruner take per trial as a study grows to hundreds of trials.

Drives the built-in study's own sampler, pruner, search space and enqueued trials (the
Fashion-MNIST spec unless ``--spec``) through a sqlite ``RDBStorage`` as ``hpsearch run``
uses (less its heartbeat thread, which only ``Study.optimize`` runs), with a synthetic
objective in place of training: each trial reports ``epochs`` made-up validation accuracies
(a curve towards a value that depends on the architecture, learning rate and dropout) and a
seconds-per-epoch cost, so the cost-aware pruner has what it reads in a real study. No
torch training, no data, no MLflow: what is timed is Optuna's share of a trial alone::

    python benchmarks/sampler_overhead.py --trials 300 --write-docs

Prints one JSON line per window of ``--window`` trials (``ask_ms``: ``study.ask`` plus
drawing the hyperparameters, the sampler's time; ``prune_ms``: all of one trial's
``report`` + ``should_prune`` calls, the pruner's time; ``tell_ms``), means over the window.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import torch
from _common import emit, machine_info, markdown_table, render_section, write_section

from hpsearch.studies import load_builtin_spec, load_spec
from hpsearch.studies.components import build_pruner, build_sampler

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCH_QUALITY = {"lenet": 0.89, "vgg": 0.90, "cnn": 0.86, "mlp": 0.86, "resnet": 0.88}
ARCH_SECONDS = {"lenet": 4.0, "vgg": 10.0, "cnn": 2.0, "mlp": 1.0, "resnet": 40.0}


def synthetic_curve(params: dict, epochs: int, rng: np.random.Generator) -> list[float]:
    """Made-up validation accuracies per epoch: best near lr 5e-3, hurt by dropout."""
    final = (ARCH_QUALITY.get(params["arch"], 0.85)
             - 0.02 * abs(math.log10(params["lr"] / 5e-3)) - 0.05 * params.get("dropout", 0.0))
    noise = rng.normal(0.0, 0.005)
    return [final - 0.15 * math.exp(-epoch) + noise for epoch in range(epochs)]


def run(spec, trials: int, window: int, seed: int) -> list[dict]:
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sampler-overhead-") as tmp, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}/hpsearch.db")
        study = optuna.create_study(
            storage=storage, study_name="overhead", direction=spec.direction,
            sampler=build_sampler(dict(spec.sampler), seed=seed),
            pruner=build_pruner(dict(spec.pruner), max_epochs=spec.epochs))
        for params in spec.enqueued_params():
            study.enqueue_trial(params, skip_if_exists=True)
        noise = np.random.default_rng(seed)
        ask, prune, tell, pruned = [], [], [], 0
        for number in range(trials):
            start = time.perf_counter()
            trial = study.ask()
            params = spec.sample(trial)
            ask.append(time.perf_counter() - start)
            curve = synthetic_curve(params, spec.epochs, noise)
            cost = ARCH_SECONDS.get(params["arch"], 2.0) * params["batch_size"] / 128
            start, state = time.perf_counter(), optuna.trial.TrialState.COMPLETE
            for epoch, value in enumerate(curve):
                trial.set_user_attr("cost", {"seconds_per_epoch": cost})
                trial.report(value, epoch)
                if trial.should_prune():
                    state = optuna.trial.TrialState.PRUNED
                    break
            prune.append(time.perf_counter() - start)
            start = time.perf_counter()
            study.tell(trial, None if state == optuna.trial.TrialState.PRUNED else curve[-1],
                       state=state)
            tell.append(time.perf_counter() - start)
            pruned += state == optuna.trial.TrialState.PRUNED
            if (number + 1) % window == 0:
                record = {"benchmark": "sampler_overhead", "trials": number + 1,
                          "ask_ms": 1e3 * statistics.mean(ask[-window:]),
                          "prune_ms": 1e3 * statistics.mean(prune[-window:]),
                          "tell_ms": 1e3 * statistics.mean(tell[-window:]),
                          "pruned_share": pruned / (number + 1)}
                emit(record)
                records.append(record)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="fashion_mnist",
                        help="a built-in study name or a spec file (default: fashion_mnist)")
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--window", type=int, default=50, help="trials per printed line")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-docs", action="store_true",
                        help="regenerate this benchmark's section of --docs")
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = (load_spec(args.spec) if Path(args.spec).is_file()
            else load_builtin_spec(args.spec))
    records = run(spec, args.trials, args.window, args.seed)
    if args.write_docs:
        body = markdown_table(
            [{**r, "trials": f"{r['trials'] - args.window + 1}-{r['trials']}"}
             for r in records],
            {"trials": "trials", "ask_ms": "ask + draw (ms)",
             "prune_ms": f"{spec.epochs} reports + should_prune (ms)", "tell_ms": "tell (ms)",
             "pruned_share": "pruned so far"})
        body += (f"\n\nMeans per trial over each window, the `{args.spec}` study's sampler, "
                 "pruner and space on a sqlite `RDBStorage` as `hpsearch run` uses, with "
                 "a synthetic objective (no training, no MLflow), so this is Optuna's share "
                 "of each trial alone.\n")
        write_section(args.docs, "sampler_overhead", render_section(
            "sampler_overhead", title="Sampler and pruner time per trial at hundreds of trials",
            machine=machine_info(torch.device("cpu")), body=body))


if __name__ == "__main__":
    main()
