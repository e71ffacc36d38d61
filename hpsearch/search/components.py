"""Optuna samplers and pruners built from a study spec's ``{name: ..., **kwargs}`` entries."""

from __future__ import annotations

from typing import Any

import optuna

_SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
}
_PRUNERS = {
    "hyperband": optuna.pruners.HyperbandPruner,
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "none": optuna.pruners.NopPruner,
}


def optuna_class(kind: str, name: str) -> type:
    """The Optuna class for ``kind`` (``"sampler"`` or ``"pruner"``) called ``name``."""
    return (_SAMPLERS if kind == "sampler" else _PRUNERS)[name]


def build_sampler(config: dict[str, Any], *, seed: int | None) -> optuna.samplers.BaseSampler:
    """An Optuna sampler from a spec's ``sampler`` entry, seeded by ``--seed``."""
    kwargs = {k: v for k, v in config.items() if k != "name"}
    return optuna_class("sampler", config["name"])(seed=seed, **kwargs)


def build_pruner(config: dict[str, Any], *, max_epochs: int) -> optuna.pruners.BasePruner:
    """An Optuna pruner from a spec's ``pruner`` entry.

    Hyperband's and successive halving's resource is the epoch; Hyperband's ``max_resource``
    defaults to the spec's ``epochs`` so its brackets match what a trial can train.
    """
    kwargs = {k: v for k, v in config.items() if k != "name"}
    if config["name"] == "hyperband":
        kwargs.setdefault("max_resource", max_epochs)
    return optuna_class("pruner", config["name"])(**kwargs)
