"""Progress display: one line per epoch and per finished trial, on stderr.

Plain lines rather than a redrawn bar, so logs of overnight runs stay readable.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

import optuna

if TYPE_CHECKING:
    from hpsearch.training import EpochResult

__all__ = ["Reporter", "format_params"]


def format_params(params: dict[str, Any]) -> str:
    """Short ``name=value`` list with floats in 3 significant digits."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


class Reporter:
    """Prints the study's progress.

    Args:
        metric: the objective's metric name, for labels.
        stream: where to print (stderr by default, so stdout stays for results).
        verbose: also print one line per epoch.
    """

    def __init__(self, metric: str, *, stream: TextIO | None = None, verbose: bool = True):
        self.metric, self.stream, self.verbose = metric, stream or sys.stderr, verbose

    def say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def epoch(self, trial_number: int, result: EpochResult, max_epochs: int) -> None:
        if self.verbose:
            self.say(
                f"  trial {trial_number:4d}  epoch {result.epoch:3d}/{max_epochs:<3d} "
                f"train_loss {result.train_loss:.4f}  val_loss {result.val.loss:.4f}  "
                f"val_accuracy {result.val.accuracy:.4f}  {result.epoch_seconds:6.1f} s  "
                f"{result.images_per_second:9,.0f} img/s"
            )

    def trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """An ``optimize`` callback: the trial's state, value and the best so far."""
        state = trial.state.name
        value = f"{self.metric} {trial.value:.4f}" if trial.value is not None else ""
        if state == "PRUNED" and trial.intermediate_values:
            step = max(trial.intermediate_values)
            value = f"{self.metric} {trial.intermediate_values[step]:.4f} at epoch {step}"
        if state == "FAIL":
            value = trial.user_attrs.get("fail_reason", "failed")
        best = _best(study)
        best_text = f"best {best.value:.4f} (trial {best.number})" if best else "no best yet"
        params = format_params(trial.user_attrs.get("hyperparameters", trial.params))
        self.say(f"trial {trial.number:4d}  {state:8s} {value}  | {best_text}  | {params}")


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None
