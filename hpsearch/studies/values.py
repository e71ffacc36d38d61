"""What values each hyperparameter may take, checked for one parameter of a search space
(:func:`check_values`, called by :func:`hpsearch.studies.space.check_space`)."""

from __future__ import annotations

import math
from typing import Any

from hpsearch.params import CLASS_WEIGHTS, FREEZE_WORDS, OPTIMIZERS

__all__ = ["RULES", "check_values"]

# What each hyperparameter may take: ("names", allowed) | ("count",) | ("real", low, high,
# low inclusive, high inclusive) | ("bool",) | ("freeze",). Counts are integers >= 1; reals
# lie between their bounds; freeze is "none", "backbone" or a number of stages >= 0.
RULES: dict[str, tuple] = {
    "lr": ("real", 0.0, math.inf, False, False),
    "batch_size": ("count",),
    "depth": ("count",),
    "dropout": ("real", 0.0, 1.0, True, False),
    "arch": ("names", None),  # the model registry's names, looked up when checked
    "width": ("count",),
    "optimizer": ("names", OPTIMIZERS),
    "weight_decay": ("real", 0.0, math.inf, True, False),
    "label_smoothing": ("real", 0.0, 1.0, True, False),
    "pretrained": ("bool",),
    "freeze": ("freeze",),
    "backbone_lr_mult": ("real", 0.0, 1.0, False, True),
    "class_weights": ("names", CLASS_WEIGHTS),
    "image_size": ("count",),  # at most the data set's size: checked against the data
}


def check_values(param: Any) -> str | None:
    """What is wrong with the values ``param`` (a :class:`~hpsearch.studies.space.ParamSpec`)
    can take for its hyperparameter, by :data:`RULES`; None where nothing is (a learning
    rate above 0, a dropout in [0, 1), an architecture the model registry knows, ...)."""
    rule, candidates = RULES[param.name], param.candidates()
    if rule[0] == "names":
        if param.kind not in ("categorical", "fixed"):
            return "must be a list of choices or a fixed value"
        allowed = rule[1] if rule[1] is not None else _architectures()
        unknown = [v for v in candidates if v not in allowed]
        return f"{unknown[0]!r} is not one of {', '.join(allowed)}" if unknown else None
    if param.branches:
        return "only arch and optimizer choices can open branches"
    if rule[0] == "count":
        if param.kind == "float":
            return "must be an integer range or choices, not float"
        lows = [param.low] if param.kind == "int" else candidates
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in lows):
            return f"values must be integers >= 1, got {list(lows)}"
        return None
    if rule[0] == "bool":
        if param.kind not in ("categorical", "fixed") or any(
                not isinstance(v, bool) for v in candidates):
            return f"values must be true or false, got {param.to_dict()!r}"
        return None
    if rule[0] == "freeze":
        return _check_freeze(param, candidates)
    return _check_real(param, candidates, *rule[1:])


def _check_freeze(param: Any, candidates: tuple[Any, ...]) -> str | None:
    if param.kind == "float":
        return "must be choices or an integer range, not float"
    values = [param.low] if param.kind == "int" else candidates
    if any(v not in FREEZE_WORDS and (isinstance(v, bool) or not isinstance(v, int) or v < 0)
           for v in values):
        return (f"values must be {' or '.join(FREEZE_WORDS)} or a number of trainable "
                f"stages >= 0, got {list(values)}")
    return None


def _check_real(param: Any, candidates: tuple[Any, ...], low: float, high: float,
                low_inclusive: bool, high_inclusive: bool) -> str | None:
    values = [param.low, param.high] if param.kind in ("float", "int") else candidates
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return f"values must be numbers, got {list(values)}"
    if not all((v >= low if low_inclusive else v > low)
               and (v <= high if high_inclusive else v < high) for v in values):
        bounds = (f"{'[' if low_inclusive else '('}{low:g}, {high}"
                  f"{']' if high_inclusive else ')'}")
        return f"values must lie in {bounds}, got {list(values)}"
    return None


def _architectures() -> list[str]:
    from hpsearch.models import list_models  # imports torch: only when a spec is checked

    return list_models()
