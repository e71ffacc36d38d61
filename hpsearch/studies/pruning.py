"""A pruner that weighs what a trial costs: an expensive trial must earn its epochs.

Optuna's pruners compare values only, so a configuration 20 times slower than the study's
typical trial runs its epochs as long as its curve looks average. :class:`CostAwarePruner`
prunes what its base pruner prunes and, besides, a trial whose projected cost is far above
the study's median while its value at the same epoch is not among the best. A trial records
its cost in its ``cost`` user attribute (``seconds_per_epoch``, set before each report).
"""

from __future__ import annotations

import statistics

import optuna
from optuna.pruners import BasePruner, HyperbandPruner
from optuna.trial import FrozenTrial, TrialState

__all__ = ["CostAwarePruner"]


class CostAwarePruner(BasePruner):
    """Prune what ``base`` prunes, and an expensive trial that is not in the top share.

    A trial is *expensive* when its projected cost, its seconds per epoch so far times
    ``max_epochs``, is more than ``cost_ratio`` times the median projected cost of the
    study's other trials. An expensive trial goes on only while its value at the current
    epoch is in the best ``top_share`` of the values the other trials reported at that
    epoch; else it is pruned, and :meth:`reason` says why.

    Args:
        base: the value-based pruner (median, percentile, successive halving, threshold,
            none), or None for none. Not Hyperband: its sampler hooks need to see it.
        max_epochs: the most epochs a trial trains (the study spec's ``epochs``).
        cost_ratio: how many times the median projected cost makes a trial expensive.
        top_share: the share of values at an epoch that an expensive trial must be in.
        min_trials: compare only with at least this many other trials with a cost and a
            value at the epoch.

    Raises:
        ValueError: a ratio or share out of range, or a Hyperband base.
    """

    def __init__(self, base: BasePruner | None = None, *, max_epochs: int = 1,
                 cost_ratio: float = 4.0, top_share: float = 0.25, min_trials: int = 4) -> None:
        if isinstance(base, HyperbandPruner):
            raise ValueError("Hyperband cannot be the base of cost_aware (TPE must see it "
                             "as the study's pruner); use successive_halving")
        if cost_ratio <= 1.0 or not 0.0 < top_share < 1.0 or min_trials < 1 or max_epochs < 1:
            raise ValueError("cost_ratio must be > 1, top_share in (0, 1), min_trials and "
                             "max_epochs >= 1")
        self.base, self.max_epochs = base, max_epochs
        self.cost_ratio, self.top_share, self.min_trials = cost_ratio, top_share, min_trials
        self._reasons: dict[int, str] = {}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self.base is not None and self.base.prune(study, trial):
            return True
        reason = self._cost_reason(study, trial)
        if reason:
            self._reasons[trial.number] = reason
        return reason is not None

    def reason(self, trial_number: int) -> str | None:
        """Why the cost rule pruned trial ``trial_number`` (None if it did not)."""
        return self._reasons.get(trial_number)

    def _cost_reason(self, study: optuna.Study, trial: FrozenTrial) -> str | None:
        step, cost = trial.last_step, _projected(trial, self.max_epochs)
        if step is None or cost is None:
            return None
        others = [t for t in study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
                  if t.number != trial.number and step in t.intermediate_values
                  and _projected(t, self.max_epochs) is not None]
        if len(others) < self.min_trials:
            return None
        median = statistics.median(_projected(t, self.max_epochs) for t in others)
        if cost <= self.cost_ratio * median:
            return None
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        value = trial.intermediate_values[step]
        values = sorted((t.intermediate_values[step] for t in others), reverse=maximize)
        cutoff = values[max(0, int(len(values) * self.top_share) - 1)]
        if (value >= cutoff) if maximize else (value <= cutoff):
            return None
        return (f"too costly for its value: projected {cost:.0f} s, {cost / median:.1f}x the "
                f"median trial's {median:.0f} s, and its {value:.4f} at epoch {step} is not in "
                f"the best {self.top_share:.0%} of {len(others)} trials there")


def _projected(trial: FrozenTrial, max_epochs: int) -> float | None:
    """Seconds the trial would take over ``max_epochs`` at its pace so far, or None."""
    per_epoch = trial.user_attrs.get("cost", {}).get("seconds_per_epoch")
    return None if per_epoch is None else per_epoch * max_epochs
