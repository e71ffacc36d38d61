"""Study specs: search spaces and study settings, loaded from YAML and validated.

A spec is a YAML mapping. Every key is checked: an unknown key, a wrong type or an empty
range raises :class:`SpecError` naming the file, the key and the reason, so a typo never
silently falls back to a default (the habit of nanoGPT's ``configurator.py``).

Example (``hpsearch/studies/fashion_mnist.yaml`` is the full built-in one)::

    dataset: fashion_mnist
    epochs: 10
    search_space:
      lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
      batch_size: [128, 256, 512]          # a list is a categorical choice
      depth: {type: int, low: 1, high: 4}
      dropout: {type: float, low: 0.0, high: 0.5}
      arch: [cnn, resnet, vgg, mlp]
      optimizer: adamw                     # a scalar is fixed, not searched
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "HYPERPARAMETERS",
    "ParamSpec",
    "SpecError",
    "StudySpec",
    "builtin_spec_names",
    "load_builtin_spec",
    "load_spec",
]


class SpecError(ValueError):
    """A study spec that cannot be used; the message names the file, key and reason."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source, self.key, self.reason = source, key, reason


# The hyperparameters the objective knows how to use, with the value used when a spec
# leaves one out. None marks the ones every search space must name.
HYPERPARAMETERS: dict[str, Any] = {
    "lr": None,  # peak learning rate of the one-cycle schedule
    "batch_size": None,  # images per optimizer step
    "depth": None,  # blocks (cnn, vgg), blocks per stage (resnet), hidden layers (mlp)
    "dropout": None,  # dropout probability before the classifier
    "arch": None,  # a name from hpsearch.models.list_models()
    "width": 32,  # channels of the first stage (conv nets); mlp hidden units / 8
    "optimizer": "adamw",  # adamw | sgd (Nesterov momentum 0.9)
    "weight_decay": 5.0e-4,  # decoupled (adamw) or L2 (sgd) weight decay
    "label_smoothing": 0.0,  # cross-entropy label smoothing (Szegedy et al. 2016)
}
OPTIMIZERS = ("adamw", "sgd")
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}
SAMPLERS = ("tpe", "random")
PRUNERS = ("hyperband", "median", "successive_halving", "threshold", "percentile", "none")

_TOP_LEVEL_KEYS = {
    "dataset": "name of the data set: fashion_mnist, mnist or cifar10",
    "epochs": "most epochs one trial trains (Hyperband's max_resource)",
    "metric": "val_accuracy or val_loss, reported to the pruner after every epoch",
    "direction": "maximize or minimize; must agree with the metric",
    "val_fraction": "share of the training set held out for validation",
    "augment": "random crop (and flip where the data set allows) while training",
    "sampler": "Optuna sampler: {name: tpe|random, ...its keyword arguments}",
    "pruner": "Optuna pruner: {name: hyperband|median|..., ...its keyword arguments}",
    "search_space": "hyperparameter -> range, list of choices, or fixed value",
    "enqueue_trials": "list of parameter sets to try first (Study.enqueue_trial)",
}


@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter's distribution.

    Attributes:
        name: the hyperparameter, a key of :data:`HYPERPARAMETERS`.
        kind: ``"float"``, ``"int"``, ``"categorical"`` or ``"fixed"``.
        low: lower bound (float and int kinds), inclusive.
        high: upper bound (float and int kinds), inclusive.
        log: sample on a log scale.
        step: grid step (int kind), or None.
        choices: the candidates (categorical kind).
        value: the value (fixed kind).
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None

    def suggest(self, trial: Any) -> Any:
        """Draw this hyperparameter from an ``optuna.Trial`` (fixed ones are returned as is)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=self.step or 1, log=self.log
            )
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        return self.value

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this parameter can take."""
        if self.kind in ("categorical", "fixed"):
            return value in self.candidates()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high and (self.kind == "float" or value == int(value))

    def candidates(self) -> tuple[Any, ...]:
        """Every discrete value this parameter can take (categorical or fixed), else ()."""
        if self.kind == "categorical":
            return self.choices
        return (self.value,) if self.kind == "fixed" else ()

    def to_dict(self) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return list(self.choices)
        out = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        return out | ({"step": self.step} if self.step else {})


@dataclass(frozen=True)
class StudySpec:
    """A validated study spec. Build one with :func:`load_spec` or :func:`load_builtin_spec`.

    Attributes:
        dataset: data set name (``hpsearch.data_utils.DATASETS``).
        epochs: most epochs per trial; the pruner's max resource.
        metric: ``val_accuracy`` or ``val_loss``.
        direction: ``maximize`` or ``minimize``.
        val_fraction: share of the training images held out for validation, in (0, 1).
        augment: random crop (+ horizontal flip where the data set allows) while training.
        sampler: ``{"name": ..., **kwargs}`` for the Optuna sampler.
        pruner: ``{"name": ..., **kwargs}`` for the Optuna pruner.
        search_space: one :class:`ParamSpec` per hyperparameter, defaults filled in.
        enqueue_trials: parameter sets tried before the sampler takes over.
        source: the file the spec came from (for messages).
    """

    dataset: str
    epochs: int = 10
    metric: str = "val_accuracy"
    direction: str = "maximize"
    val_fraction: float = 0.1
    augment: bool = True
    sampler: Mapping[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: Mapping[str, Any] = field(default_factory=lambda: {"name": "hyperband"})
    search_space: tuple[ParamSpec, ...] = ()
    enqueue_trials: tuple[Mapping[str, Any], ...] = ()
    source: str = "<spec>"

    def param(self, name: str) -> ParamSpec:
        """The :class:`ParamSpec` called ``name``; KeyError if there is none."""
        for p in self.search_space:
            if p.name == name:
                return p
        raise KeyError(name)

    def replace(self, **changes: Any) -> StudySpec:
        """A copy with ``changes`` applied and validated again (e.g. ``epochs`` from the CLI)."""
        return _validate(self.to_dict() | changes, self.source)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (what is logged to MLflow)."""
        return {
            "dataset": self.dataset,
            "epochs": self.epochs,
            "metric": self.metric,
            "direction": self.direction,
            "val_fraction": self.val_fraction,
            "augment": self.augment,
            "sampler": dict(self.sampler),
            "pruner": dict(self.pruner),
            "search_space": {p.name: p.to_dict() for p in self.search_space},
            "enqueue_trials": [dict(t) for t in self.enqueue_trials],
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def builtin_spec_names() -> list[str]:
    """Names of the specs shipped in ``hpsearch/studies/`` (one per built-in data set)."""
    files = resources.files(__package__).iterdir()
    return sorted(f.name[: -len(".yaml")] for f in files if f.name.endswith(".yaml"))


def load_builtin_spec(name: str) -> StudySpec:
    """The built-in spec for data set ``name``.

    Raises:
        ValueError: no built-in spec has that name; the message lists the choices.
    """
    if name not in builtin_spec_names():
        choices = ", ".join(builtin_spec_names())
        raise ValueError(f"unknown dataset {name!r}; choose one of: {choices}")
    text = resources.files(__package__).joinpath(f"{name}.yaml").read_text()
    return _parse(text, f"built-in spec {name}.yaml")


def load_spec(path: str | Path) -> StudySpec:
    """Load and validate a user's spec file.

    Raises:
        SpecError: the file is missing, is not YAML, or fails validation.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(str(path), "<file>", f"cannot be read ({exc.strerror})") from None
    return _parse(text, str(path))


def _parse(text: str, source: str) -> StudySpec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise SpecError(source, "<file>", f"not valid YAML{line}") from None
    if not isinstance(raw, dict):
        raise SpecError(source, "<file>", "must be a YAML mapping of settings")
    return _validate(raw, source)


def _validate(raw: Mapping[str, Any], source: str) -> StudySpec:
    for key in raw:
        if key not in _TOP_LEVEL_KEYS:
            known = ", ".join(_TOP_LEVEL_KEYS)
            raise SpecError(source, str(key), f"unknown key; known keys: {known}")
    if "dataset" not in raw:
        raise SpecError(source, "dataset", "missing; " + _TOP_LEVEL_KEYS["dataset"])
    dataset = _typed(raw, "dataset", str, source)
    from hpsearch.data_utils import DATASETS

    if dataset not in DATASETS:
        raise SpecError(source, "dataset", f"{dataset!r} is not one of {', '.join(DATASETS)}")
    metric = _typed(raw, "metric", str, source, "val_accuracy")
    if metric not in METRICS:
        raise SpecError(source, "metric", f"{metric!r} is not one of {', '.join(METRICS)}")
    direction = _typed(raw, "direction", str, source, METRICS[metric])
    if direction != METRICS[metric]:
        reason = f"{metric} is optimised with direction {METRICS[metric]}, not {direction!r}"
        raise SpecError(source, "direction", reason)
    epochs = _typed(raw, "epochs", int, source, 10)
    if epochs < 1:
        raise SpecError(source, "epochs", f"must be >= 1, got {epochs}")
    val_fraction = float(_typed(raw, "val_fraction", (int, float), source, 0.1))
    if not 0.0 < val_fraction < 1.0:
        raise SpecError(source, "val_fraction", f"must lie in (0, 1), got {val_fraction}")
    space = _search_space(_typed(raw, "search_space", dict, source), source)
    return StudySpec(
        dataset=dataset,
        epochs=epochs,
        metric=metric,
        direction=direction,
        val_fraction=val_fraction,
        augment=_typed(raw, "augment", bool, source, True),
        sampler=_component(raw, "sampler", SAMPLERS, source, "tpe"),
        pruner=_component(raw, "pruner", PRUNERS, source, "hyperband"),
        search_space=space,
        enqueue_trials=_enqueued(raw.get("enqueue_trials", []), space, source),
        source=source,
    )


def _typed(raw: Mapping[str, Any], key: str, types: Any, source: str, default: Any = ...) -> Any:
    if key not in raw:
        if default is ...:
            raise SpecError(source, key, "missing; " + _TOP_LEVEL_KEYS[key])
        return default
    value = raw[key]
    # bool is an int in Python; a spec saying `epochs: true` is a mistake, not 1.
    if isinstance(value, bool) and types is not bool:
        raise SpecError(source, key, f"expected {_type_name(types)}, got a boolean")
    if not isinstance(value, types):
        raise SpecError(source, key, f"expected {_type_name(types)}, got {value!r}")
    return value


def _type_name(types: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             dict: "a mapping", list: "a list"}
    if isinstance(types, tuple):
        return "a number" if float in types else " or ".join(names[t] for t in types)
    return names[types]


def _component(raw, key: str, names: tuple[str, ...], source: str, default: str) -> dict:
    """Validate ``{name: ..., **kwargs}`` against the Optuna class's real signature."""
    value = raw.get(key, {"name": default})
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise SpecError(source, key, f"expected a mapping with a 'name', got {value!r}")
    name = value.get("name", default)
    if name not in names:
        raise SpecError(source, f"{key}.name", f"{name!r} is not one of {', '.join(names)}")
    allowed = _keyword_arguments(key, name)
    for arg in value:
        if arg != "name" and arg not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise SpecError(source, f"{key}.{arg}", f"unknown argument of {name}; known: {known}")
    config = {"name": name} | {k: v for k, v in value.items() if k != "name"}
    _try_building(key, config, source)
    return config


def _try_building(key: str, config: dict[str, Any], source: str) -> None:
    """Build the sampler or pruner once, so a bad argument value fails at load time."""
    from hpsearch.search.components import build_pruner, build_sampler

    try:
        if key == "sampler":
            build_sampler(config, seed=0)
        else:
            build_pruner(config, max_epochs=100)
    except Exception as exc:  # Optuna raises ValueError or TypeError, depending on the check
        raise SpecError(source, key, f"{config['name']} rejects these arguments: {exc}") from None


def _keyword_arguments(key: str, name: str) -> set[str]:
    from hpsearch.search.components import optuna_class  # optuna is imported only here

    params = inspect.signature(optuna_class(key, name)).parameters
    # The seed comes from --seed, so that one flag makes a run repeatable.
    return {p for p in params if p not in ("self", "seed")}


def _search_space(raw: Mapping[str, Any], source: str) -> tuple[ParamSpec, ...]:
    for name in raw:
        if name not in HYPERPARAMETERS:
            known = ", ".join(HYPERPARAMETERS)
            reason = f"unknown hyperparameter; known: {known}"
            raise SpecError(source, f"search_space.{name}", reason)
    missing = [n for n, default in HYPERPARAMETERS.items() if default is None and n not in raw]
    if missing:
        raise SpecError(source, "search_space", f"missing {', '.join(missing)}")
    space = []
    for name, default in HYPERPARAMETERS.items():
        param = _param(name, raw.get(name, default), f"search_space.{name}", source)
        _check_values(param, f"search_space.{name}", source)
        space.append(param)
    return tuple(space)


# Hyperparameters that take real numbers (the rest take integers or names).
_REAL_VALUED = ("lr", "dropout", "weight_decay", "label_smoothing")


def _param(name: str, value: Any, key: str, source: str) -> ParamSpec:
    if name in _REAL_VALUED:
        value = [_as_float(v) for v in value] if isinstance(value, list) else _as_float(value)
    if isinstance(value, list):
        if not value:
            raise SpecError(source, key, "empty list of choices")
        return ParamSpec(name, "categorical", choices=tuple(value))
    if not isinstance(value, dict):
        return ParamSpec(name, "fixed", value=value)
    kind = value.get("type")
    if kind == "categorical":
        for arg in value:
            if arg not in ("type", "choices"):
                raise SpecError(source, f"{key}.{arg}", "unknown key; known: type, choices")
        if not isinstance(value.get("choices"), list):
            raise SpecError(source, f"{key}.choices", "expected a list of choices")
        return _param(name, value["choices"], key, source)
    if kind not in ("float", "int"):
        raise SpecError(source, f"{key}.type", f"expected float, int or categorical, got {kind!r}")
    for arg in value:
        if arg not in ("type", "low", "high", "log", "step"):
            known = "type, low, high, log, step"
            raise SpecError(source, f"{key}.{arg}", f"unknown key; known: {known}")
    low, high = (_number(value, b, kind, f"{key}.{b}", source) for b in ("low", "high"))
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise SpecError(source, f"{key}.log", f"expected true or false, got {log!r}")
    if low > high:
        raise SpecError(source, key, f"empty range: low {low} > high {high}")
    if log and low <= 0:
        raise SpecError(source, key, f"log scale needs low > 0, got {low}")
    step = value.get("step")
    if step is not None and (kind != "int" or not isinstance(step, int) or step < 1):
        raise SpecError(source, f"{key}.step", "only int ranges take a step, an integer >= 1")
    if step is not None and step > 1 and log:
        # Optuna's IntDistribution refuses the pair; say so now, not in every trial.
        raise SpecError(source, f"{key}.step", "a log-scale range cannot take a step > 1")
    return ParamSpec(name, kind, low=low, high=high, log=log, step=step)


def _as_float(x: Any) -> Any:
    """PyYAML reads `1e-4` (no dot) as a string; accept it rather than trip users up."""
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return x  # left for _check_values to reject with the key named
    return x


def _number(value: Mapping[str, Any], bound: str, kind: str, key: str, source: str) -> float:
    if bound not in value:
        raise SpecError(source, key, "missing")
    x = _as_float(value[bound])
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise SpecError(source, key, f"expected a finite number, got {x!r}")
    if kind == "int" and x != int(x):
        raise SpecError(source, key, f"expected an integer, got {x!r}")
    return int(x) if kind == "int" else float(x)


def _check_values(param: ParamSpec, key: str, source: str) -> None:
    """Check the values a parameter can take make sense for the objective."""
    name = param.name
    candidates = param.candidates()
    if name == "arch":
        from hpsearch.models import list_models

        _check_choices(param, list_models(), key, source)
    elif name == "optimizer":
        _check_choices(param, OPTIMIZERS, key, source)
    elif name in ("batch_size", "depth", "width"):
        if param.kind == "float":
            raise SpecError(source, key, "must be an integer range or choices, not float")
        lows = [param.low] if param.kind == "int" else candidates
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in lows):
            raise SpecError(source, key, f"values must be integers >= 1, got {list(lows)}")
    else:  # lr, dropout, weight_decay, label_smoothing: real numbers
        values = [param.low, param.high] if param.kind in ("float", "int") else candidates
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
            raise SpecError(source, key, f"values must be numbers, got {list(values)}")
        upper = 1.0 if name in ("dropout", "label_smoothing") else math.inf
        lower_ok = (lambda v: v > 0) if name == "lr" else (lambda v: v >= 0)
        if not all(lower_ok(v) and v < upper for v in values):
            bound = "in (0, inf)" if name == "lr" else f"in [0, {upper})"
            raise SpecError(source, key, f"values must lie {bound}, got {list(values)}")


def _check_choices(param: ParamSpec, allowed, key: str, source: str) -> None:
    if param.kind not in ("categorical", "fixed"):
        raise SpecError(source, key, "must be a list of choices or a fixed value")
    for value in param.candidates():
        if value not in allowed:
            raise SpecError(source, key, f"{value!r} is not one of {', '.join(allowed)}")


def _enqueued(raw: Any, space: tuple[ParamSpec, ...], source: str) -> tuple[dict, ...]:
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise SpecError(source, "enqueue_trials", "expected a list of parameter mappings")
    searched = {p.name: p for p in space if p.kind != "fixed"}
    for i, params in enumerate(raw):
        for name, value in params.items():
            if name not in searched:
                names = ", ".join(sorted(searched))
                reason = f"{name!r} is not a searched hyperparameter ({names})"
                raise SpecError(source, f"enqueue_trials[{i}]", reason)
            if not searched[name].contains(value):
                reason = f"{name} = {value!r} lies outside the search space"
                raise SpecError(source, f"enqueue_trials[{i}]", reason)
    return tuple(dict(t) for t in raw)

