"""The cost-aware pruning rule on synthetic trials (ask/tell, costs and values given): an
expensive trial must be among the best at its epoch to go on."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpsearch.studies.components import build_pruner
from hpsearch.studies.pruning import CostAwarePruner

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(pruner, values=(0.70, 0.72, 0.74, 0.76, 0.78, 0.80), seconds_per_epoch=1.0):
    """A study with one finished cheap trial per value: 3 epochs, ``seconds_per_epoch``."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for value in values:
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=value, params={"x": 0.5},
            distributions={"x": FloatDistribution(0, 1)},
            intermediate_values={1: value - 0.05, 2: value - 0.02, 3: value},
            user_attrs={"cost": {"seconds_per_epoch": seconds_per_epoch}}))
    return study


def _report(study, *, seconds_per_epoch, value, step=1):
    trial = study.ask({"x": FloatDistribution(0, 1)})
    trial.set_user_attr("cost", {"seconds_per_epoch": seconds_per_epoch})
    trial.report(value, step)
    return trial


def test_expensive_trial_outside_the_top_share_is_pruned_with_its_reason() -> None:
    pruner = CostAwarePruner(max_epochs=3, cost_ratio=4.0, top_share=0.25)
    study = _study(pruner)  # values at epoch 1: 0.65 .. 0.75; projected cost 3 s each

    trial = _report(study, seconds_per_epoch=10.0, value=0.72)

    assert trial.should_prune()
    reason = pruner.reason(trial.number)
    assert reason == ("too costly for its value: projected 30 s, 10.0x the median trial's 3 s, "
                      "and its 0.7200 at epoch 1 is not in the best 25% of 6 trials there")


def test_expensive_trial_in_the_top_share_goes_on() -> None:
    pruner = CostAwarePruner(max_epochs=3, cost_ratio=4.0, top_share=0.25)
    study = _study(pruner)
    # The best 25% of six values at epoch 1 (0.65 .. 0.75) is the best one: 0.75.
    assert not _report(study, seconds_per_epoch=10.0, value=0.75).should_prune()
    assert _report(study, seconds_per_epoch=10.0, value=0.7499).should_prune()


def test_a_trial_within_the_cost_ratio_is_never_pruned_for_its_cost() -> None:
    pruner = CostAwarePruner(max_epochs=3, cost_ratio=4.0)
    study = _study(pruner)

    trial = _report(study, seconds_per_epoch=3.9, value=0.10)  # 3.9x the median, worst value

    assert not trial.should_prune() and pruner.reason(trial.number) is None


def test_too_few_other_trials_at_the_epoch_prune_nothing() -> None:
    pruner = CostAwarePruner(max_epochs=3, min_trials=4)
    study = _study(pruner, values=(0.7, 0.8, 0.9))

    assert not _report(study, seconds_per_epoch=100.0, value=0.1).should_prune()


def test_minimizing_studies_rank_low_values_best() -> None:
    pruner = CostAwarePruner(max_epochs=3, cost_ratio=2.0, top_share=0.5)
    study = optuna.create_study(direction="minimize", pruner=pruner)
    for loss in (0.4, 0.5, 0.6, 0.7):
        study.add_trial(create_trial(
            state=TrialState.PRUNED, params={"x": 0.5},
            distributions={"x": FloatDistribution(0, 1)}, intermediate_values={1: loss},
            user_attrs={"cost": {"seconds_per_epoch": 1.0}}))

    assert not _report(study, seconds_per_epoch=5.0, value=0.45).should_prune()
    assert _report(study, seconds_per_epoch=5.0, value=0.55).should_prune()


def test_the_base_pruner_prunes_as_without_the_cost_rule() -> None:
    base = optuna.pruners.ThresholdPruner(lower=0.5)
    pruner = CostAwarePruner(base, max_epochs=3)
    study = _study(pruner)

    trial = _report(study, seconds_per_epoch=1.0, value=0.4)  # cheap, below the threshold

    assert trial.should_prune() and pruner.reason(trial.number) is None


def test_a_spec_entry_builds_the_base_from_its_own_entry() -> None:
    pruner = build_pruner({"name": "cost_aware", "base": {"name": "median",
                                                         "n_warmup_steps": 1},
                           "cost_ratio": 3.0}, max_epochs=5)

    assert isinstance(pruner, CostAwarePruner)
    assert isinstance(pruner.base, optuna.pruners.MedianPruner)
    assert (pruner.max_epochs, pruner.cost_ratio) == (5, 3.0)


@pytest.mark.parametrize("kwargs", [{"cost_ratio": 1.0}, {"top_share": 1.0},
                                    {"base": optuna.pruners.HyperbandPruner()}])
def test_bad_arguments_are_rejected(kwargs) -> None:
    with pytest.raises(ValueError):
        CostAwarePruner(**kwargs)
