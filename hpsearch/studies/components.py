"""Optuna samplers and pruners by name: the one registry that both the spec's check and the
study read. A spec names one as ``{name: ..., **its keyword arguments}``; the classes are
imported on first use, so the registry itself loads no Optuna.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from typing import Any

__all__ = ["PRUNERS", "SAMPLERS", "build_pruner", "build_sampler", "component_class",
           "keyword_arguments"]

# name -> "module:class"
SAMPLERS = {
    "tpe": "optuna.samplers:TPESampler",
    "random": "optuna.samplers:RandomSampler",
}
PRUNERS = {
    "hyperband": "optuna.pruners:HyperbandPruner",
    "median": "optuna.pruners:MedianPruner",
    "successive_halving": "optuna.pruners:SuccessiveHalvingPruner",
    "threshold": "optuna.pruners:ThresholdPruner",
    "percentile": "optuna.pruners:PercentilePruner",
    "none": "optuna.pruners:NopPruner",
    "cost_aware": "hpsearch.studies.pruning:CostAwarePruner",
}
_REGISTRY = {"sampler": SAMPLERS, "pruner": PRUNERS}


def component_class(kind: str, name: str) -> type:
    """The class registered as ``kind`` (``"sampler"`` or ``"pruner"``) ``name``.

    Raises:
        KeyError: no such name.
    """
    module, _, attribute = _REGISTRY[kind][name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def keyword_arguments(kind: str, name: str) -> set[str]:
    """The keyword arguments a spec may give the class (the seed comes from ``--seed``, so
    that one flag makes a run repeatable)."""
    params = inspect.signature(component_class(kind, name)).parameters
    return {p for p in params if p not in ("self", "seed")}


def build_sampler(config: dict[str, Any], *, seed: int | None) -> Any:
    """An Optuna sampler from a spec's ``sampler`` entry, seeded by ``--seed``. Optuna's
    "experimental" warnings (TPE's ``group``, which conditional spaces want) are not
    repeated to the user at every run."""
    import optuna

    kwargs = {k: v for k, v in config.items() if k != "name"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return component_class("sampler", config["name"])(seed=seed, **kwargs)


def build_pruner(config: dict[str, Any], *, max_epochs: int) -> Any:
    """An Optuna pruner from a spec's ``pruner`` entry.

    Hyperband's and successive halving's resource is the epoch; Hyperband's ``max_resource``
    defaults to the spec's ``epochs`` so its brackets match what a trial can train, and so
    does the cost-aware pruner's ``max_epochs`` (its ``base`` is built from its own entry).
    """
    kwargs = {k: v for k, v in config.items() if k != "name"}
    if config["name"] == "hyperband":
        kwargs.setdefault("max_resource", max_epochs)
    if config["name"] == "cost_aware":  # its base pruner is a spec entry of its own
        kwargs["base"] = build_pruner(kwargs.get("base") or {"name": "none"},
                                      max_epochs=max_epochs)
        kwargs.setdefault("max_epochs", max_epochs)
    return component_class("pruner", config["name"])(**kwargs)
