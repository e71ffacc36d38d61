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

import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
import torch

from hpsearch._testhooks import pause
from hpsearch.errors import signals_deferred
from hpsearch.params import TrialParams
from hpsearch.search.checkpoints import CheckpointStore, TrialCheckpoint
from hpsearch.search.failures import Failure, classify_failure, release_memory
from hpsearch.search.progress import Reporter
from hpsearch.search.session import TrainingSession, TrialCost, TrialData
from hpsearch.studies import StudySpec
from hpsearch.tracking.report import log_prediction_grid
from hpsearch.tracking.runs import StudyTracker, TrialRun
from hpsearch.training.device import autocast_dtype
from hpsearch.training.loop import EpochResult

__all__ = ["EpochReporter", "Failure", "Objective", "TrainingSession", "TrialCost",
           "TrialData", "classify_failure"]

# Called after each epoch a process trains: (trial number, epoch, wall seconds of the epoch).
EpochTimer = Callable[[int, int, float], None]


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
        with signals_deferred():
            for result in earlier:
                self.history.append(result)
                self.run.log_epoch(result)
                self.trial.report(result.metrics()[self.spec.metric], result.epoch)
            self.trial.set_user_attr("cost", self.session.cost.to_dict())
        self._since = time.perf_counter()

    def __call__(self, result: EpochResult) -> None:
        """Record the epoch (stores, progress line, pruner, checkpoint); a SIGINT/SIGTERM that
        arrives meanwhile is acted on when the records are written, never inside a store's
        write (see :func:`~hpsearch.errors.signals_deferred`)."""
        with signals_deferred():
            self._record(result)
        pause("epoch.end", f"epoch.end.trial{self.trial.number}")

    def _record(self, result: EpochResult) -> None:
        self.history.append(result)
        if self.session.step.mode != self.step_mode:
            self._log_step_mode(self.session.step.mode)
        cost = self.session.cost
        cost.add_epoch(result)
        self.trial.set_user_attr("cost", cost.to_dict())
        self.run.log_epoch(result)
        self.reporter.epoch(self.trial.number, result, self.spec.epochs)
        pause("epoch.recording", f"epoch.recording.trial{self.trial.number}")  # tests
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
            with signals_deferred():
                self._record_pruned(trial, exc, attempt)
            attempt.discard_checkpoint()
            raise
        except BaseException as exc:
            failure = self._record_failure(trial, exc, attempt)
            if failure.kind != "interrupted":  # kept for the retry of an interrupted trial
                attempt.discard_checkpoint()
            raise
        finally:
            with signals_deferred():
                trial.set_user_attr("epochs_run", len(attempt.history))
        attempt.discard_checkpoint()
        return value

    def _trial(self, trial: optuna.Trial, attempt: _Attempt) -> float:
        """Sample, open the run, train (continuing a predecessor's training if there is
        one), log; fills ``attempt`` as things come to exist."""
        retried = retry_history(trial)
        if self.checkpoints is not None:
            attempt.checkpoint = TrialCheckpoint(self.checkpoints, trial.number, retried)
        with signals_deferred():  # the trial's records start whole or not at all
            params = attempt.params = TrialParams.from_dict(self.spec.sample(trial))
            trial.set_user_attr("hyperparameters", params.to_dict())
            run = attempt.run = self.tracker.trial_run(
                trial.number, params.to_dict(), retry_of=retried[-1] if retried else None)
            trial.set_user_attr("mlflow_run_id", run.run_id)
        session, earlier = self._session(trial, run, params, attempt.checkpoint, retried)
        with signals_deferred():
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
        with signals_deferred():  # a finished trial's records are written whole
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
        if failure.kind == "interrupted":  # tests: a worker stuck recording its trial
            pause("trial.interrupted", f"trial.interrupted.trial{trial.number}")
        with signals_deferred():  # a second Ctrl-C waits for the records
            self._write_failure(trial, failure, attempt)
        if failure.kind == "out_of_memory":
            release_memory(exc, self.device)
        return failure

    def _write_failure(self, trial: optuna.Trial, failure: Failure, attempt: _Attempt) -> None:
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
