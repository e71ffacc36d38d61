"""What a study run is asked to do (:class:`RunConfig`) and what it did (:class:`StudySummary`).
Plain data: no torch, Optuna or MLflow."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpsearch.defaults import DEFAULT_STORAGE
from hpsearch.studies import StudySpec

if TYPE_CHECKING:
    from hpsearch.serving.registration import Registration

__all__ = ["CPU_BUDGET", "DEFAULT_STORAGE", "RunConfig", "StudySummary", "cpu_budget_command"]

# The README's budget for a CPU ("A smaller run for a CPU"): 3 min 7 s on a 2-core machine
# with the built-in Fashion-MNIST study.
CPU_BUDGET = {"trials": 20, "epochs": 3, "train_subset": 10_000}


@dataclass(frozen=True)
class RunConfig:
    """Everything ``hpsearch run`` resolved from its options.

    Attributes:
        spec: the study spec, CLI overrides applied.
        trials: target number of finished trials in the study (>= 1).
        study_name: Optuna study name; also the MLflow experiment name.
        register_name: registered model name for the champion.
        storage: Optuna storage URL.
        tracking_uri: MLflow tracking URI, or None for ``MLFLOW_TRACKING_URI`` / default.
        timeout_s: stop starting new trials after this many seconds, or None.
        train_subset: train on only this many training images, or None for all.
        data_dir: where to look for (and download) the data set, or None.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seeds the sampler, the validation split and each trial's torch RNG.
        max_consecutive_failures: stop the study after this many trials in a row failed
            with an error (not counting out-of-memory failures or interruptions).
        heartbeat_interval_s: seconds between a running trial's heartbeats; a trial silent
            for 3 intervals is taken for dead (its worker was killed) and retried.
        jobs: trials run at once, each in its own worker process (>= 1), or None for the
            device's default (1 on a CPU).
        compile: train through ``torch.compile`` (compiled once per trial).
        compile_mode: ``torch.compile``'s mode with ``compile``: ``default``,
            ``reduce-overhead`` (CUDA graphs through cudagraph trees) or ``max-autotune``.
        cuda_graphs: on CUDA, capture each trial's whole training step in a CUDA graph
            and replay it per batch (eager where capture is not possible).
        deterministic: bit-identical reruns on the same hardware and software
            (``torch.use_deterministic_algorithms``, no cuDNN benchmarking); slower.
        checkpoint_dir: where running trials save their training's state after every
            epoch (``STUDY/trial-N/`` under it), or None for ``hpsearch-checkpoints``
            beside a sqlite storage's file, else in the working directory.
        cache_dir: own images: where decoded caches live, or None for the default
            (``$HPSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/hpsearch/cache``).
    """

    spec: StudySpec
    trials: int
    study_name: str
    register_name: str
    storage: str = DEFAULT_STORAGE
    tracking_uri: str | None = None
    timeout_s: float | None = None
    train_subset: int | None = None
    data_dir: str | None = None
    device: str = "auto"
    seed: int = 0
    max_consecutive_failures: int = 5
    heartbeat_interval_s: int = 10
    jobs: int | None = 1
    compile: bool = False
    compile_mode: str = "default"
    cuda_graphs: bool = False
    deterministic: bool = False
    checkpoint_dir: str | None = None
    cache_dir: str | None = None


@dataclass
class StudySummary:
    """What a study run produced, for the closing summary.

    Attributes:
        study_name: the Optuna study (and MLflow experiment).
        tracking_uri: the MLflow tracking store its runs went to.
        experiment_id: the study's MLflow experiment there.
        metric: the objective's metric (``val_accuracy`` or ``val_loss``).
        n_complete, n_pruned, n_failed, n_interrupted: the study's trials by state after
            this run (interrupted: stopped by Ctrl-C or SIGTERM, run again on resume).
        best_value: the best trial's value of ``metric``, or None if none completed.
        best_trial: its number; best_params: its hyperparameters.
        registration: the champion registered by this run (or found registered), or None.
        reached_best: ``(seconds since the study started, trial number)`` when the best
            value so far first came within 0.5 points (0.005) of the final best.
        wall_seconds: this run's wall time.
        stop_reason: why the run stopped before the target, or None.
        exit_code: 0; 1 when trials kept failing (``--max-failures``); 128 + the signal
            number when interrupted. (A full disk raises
            :class:`~hpsearch.errors.DiskFull` instead: exit code 74.)
    """

    study_name: str
    tracking_uri: str
    metric: str = "val_accuracy"
    experiment_id: str | None = None
    n_complete: int = 0
    n_pruned: int = 0
    n_failed: int = 0
    n_interrupted: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    registration: Registration | None = None
    reached_best: tuple[float, int] | None = None
    wall_seconds: float = 0.0
    stop_reason: str | None = None
    exit_code: int = 0


def cpu_budget_command(config: RunConfig) -> str | None:
    """The README's budget for a CPU as a command for ``config``'s data set or spec, in a
    study of its own (``STUDY-cpu``: a study's epochs and training images define it), or
    None when ``config``'s budget is not larger."""
    spec, budget = config.spec, CPU_BUDGET
    if (config.trials <= budget["trials"] and spec.epochs <= budget["epochs"]
            and config.train_subset is not None
            and config.train_subset <= budget["train_subset"]):
        return None
    source = (f"--dataset {shlex.quote(spec.dataset)}" if spec.source.startswith("built-in spec ")
              else f"--spec {shlex.quote(spec.source)}")
    if spec.images is not None and spec.images.image_size is not None:
        source += f" --image-size {spec.images.image_size}"
    data_dir = f" --data-dir {shlex.quote(config.data_dir)}" if config.data_dir else ""
    if config.cache_dir:
        data_dir += f" --cache-dir {shlex.quote(config.cache_dir)}"
    return (f"hpsearch run --trials {budget['trials']} --epochs {budget['epochs']} "
            f"--train-subset {budget['train_subset']} {source}{data_dir} "
            f"--study-name {shlex.quote(config.study_name + '-cpu')}")
