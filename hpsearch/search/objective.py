"""The Optuna objective: sample hyperparameters, train with ``fit()``, report, prune, track.

This is the only module where a trial, the training loop and the MLflow run meet: the loop's
``on_epoch`` callback becomes ``trial.report`` / ``trial.should_prune`` /
``raise optuna.TrialPruned()`` and one ``log_batch`` per epoch.
"""

from __future__ import annotations

import gc
import math
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from hpsearch.data_utils import ArraySplit, DatasetInfo
from hpsearch.models import build_network
from hpsearch.params import TrialParams
from hpsearch.search.progress import Reporter
from hpsearch.studies import StudySpec
from hpsearch.tracking.report import log_prediction_grid
from hpsearch.tracking.runs import StudyTracker, TrialRun
from hpsearch.training.compiled import compile_network
from hpsearch.training.cost import count_parameters, macs_per_image
from hpsearch.training.cuda_graphs import build_train_step
from hpsearch.training.device import autocast_dtype
from hpsearch.training.loader import make_loader
from hpsearch.training.loop import EpochResult, fit
from hpsearch.training.optim import build_optimizer

__all__ = ["Failure", "Objective", "TrialCost", "TrialData", "classify_failure"]


@dataclass(frozen=True)
class TrialData:
    """The splits every trial of a study trains and validates on (uint8, (N, C, H, W))."""

    info: DatasetInfo
    train: ArraySplit
    val: ArraySplit


class TrialCost:
    """What a trial has cost so far, kept in its ``cost`` user attribute (the trials table,
    ``hpsearch show`` and the cost-aware pruner read it) and logged on its run.

    Attributes:
        parameters: trainable parameters of the network.
        macs_per_image: multiply-accumulates of one image's forward pass.
        epochs: epochs trained so far.
        seconds: wall seconds since training started (training, validation, logging).
        train_seconds: seconds of the training part of the epochs.
        images: training images processed.
    """

    def __init__(self, *, parameters: int, macs_per_image: int) -> None:
        self.parameters, self.macs_per_image = parameters, macs_per_image
        self.epochs, self.seconds, self.train_seconds, self.images = 0, 0.0, 0.0, 0
        self._started = time.perf_counter()

    def start(self) -> None:
        self._started = time.perf_counter()

    def add_epoch(self, result: EpochResult) -> None:
        self.epochs = result.epoch
        self.seconds = time.perf_counter() - self._started
        self.train_seconds += result.epoch_seconds
        self.images += round(result.images_per_second * result.epoch_seconds)

    def to_dict(self) -> dict[str, float]:
        """The user attribute: also ``seconds_per_epoch`` and training ``images_per_second``."""
        return {
            "parameters": self.parameters,
            "macs_per_image": self.macs_per_image,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 3),
            "seconds_per_epoch": round(self.seconds / self.epochs, 3) if self.epochs else None,
            "train_seconds": round(self.train_seconds, 3),
            "images_per_second": (round(self.images / self.train_seconds, 1)
                                  if self.train_seconds else None),
        }


class Objective:
    """Callable objective for ``study.optimize``.

    Args:
        spec: the study spec (search space, epochs, metric).
        data: training and validation splits.
        device: where trials train.
        tracker: the study's MLflow tracker with an open parent run.
        reporter: progress display.
        seed: base seed; trial ``n`` seeds torch with ``seed + n``.
        compile_model: train through ``torch.compile(model)``; its compile time lands in
            the first epoch's seconds (``epoch_seconds`` of epoch 1 vs the others).
        compile_mode: ``torch.compile``'s mode (``COMPILE_MODES``).
        cuda_graphs: capture the training step in a CUDA graph where possible; how each
            trial's step ran is its run's tag ``hpsearch.step_mode``.
    """

    def __init__(self, *, spec: StudySpec, data: TrialData, device: torch.device,
                 tracker: StudyTracker, reporter: Reporter, seed: int,
                 compile_model: bool = False, compile_mode: str = "default",
                 cuda_graphs: bool = False) -> None:
        self.spec, self.data, self.device = spec, data, device
        self.tracker, self.reporter, self.seed = tracker, reporter, seed
        self.compile_model, self.compile_mode = compile_model, compile_mode
        self.cuda_graphs = cuda_graphs
        self.amp_dtype = autocast_dtype(device)

    def __call__(self, trial: optuna.Trial) -> float:
        history: list[EpochResult] = []
        started: dict[str, Any] = {}  # the trial's params and run, once they exist
        try:
            return self._trial(trial, history, started)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("prune_reason", str(exc))
            diverged = trial.user_attrs.get("diverged_epoch")
            if not diverged:  # a diverged model's predictions are NaN: nothing to show
                self._log_mistakes(started["run"], history)
            extra = {"hpsearch.diverged_epoch": str(diverged)} if diverged else {}
            started["run"].log_cost(trial.user_attrs["cost"])
            started["run"].finish("PRUNED", history, self.data.info.class_names,
                                  reason=str(exc), tags=extra)
            raise
        except BaseException as exc:
            self._record_failure(trial, exc, started, history)
            raise
        finally:
            trial.set_user_attr("epochs_run", len(history))

    def _trial(self, trial: optuna.Trial, history: list[EpochResult],
               started: dict[str, Any]) -> float:
        """Sample, open the run, train, log; fills ``started`` as things come to exist."""
        params = started["params"] = TrialParams.from_dict(self.spec.sample(trial))
        trial.set_user_attr("hyperparameters", params.to_dict())
        run = started["run"] = self.tracker.trial_run(trial.number, params.to_dict(),
                                                      retry_of=_retry_of(trial))
        trial.set_user_attr("mlflow_run_id", run.run_id)
        model, value = self._train(trial, params, run, history)
        run.log_cost(trial.user_attrs["cost"])
        self._log_mistakes(run, history)
        best_so_far = self._is_best_so_far(trial.study, value)
        if best_so_far:
            run.log_checkpoint(model)
            trial.set_user_attr("checkpoint", True)
        run.finish("COMPLETE", history, self.data.info.class_names, value=value,
                   tags={"hpsearch.best_so_far": str(best_so_far).lower()})
        return value

    def _record_failure(self, trial: optuna.Trial, exc: BaseException,
                        started: dict[str, Any], history: list[EpochResult]) -> None:
        """Say why the trial failed, whatever raised (sampling, building, training,
        logging): on the trial first, then on its run if it has one. A failure to log the
        failure to MLflow must not hide the original one."""
        failure = classify_failure(exc, started.get("params"))
        trial.set_user_attr("fail_reason", failure.reason)
        trial.set_user_attr("failure_kind", failure.kind)
        run = started.get("run")
        if run is not None:
            try:
                if failure.kind != "interrupted":
                    run.client.log_text(run.run_id, traceback.format_exc(), "traceback.txt")
                run.finish("FAIL", history, self.data.info.class_names, reason=failure.reason,
                           status=failure.run_status,
                           tags={"hpsearch.failure_kind": failure.kind})
            except Exception as logging_error:  # the store is down, say: keep the reason
                self.reporter.say(f"trial {trial.number}: its failure was not logged to "
                                  f"MLflow ({type(logging_error).__name__}: {logging_error})")
        if failure.kind == "out_of_memory":
            _release_memory(exc, self.device)

    def _train(self, trial: optuna.Trial, params: TrialParams, run: TrialRun,
               history: list[EpochResult]) -> tuple[torch.nn.Module, float]:
        seed = self.seed + trial.number
        torch.manual_seed(seed)
        info, device = self.data.info, self.device
        model = build_network(params, info).to(device, memory_format=torch.channels_last)
        cost = TrialCost(parameters=count_parameters(model),
                         macs_per_image=macs_per_image(params, info))
        trial.set_user_attr("cost", cost.to_dict())
        train = make_loader(self.data.train, info, device, batch_size=params.batch_size,
                            train=True, augment=self.spec.augment, seed=seed)
        val = make_loader(self.data.val, info, device)
        optimizer = build_optimizer(model, name=params.optimizer, lr=params.lr,
                                    weight_decay=params.weight_decay)
        # The compiled wrapper shares the model's parameters; checkpoints use the model.
        network = (compile_network(model, mode=self.compile_mode) if self.compile_model
                   else model)
        # One-cycle schedule over the most epochs a trial may run, so a trial the pruner
        # keeps running sees the same schedule as one that started fresh.
        step = build_train_step(network, optimizer, max_lr=params.lr,
                                total_steps=self.spec.epochs * len(train), device=device,
                                amp_dtype=self.amp_dtype, label_smoothing=params.label_smoothing,
                                cuda_graphs=self.cuda_graphs, compiled=self.compile_model)
        logged_mode = [""]  # the step's mode as last logged; capture is in epoch 1

        def on_epoch(result: EpochResult) -> None:
            history.append(result)
            if step.mode != logged_mode[0]:
                logged_mode[0] = step.mode
                self._log_step_mode(trial, run, step.mode)
            cost.add_epoch(result)
            # Before the report: the pruner weighs what the trial costs (CostAwarePruner).
            trial.set_user_attr("cost", cost.to_dict())
            run.log_epoch(result)
            self.reporter.epoch(trial.number, result, self.spec.epochs)
            value = result.metrics()[self.spec.metric]
            if not (math.isfinite(result.train_loss) and math.isfinite(value)):
                # A diverged configuration is a result of the search, not a bug: prune it,
                # and report nothing, so no NaN reaches the sampler or the best value.
                trial.set_user_attr("diverged_epoch", result.epoch)
                raise optuna.TrialPruned(
                    f"diverged at epoch {result.epoch}: train_loss {result.train_loss}, "
                    f"{self.spec.metric} {value}")
            trial.report(value, result.epoch)
            # After the last epoch pruning saves nothing and would discard a finished result.
            if result.epoch < self.spec.epochs and trial.should_prune():
                why = getattr(trial.study.pruner, "reason", lambda number: None)(trial.number)
                raise optuna.TrialPruned(
                    f"pruned at epoch {result.epoch}: {self.spec.metric} {value:.4f}"
                    + (f"; {why}" if why else ""))

        cost.start()
        fit(network, train, val, epochs=self.spec.epochs, train_step=step,
            num_classes=info.num_classes, device=device, amp_dtype=self.amp_dtype,
            on_epoch=on_epoch, on_batch=lambda epoch, done, total: self.reporter.batch(
                trial.number, epoch, self.spec.epochs, done, total, params.batch_size))
        value = history[-1].metrics()[self.spec.metric]
        if not math.isfinite(value):
            raise ValueError(f"{self.spec.metric} is {value} after the last epoch")
        return model, value

    def _log_step_mode(self, trial: optuna.Trial, run: TrialRun, mode: str) -> None:
        """How the trial's training step runs (CUDA graph or eager, and why): a user
        attribute, the run's tag ``hpsearch.step_mode``, and a line when graphs were asked
        for."""
        trial.set_user_attr("step_mode", mode)
        run.client.set_tag(run.run_id, "hpsearch.step_mode", mode)
        if self.cuda_graphs:
            self.reporter.say(f"  trial {trial.number:4d}  training step: {mode}")

    def _log_mistakes(self, run: TrialRun, history: list[EpochResult]) -> None:
        """The trial's most confident validation mistakes as an image grid, from the last
        epoch's validation predictions (no extra pass over the validation split)."""
        if not history or history[-1].val.predicted is None:
            return
        val, last = self.data.val, history[-1].val
        log_prediction_grid(run.client, run.run_id, val.images, val.labels, last.predicted,
                            last.confidence, self.data.info.class_names,
                            artifact_file="misclassified.png",
                            title="validation mistakes, most confident first",
                            mistakes_only=True)

    def _is_best_so_far(self, study: optuna.Study, value: float) -> bool:
        """Whether ``value`` ties or beats every finished trial: only such a trial can end
        up the study's best, so only its weights are kept."""
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not done:
            return True
        best = max if self.spec.direction == "maximize" else min
        return best(value, best(t.value for t in done)) == value


def _retry_of(trial: optuna.Trial) -> int | None:
    """The number of the trial this one retries (its worker died), from Optuna's retry
    history; ``optuna.Trial`` shows no system attributes, its frozen record does."""
    running = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    frozen = next((t for t in running if t.number == trial.number), None)
    history = frozen.system_attrs.get("retry_history") if frozen else None
    return history[-1] if history else None


@dataclass(frozen=True)
class Failure:
    """Why a trial failed.

    Attributes:
        kind: ``interrupted`` (SIGINT/SIGTERM), ``out_of_memory`` or ``error`` (anything
            else: a bug, counted towards the study's consecutive-failure limit).
        reason: one line for people: the progress display, tags and the summary.
        run_status: the MLflow run status: KILLED when interrupted, else FAILED.
    """

    kind: str
    reason: str
    run_status: str


def classify_failure(exc: BaseException, params: TrialParams | None) -> Failure:
    """Classify the exception that ended a trial trained with ``params`` (None: it failed
    before its parameters were drawn)."""
    if isinstance(exc, KeyboardInterrupt):
        signum = getattr(exc, "signum", signal.SIGINT)
        return Failure("interrupted", f"interrupted by {signal.Signals(signum).name}", "KILLED")
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    if _is_out_of_memory(exc) and params is not None:
        reason = (f"out of memory with batch_size {params.batch_size} and arch "
                  f"{params.arch} (depth {params.depth}, width {params.width}): {first_line}")
        return Failure("out_of_memory", reason, "FAILED")
    return Failure("error", f"{type(exc).__name__}: {first_line}", "FAILED")


def _is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or an allocator's RuntimeError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        words in message for words in ("out of memory", "can't allocate memory",
                                       "failed to allocate"))


def _release_memory(exc: BaseException, device: torch.device) -> None:
    """Drop the failed trial's model and optimizer (held by the traceback's frames) and
    return the freed blocks to the device, so the next trial starts with the memory free."""
    traceback.clear_frames(exc.__traceback__)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
