"""The Optuna objective: sample hyperparameters, train with ``fit()``, report, prune, track.

This is the only module where a trial, the training loop and the MLflow run meet. A trial's
training is a :class:`TrainingSession`, built once per trial (network, loaders, training
step, cost); the loop's ``on_epoch`` callback is an :class:`EpochReporter`, which turns each
epoch into ``trial.report`` / ``trial.should_prune`` / ``raise optuna.TrialPruned()``, one
``log_batch`` and a checkpoint of the training's state. A retried trial (interrupted, or its
worker died) continues from the checkpoint of the trial it retries
(:mod:`~hpsearch.search.checkpoints`).
"""

from __future__ import annotations

import gc
import math
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from hpsearch._testhooks import pause
from hpsearch.data_utils import ArraySplit, DatasetInfo
from hpsearch.models import build_network
from hpsearch.params import TrialParams
from hpsearch.search.checkpoints import CheckpointStore, TrialCheckpoint
from hpsearch.search.progress import Reporter
from hpsearch.studies import StudySpec
from hpsearch.tracking.report import log_prediction_grid
from hpsearch.tracking.runs import StudyTracker, TrialRun
from hpsearch.training.checkpoint import restore_training_state, training_state
from hpsearch.training.compiled import compile_network
from hpsearch.training.cost import count_parameters, macs_per_image
from hpsearch.training.cuda_graphs import build_train_step
from hpsearch.training.device import autocast_dtype
from hpsearch.training.loader import DeviceLoader, make_loader
from hpsearch.training.loop import EpochResult, fit
from hpsearch.training.optim import build_optimizer
from hpsearch.training.step import TrainStep

__all__ = ["EpochReporter", "Failure", "Objective", "TrainingSession", "TrialCost",
           "TrialData", "classify_failure"]

# Called after each epoch a process trains: (trial number, epoch, wall seconds of the epoch).
EpochTimer = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrialData:
    """The splits every trial of a study trains and validates on (uint8, (N, C, H, W))."""

    info: DatasetInfo
    train: ArraySplit
    val: ArraySplit


class TrialCost:
    """What a trial has cost so far, kept in its ``cost`` user attribute (the trials table,
    ``hpsearch show`` and the cost-aware pruner read it) and logged on its run.

    A retried trial that continues from a checkpoint continues its predecessor's cost: the
    cost is that of the whole training its result comes from.

    Attributes:
        parameters: trainable parameters of the network.
        macs_per_image: multiply-accumulates of one image's forward pass.
        epochs: epochs trained so far.
        seconds: wall seconds since training started (training, validation, logging).
        train_seconds: seconds of the training part of the epochs.
        images: training images processed.
        checkpoint_seconds: seconds spent saving the training's state after epochs.
    """

    def __init__(self, *, parameters: int, macs_per_image: int) -> None:
        self.parameters, self.macs_per_image = parameters, macs_per_image
        self.epochs, self.seconds, self.train_seconds, self.images = 0, 0.0, 0.0, 0
        self.checkpoint_seconds = 0.0
        self._earlier_seconds = 0.0  # the wall seconds of a predecessor's epochs
        self._started = time.perf_counter()

    def start(self) -> None:
        self._started = time.perf_counter()

    def add_epoch(self, result: EpochResult) -> None:
        self.epochs = result.epoch
        self.seconds = self._earlier_seconds + time.perf_counter() - self._started
        self.train_seconds += result.epoch_seconds
        self.images += round(result.images_per_second * result.epoch_seconds)

    def state(self) -> dict[str, float]:
        """The counts, unrounded, for a checkpoint."""
        return {"epochs": self.epochs, "seconds": self.seconds,
                "train_seconds": self.train_seconds, "images": self.images,
                "checkpoint_seconds": self.checkpoint_seconds}

    def restore(self, state: dict[str, float]) -> None:
        """Continue from a :meth:`state` (the predecessor's epochs count as this trial's)."""
        self.epochs, self.seconds = int(state["epochs"]), float(state["seconds"])
        self.train_seconds, self.images = float(state["train_seconds"]), int(state["images"])
        self.checkpoint_seconds = float(state["checkpoint_seconds"])
        self._earlier_seconds = self.seconds

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
            "checkpoint_seconds": round(self.checkpoint_seconds, 4),
        }


class TrainingSession:
    """One trial's training, built once per trial by :meth:`build`: the network, its
    loaders, its training step (optimizer, one-cycle schedule) and what it has cost.
    :meth:`fit` trains it; :meth:`state_dict` and :meth:`load_state_dict` save and restore
    it between epochs.

    Attributes:
        params: the trial's hyperparameters.
        info: the data set.
        model: the network; checkpoints and logged weights use it.
        network: what trains: ``model`` or its ``torch.compile`` wrapper (same parameters).
        train, val: the device-resident training and validation loaders.
        step: the training step.
        cost: what the trial has cost so far.
        total_steps: optimizer steps the one-cycle schedule spans (all epochs).
        device: where it trains; amp_dtype: its autocast dtype or None.
    """

    def __init__(self, *, params: TrialParams, info: DatasetInfo, model: torch.nn.Module,
                 network: torch.nn.Module, train: DeviceLoader, val: DeviceLoader,
                 step: TrainStep, cost: TrialCost, total_steps: int, device: torch.device,
                 amp_dtype: torch.dtype | None) -> None:
        self.params, self.info, self.model, self.network = params, info, model, network
        self.train, self.val, self.step, self.cost = train, val, step, cost
        self.total_steps, self.device, self.amp_dtype = total_steps, device, amp_dtype

    @classmethod
    def build(cls, params: TrialParams, *, data: TrialData, device: torch.device, seed: int,
              epochs: int, augment: bool, amp_dtype: torch.dtype | None,
              compile_model: bool = False, compile_mode: str = "default",
              cuda_graphs: bool = False) -> TrainingSession:
        """Seed torch with ``seed``, build the network, loaders, optimizer and step.

        Args:
            params: the trial's hyperparameters.
            data: the study's splits.
            device: where to train.
            seed: seeds the weights' initialisation, dropout and the loader's shuffling.
            epochs: most epochs the trial may train (the schedule spans them all).
            augment: random crops (and flips) of the training images.
            amp_dtype: autocast dtype, or None.
            compile_model: train through ``torch.compile``; compile_mode: its mode.
            cuda_graphs: capture the training step in a CUDA graph where possible.
        """
        torch.manual_seed(seed)
        info = data.info
        model = build_network(params, info).to(device, memory_format=torch.channels_last)
        cost = TrialCost(parameters=count_parameters(model),
                         macs_per_image=macs_per_image(params, info))
        train = make_loader(data.train, info, device, batch_size=params.batch_size,
                            train=True, augment=augment, seed=seed)
        val = make_loader(data.val, info, device)
        optimizer = build_optimizer(model, name=params.optimizer, lr=params.lr,
                                    weight_decay=params.weight_decay)
        network = compile_network(model, mode=compile_mode) if compile_model else model
        # One-cycle schedule over the most epochs a trial may run, so a trial the pruner
        # keeps running sees the same schedule as one that started fresh.
        total_steps = epochs * len(train)
        step = build_train_step(network, optimizer, max_lr=params.lr, total_steps=total_steps,
                                device=device, amp_dtype=amp_dtype,
                                label_smoothing=params.label_smoothing,
                                cuda_graphs=cuda_graphs, compiled=compile_model)
        return cls(params=params, info=info, model=model, network=network, train=train,
                   val=val, step=step, cost=cost, total_steps=total_steps, device=device,
                   amp_dtype=amp_dtype)

    def fit(self, *, epochs: int, on_epoch: Callable[[EpochResult], None],
            on_batch: Callable[[int, int, int], None] | None = None,
            start_epoch: int = 1) -> None:
        """Train epochs ``start_epoch`` .. ``epochs`` (see :func:`~hpsearch.training.fit`)."""
        self.cost.start()
        fit(self.network, self.train, self.val, epochs=epochs, train_step=self.step,
            num_classes=self.info.num_classes, device=self.device, amp_dtype=self.amp_dtype,
            on_epoch=on_epoch, on_batch=on_batch, start_epoch=start_epoch)

    def state_dict(self, history: Sequence[EpochResult]) -> dict[str, Any]:
        """The training's state after the last epoch of ``history`` (every epoch so far):
        tensors and plain containers, loadable with ``weights_only=True``."""
        return {"training": training_state(model=self.model, step=self.step,
                                           loader=self.train, device=self.device,
                                           history=history),
                "params": self.params.to_dict(), "total_steps": self.total_steps,
                "cost": self.cost.state()}

    def load_state_dict(self, state: dict[str, Any]) -> list[EpochResult]:
        """Continue from a :meth:`state_dict` of a session with the same hyperparameters.

        Returns:
            The epochs trained before it was saved.

        Raises:
            ValueError: it is of other hyperparameters, another schedule, device or network;
                after a network mismatch the session is half restored: build a new one.
        """
        if state["params"] != self.params.to_dict():
            raise ValueError("it holds other hyperparameters")
        if state["total_steps"] != self.total_steps:
            raise ValueError(f"its schedule spans {state['total_steps']} steps, this "
                             f"trial's {self.total_steps}")
        try:
            history = restore_training_state(state["training"], model=self.model,
                                             step=self.step, loader=self.train,
                                             device=self.device)
        except (KeyError, RuntimeError) as exc:  # torch's load_state_dict: another network
            raise ValueError((str(exc).strip().splitlines() or [""])[0][:200]) from None
        self.cost.restore(state["cost"])
        return history


class EpochReporter:
    """What each epoch of a trial becomes: the ``on_epoch`` callback of its training.

    Per epoch, in this order: the history; the training step's mode (when it is first
    known or changes); the cost (a user attribute, before the report: the cost-aware pruner
    weighs it); the run's metrics; the progress line; the epoch's wall time to
    ``on_timed_epoch``; a diverged epoch pruned with nothing reported; ``trial.report``; the
    pruner's decision; the checkpoint; ``epoch.end`` (a test-only pause).

    Args:
        trial: the Optuna trial.
        run: its MLflow run.
        session: its training.
        spec: the study spec (epochs, metric).
        reporter: progress display.
        say_step_mode: print the step's mode (CUDA graphs were asked for).
        checkpoint: where the training's state is saved after every epoch, or None.
        on_timed_epoch: called as ``(trial number, epoch, wall seconds)`` after each epoch
            this process trained (training, validation, logging), or None.

    Attributes:
        history: every epoch of the trial so far, its predecessor's included once
            :meth:`replay` has reported them.
        step_mode: the training step's mode as last logged ("" before the first epoch).
    """

    def __init__(self, trial: optuna.Trial, run: TrialRun, session: TrainingSession, *,
                 spec: StudySpec, reporter: Reporter, say_step_mode: bool = False,
                 checkpoint: TrialCheckpoint | None = None,
                 on_timed_epoch: EpochTimer | None = None) -> None:
        self.trial, self.run, self.session = trial, run, session
        self.spec, self.reporter, self.say_step_mode = spec, reporter, say_step_mode
        self.checkpoint, self.on_timed_epoch = checkpoint, on_timed_epoch
        self.history: list[EpochResult] = []
        self.step_mode = ""
        self._said_unsaved = False
        self._since = time.perf_counter()

    def replay(self, earlier: Sequence[EpochResult]) -> None:
        """Report the epochs a predecessor trained, as if this trial had trained them: to
        the pruner (``trial.report``: it sees the whole curve) and to the run (its metrics
        at their steps: one continuous curve)."""
        for result in earlier:
            self.history.append(result)
            self.run.log_epoch(result)
            self.trial.report(result.metrics()[self.spec.metric], result.epoch)
        self.trial.set_user_attr("cost", self.session.cost.to_dict())
        self._since = time.perf_counter()

    def __call__(self, result: EpochResult) -> None:
        self.history.append(result)
        if self.session.step.mode != self.step_mode:
            self._log_step_mode(self.session.step.mode)
        cost = self.session.cost
        cost.add_epoch(result)
        self.trial.set_user_attr("cost", cost.to_dict())
        self.run.log_epoch(result)
        self.reporter.epoch(self.trial.number, result, self.spec.epochs)
        now = time.perf_counter()
        if self.on_timed_epoch is not None:
            self.on_timed_epoch(self.trial.number, result.epoch, now - self._since)
        self._since = now
        value = result.metrics()[self.spec.metric]
        if not (math.isfinite(result.train_loss) and math.isfinite(value)):
            # A diverged configuration is a result of the search, not a bug: prune it,
            # and report nothing, so no NaN reaches the sampler or the best value.
            self.trial.set_user_attr("diverged_epoch", result.epoch)
            raise optuna.TrialPruned(
                f"diverged at epoch {result.epoch}: train_loss {result.train_loss}, "
                f"{self.spec.metric} {value}")
        self.trial.report(value, result.epoch)
        # After the last epoch pruning saves nothing and would discard a finished result.
        if result.epoch < self.spec.epochs and self.trial.should_prune():
            why = getattr(self.trial.study.pruner, "reason", lambda number: None)(
                self.trial.number)
            raise optuna.TrialPruned(
                f"pruned at epoch {result.epoch}: {self.spec.metric} {value:.4f}"
                + (f"; {why}" if why else ""))
        # Also after the last epoch: interrupted while its run is finished, the trial's
        # retry completes from here without training again.
        self._save_checkpoint()
        pause("epoch.end")

    def _save_checkpoint(self) -> None:
        """Save the training's state; a failure to save (a full disk) costs only the
        continuation after an interrupt, so it is said once and training goes on."""
        if self.checkpoint is None:
            return
        started = time.perf_counter()
        try:
            self.checkpoint.save(self.session.state_dict(self.history))
        except OSError as exc:
            if not self._said_unsaved:
                self._said_unsaved = True
                self.reporter.say(f"  trial {self.trial.number:4d}  its state was not saved "
                                  f"({exc.strerror or exc}): an interrupt now loses the "
                                  "epochs since the last saved one")
            return
        cost = self.session.cost
        cost.checkpoint_seconds += time.perf_counter() - started
        self.trial.set_user_attr("cost", cost.to_dict())

    def _log_step_mode(self, mode: str) -> None:
        """How the trial's training step runs (CUDA graph or eager, and why): a user
        attribute, the run's tag ``hpsearch.step_mode``, and a line when graphs were asked
        for."""
        self.step_mode = mode
        self.trial.set_user_attr("step_mode", mode)
        self.run.client.set_tag(self.run.run_id, "hpsearch.step_mode", mode)
        if self.say_step_mode:
            self.reporter.say(f"  trial {self.trial.number:4d}  training step: {mode}")


@dataclass
class _Attempt:
    """What exists of a trial so far, for the handlers of its end."""

    checkpoint: TrialCheckpoint | None = None
    params: TrialParams | None = None
    run: TrialRun | None = None
    epochs: EpochReporter | None = None

    @property
    def history(self) -> list[EpochResult]:
        return self.epochs.history if self.epochs is not None else []

    def discard_checkpoint(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.discard()


class Objective:
    """Callable objective for ``study.optimize``.

    Args:
        spec: the study spec (search space, epochs, metric).
        data: training and validation splits.
        device: where trials train.
        tracker: the study's MLflow tracker with an open parent run.
        reporter: progress display.
        seed: base seed; trial ``n`` seeds torch with ``seed + n`` (a retry of trial ``n``
            too, so that a retry that starts over trains as trial ``n`` did).
        compile_model: train through ``torch.compile(model)``; its compile time lands in
            the first epoch's seconds (``epoch_seconds`` of epoch 1 vs the others).
        compile_mode: ``torch.compile``'s mode (``COMPILE_MODES``).
        cuda_graphs: capture the training step in a CUDA graph where possible; how each
            trial's step ran is its run's tag ``hpsearch.step_mode``.
        checkpoints: where trials save their training's state after every epoch, and
            retried trials look for their predecessor's; None: no checkpoints.
        on_timed_epoch: called as ``(trial number, epoch, wall seconds)`` after every epoch
            trained (the study's first estimate on a CPU), or None.
    """

    def __init__(self, *, spec: StudySpec, data: TrialData, device: torch.device,
                 tracker: StudyTracker, reporter: Reporter, seed: int,
                 compile_model: bool = False, compile_mode: str = "default",
                 cuda_graphs: bool = False, checkpoints: CheckpointStore | None = None,
                 on_timed_epoch: EpochTimer | None = None) -> None:
        self.spec, self.data, self.device = spec, data, device
        self.tracker, self.reporter, self.seed = tracker, reporter, seed
        self.compile_model, self.compile_mode = compile_model, compile_mode
        self.cuda_graphs = cuda_graphs
        self.checkpoints, self.on_timed_epoch = checkpoints, on_timed_epoch
        self.amp_dtype = autocast_dtype(device)

    def __call__(self, trial: optuna.Trial) -> float:
        attempt = _Attempt()
        try:
            value = self._trial(trial, attempt)
        except optuna.TrialPruned as exc:
            self._record_pruned(trial, exc, attempt)
            attempt.discard_checkpoint()
            raise
        except BaseException as exc:
            failure = self._record_failure(trial, exc, attempt)
            if failure.kind != "interrupted":  # kept for the retry of an interrupted trial
                attempt.discard_checkpoint()
            raise
        finally:
            trial.set_user_attr("epochs_run", len(attempt.history))
        attempt.discard_checkpoint()
        return value

    def _trial(self, trial: optuna.Trial, attempt: _Attempt) -> float:
        """Sample, open the run, train (continuing a predecessor's training if there is
        one), log; fills ``attempt`` as things come to exist."""
        retried = retry_history(trial)
        if self.checkpoints is not None:
            attempt.checkpoint = TrialCheckpoint(self.checkpoints, trial.number, retried)
        params = attempt.params = TrialParams.from_dict(self.spec.sample(trial))
        trial.set_user_attr("hyperparameters", params.to_dict())
        run = attempt.run = self.tracker.trial_run(trial.number, params.to_dict(),
                                                   retry_of=retried[-1] if retried else None)
        trial.set_user_attr("mlflow_run_id", run.run_id)
        session, earlier = self._session(trial, run, params, attempt.checkpoint, retried)
        trial.set_user_attr("cost", session.cost.to_dict())
        epochs = attempt.epochs = EpochReporter(
            trial, run, session, spec=self.spec, reporter=self.reporter,
            say_step_mode=self.cuda_graphs, checkpoint=attempt.checkpoint,
            on_timed_epoch=self.on_timed_epoch)
        epochs.replay(earlier)
        session.fit(epochs=self.spec.epochs, on_epoch=epochs,
                    start_epoch=earlier[-1].epoch + 1 if earlier else 1,
                    on_batch=lambda epoch, done, total: self.reporter.batch(
                        trial.number, epoch, self.spec.epochs, done, total, params.batch_size))
        value = epochs.history[-1].metrics()[self.spec.metric]
        if not math.isfinite(value):
            raise ValueError(f"{self.spec.metric} is {value} after the last epoch")
        run.log_cost(trial.user_attrs["cost"])
        self._log_mistakes(run, epochs.history)
        best_so_far = self._is_best_so_far(trial.study, value)
        if best_so_far:
            run.log_checkpoint(session.model)
            trial.set_user_attr("checkpoint", True)
        run.finish("COMPLETE", epochs.history, self.data.info.class_names, value=value,
                   tags={"hpsearch.best_so_far": str(best_so_far).lower()})
        return value

    def _build(self, params: TrialParams, seed: int) -> TrainingSession:
        return TrainingSession.build(params, data=self.data, device=self.device, seed=seed,
                                     epochs=self.spec.epochs, augment=self.spec.augment,
                                     amp_dtype=self.amp_dtype,
                                     compile_model=self.compile_model,
                                     compile_mode=self.compile_mode,
                                     cuda_graphs=self.cuda_graphs)

    def _session(self, trial: optuna.Trial, run: TrialRun, params: TrialParams,
                 checkpoint: TrialCheckpoint | None, retried: list[int]
                 ) -> tuple[TrainingSession, list[EpochResult]]:
        """The trial's training, and the epochs it continues from: a retry continues its
        predecessor's training where a checkpoint of it is found, else starts over and
        says why (a line, and the run's tag ``hpsearch.resume``)."""
        # A retry trains with the seed of the trial it retries: started over, it trains
        # exactly as that trial did.
        seed = self.seed + (retried[0] if retried else trial.number)
        session = self._build(params, seed)
        if checkpoint is None or not retried:
            return session, []
        previous = checkpoint.previous()
        reason = previous.reason
        if previous.state is not None:
            try:
                earlier = session.load_state_dict(previous.state)
            except (ValueError, KeyError) as exc:
                reason = f"its checkpoint does not fit this trial ({exc})"
                session = self._build(params, seed)  # a half-restored one is unusable
            else:
                done = earlier[-1].epoch if earlier else 0
                note = (f"continues trial {previous.number} after epoch {done} of "
                        f"{self.spec.epochs}")
                self.reporter.say(f"  trial {trial.number:4d}  {note} ({reason})")
                run.client.set_tag(run.run_id, "hpsearch.resume", note)
                return session, earlier
        self.reporter.say(f"  trial {trial.number:4d}  retries trial {retried[-1]} from epoch "
                          f"1: {reason}")
        run.client.set_tag(run.run_id, "hpsearch.resume", f"started over: {reason}")
        return session, []

    def _record_pruned(self, trial: optuna.Trial, exc: optuna.TrialPruned,
                       attempt: _Attempt) -> None:
        trial.set_user_attr("prune_reason", str(exc))
        diverged = trial.user_attrs.get("diverged_epoch")
        if not diverged:  # a diverged model's predictions are NaN: nothing to show
            self._log_mistakes(attempt.run, attempt.history)
        extra = {"hpsearch.diverged_epoch": str(diverged)} if diverged else {}
        attempt.run.log_cost(trial.user_attrs["cost"])
        attempt.run.finish("PRUNED", attempt.history, self.data.info.class_names,
                           reason=str(exc), tags=extra)

    def _record_failure(self, trial: optuna.Trial, exc: BaseException,
                        attempt: _Attempt) -> Failure:
        """Say why the trial failed, whatever raised (sampling, building, training,
        logging): on the trial first, then on its run if it has one. A failure to log the
        failure to MLflow must not hide the original one."""
        failure = classify_failure(exc, attempt.params)
        trial.set_user_attr("fail_reason", failure.reason)
        trial.set_user_attr("failure_kind", failure.kind)
        run = attempt.run
        if run is not None:
            try:
                if failure.kind != "interrupted":
                    run.client.log_text(run.run_id, traceback.format_exc(), "traceback.txt")
                run.finish("FAIL", attempt.history, self.data.info.class_names,
                           reason=failure.reason, status=failure.run_status,
                           tags={"hpsearch.failure_kind": failure.kind})
            except Exception as logging_error:  # the store is down, say: keep the reason
                self.reporter.say(f"trial {trial.number}: its failure was not logged to "
                                  f"MLflow ({type(logging_error).__name__}: {logging_error})")
        if failure.kind == "out_of_memory":
            _release_memory(exc, self.device)
        return failure

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


def retry_history(trial: optuna.Trial) -> list[int]:
    """The numbers of the trials this one retries, oldest first (Optuna's
    ``retry_history``: an interrupted trial's, or a dead worker's), or []; ``optuna.Trial``
    shows no system attributes, its frozen record does."""
    running = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    frozen = next((t for t in running if t.number == trial.number), None)
    return list(frozen.system_attrs.get("retry_history", [])) if frozen else []


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
