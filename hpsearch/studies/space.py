"""Search spaces: what each hyperparameter may take, drawn from an Optuna trial.

A space is a tuple of :class:`ParamSpec`, one per hyperparameter, in the order they are
drawn. A categorical parameter may carry *branches*: for each of its choices, the
parameters drawn only when that choice is (a conditional space, e.g. per architecture).
Branch parameters get Optuna names prefixed by the choices above them (``cnn.depth``), so
TPE models each architecture's depth apart; the trial's :class:`~hpsearch.params.TrialParams`
use the plain names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import hpsearch.params as hp
from hpsearch.params import (
    DATA_DEFAULT_HYPERPARAMETERS,
    FAMILY_HYPERPARAMETERS,
    HYPERPARAMETERS,
)
from hpsearch.studies.values import check_values

__all__ = ["ParamSpec", "active_params", "architectures", "check_space", "default_params",
           "enqueue_names", "pretrained_archs", "sample", "taken_by"]


@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter's distribution.

    Attributes:
        name: the hyperparameter, a key of :data:`~hpsearch.params.HYPERPARAMETERS`.
        kind: ``"float"``, ``"int"``, ``"categorical"`` or ``"fixed"``.
        low: lower bound (float and int kinds), inclusive.
        high: upper bound (float and int kinds), inclusive.
        log: sample on a log scale.
        step: grid step (int kind), or None.
        choices: the candidates (categorical kind).
        value: the value (fixed kind).
        branches: for a categorical parameter, the parameters drawn only when a choice is
            drawn: ``{choice: (ParamSpec, ...)}``; empty for a plain one.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None
    branches: Mapping[Any, tuple[ParamSpec, ...]] = field(default_factory=dict)

    def suggest(self, trial: Any, prefix: str = "") -> Any:
        """Draw this hyperparameter from an ``optuna.Trial`` under the Optuna name
        ``prefix + name`` (fixed ones are returned as is, without asking the trial)."""
        name = prefix + self.name
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=self.step or 1,
                                     log=self.log)
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
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
        """The spec-file form: a scalar, a list, a range mapping or ``{choice: {...}}``."""
        if self.branches:
            return {choice: {p.name: p.to_dict() for p in params}
                    for choice, params in self.branches.items()}
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return list(self.choices)
        out = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        return out | ({"step": self.step} if self.step else {})


def sample(space: tuple[ParamSpec, ...], trial: Any) -> dict[str, Any]:
    """Draw every hyperparameter of ``space`` that is active for the choices drawn.

    The drawn architecture gets exactly its family's hyperparameters: one drawn outside its
    branch that it does not take (``depth`` at the top level, a default fixed there) is left
    out, so a backbone's trial has no depth; one it takes that its path does not draw (named
    only in another architecture's branch) gets its default from
    :data:`~hpsearch.params.HYPERPARAMETERS`.

    Returns:
        ``{name: value}`` with the plain names (``depth``, not ``cnn.depth``).
    """
    values: dict[str, Any] = {}
    pending: list[tuple[str, tuple[ParamSpec, ...]]] = [("", space)]
    while pending:
        prefix, params = pending.pop(0)
        for param in params:
            values[param.name] = param.suggest(trial, prefix)
            branch = param.branches.get(values[param.name])
            if branch:
                pending.append((f"{prefix}{values[param.name]}.", branch))
    if "arch" in values:
        takes = _takes(values["arch"])
        values = {n: v for n, v in values.items()
                  if n not in FAMILY_HYPERPARAMETERS or n in takes}
        values |= {n: HYPERPARAMETERS[n] for n in FAMILY_HYPERPARAMETERS
                   if n in takes and n not in values and HYPERPARAMETERS[n] is not None}
    return values


def active_params(space: tuple[ParamSpec, ...],
                  values: Mapping[str, Any]) -> Iterator[tuple[str, ParamSpec]]:
    """(Optuna name, parameter) of each parameter active when the categorical parents take
    ``values`` (a parent missing from ``values`` opens none of its branches)."""
    pending: list[tuple[str, tuple[ParamSpec, ...]]] = [("", space)]
    while pending:
        prefix, params = pending.pop(0)
        for param in params:
            yield prefix + param.name, param
            chosen = values.get(param.name)
            branch = param.branches.get(chosen) if param.branches else None
            if branch:
                pending.append((f"{prefix}{chosen}.", branch))


def enqueue_names(space: tuple[ParamSpec, ...], values: Mapping[str, Any]) -> dict[str, Any]:
    """An enqueued parameter set with plain names, as Optuna names it (``cnn.depth``).

    A parameter fixed on that path may be named with its fixed value (so that a set reads
    as a whole configuration); it is left out of the result.

    Raises:
        ValueError: a name is not a hyperparameter of the path the set's choices take, a
            fixed one is given another value, or a value lies outside its parameter's range;
            the message says which.
    """
    active = list(active_params(space, values))
    fixed = {p.name: p.value for _, p in active if p.kind == "fixed"}
    searched = {p.name: (optuna_name, p) for optuna_name, p in active if p.kind != "fixed"}
    named = {}
    for name, value in values.items():
        if name in fixed:
            if value != fixed[name]:
                raise ValueError(f"{name} = {value!r}, but the space fixes it at "
                                 f"{fixed[name]!r}")
            continue
        if name not in searched:
            raise ValueError(f"{name!r} is not a searched hyperparameter "
                             f"({', '.join(sorted(searched))})")
        optuna_name, param = searched[name]
        if not param.contains(value):
            raise ValueError(f"{name} = {value!r} lies outside the search space")
        named[optuna_name] = value
    return named




def check_space(space: tuple[ParamSpec, ...], key: str = "search_space") -> tuple[str, str] | None:
    """Check that every path through ``space`` names each hyperparameter once, that each
    parameter's values make sense for the objective, and that each architecture gets only
    the hyperparameters its family takes (and those it requires).

    Returns:
        None, or ``(key, reason)`` of the first problem (``key`` as in the spec file:
        ``search_space.arch.cnn.depth``).
    """
    return (_check_level(space, key, inherited=frozenset())
            or _check_families(space, key) or _check_required(space, key))


def default_params(space: tuple[ParamSpec, ...]) -> tuple[ParamSpec, ...]:
    """Fixed parameters for the hyperparameters ``space`` names nowhere that have a default:
    every general one, and a family's (``width``, ``pretrained``, ...) only where an
    architecture that takes it can be drawn, never an opt-in one (``class_weights``). So a
    space of from-scratch families resolves to what it resolved to before the backbones'
    hyperparameters and class weights existed (the definitions recorded then stay equal)."""
    named = {p.name for p in _all_params(space)}
    taken = set().union(*(_takes(arch) for arch in _drawable_archs(space)))
    return tuple(ParamSpec(name, "fixed", value=default)
                 for name, default in HYPERPARAMETERS.items()
                 if name not in named and default is not None
                 and name not in hp.OPT_IN_HYPERPARAMETERS
                 and (name not in FAMILY_HYPERPARAMETERS or name in taken))


def pretrained_archs(space: tuple[ParamSpec, ...]) -> list[str]:
    """The architectures ``space`` can draw whose trials may start from pretrained weights:
    those taking ``pretrained`` where a value it can take on their path is true (or, named
    nowhere on their path, its default is)."""
    needed = []
    for arch in _drawable_archs(space):
        if "pretrained" not in _takes(arch):
            continue
        values = _values_on_path(space, "pretrained", arch)
        if True in (values or (HYPERPARAMETERS["pretrained"],)):
            needed.append(arch)
    return needed


def _values_on_path(params: tuple[ParamSpec, ...], name: str, arch: str) -> tuple[Any, ...]:
    """Every value parameter ``name`` can take on the paths that draw ``arch``."""
    values: tuple[Any, ...] = ()
    for param in params:
        if param.name == name:
            values += param.candidates() or (True, False)  # a range: anything
        for choice, branch in param.branches.items():
            if param.name != "arch" or choice == arch:
                values += _values_on_path(branch, name, arch)
    return values


def _all_params(space: tuple[ParamSpec, ...]) -> Iterator[ParamSpec]:
    for param in space:
        yield param
        for branch in param.branches.values():
            yield from _all_params(branch)


def architectures(space: tuple[ParamSpec, ...]) -> list[str]:
    """Every architecture ``space`` can draw, in the order it names them."""
    return _drawable_archs(space)


def taken_by(archs: Iterable[str]) -> frozenset[str]:
    """The family hyperparameters (:data:`~hpsearch.params.FAMILY_HYPERPARAMETERS`) that at
    least one of ``archs`` takes."""
    return frozenset().union(*(_takes(arch) for arch in archs))


def _drawable_archs(space: tuple[ParamSpec, ...]) -> list[str]:
    archs = [c for p in _all_params(space) if p.name == "arch" for c in p.candidates()]
    return list(dict.fromkeys(archs))


def _takes(arch: str) -> frozenset[str]:
    """The family hyperparameters ``arch`` takes (none for a name that is not registered:
    the value check reports that one)."""
    from hpsearch.models import list_models, model_hyperparameters  # imports torch

    return frozenset(model_hyperparameters(arch)) if arch in list_models() else frozenset()


def _check_families(space: tuple[ParamSpec, ...], key: str) -> tuple[str, str] | None:
    """A family hyperparameter in an architecture's branch must be one that family takes;
    one outside the branches must be taken by some architecture the space can draw."""
    archs = _drawable_archs(space)
    for where, param, arch in _family_params(space, key, arch=None):
        if arch is not None and param.name not in _takes(arch):
            own = ", ".join(sorted(_takes(arch), key=FAMILY_HYPERPARAMETERS.index)) or "none"
            return where, f"{arch} does not take {param.name}; it takes: {own}"
        if arch is None and not any(param.name in _takes(a) for a in archs):
            return where, (f"no architecture of this space ({', '.join(archs)}) takes "
                           f"{param.name}")
    return None


def _family_params(params: tuple[ParamSpec, ...], key: str, arch: str | None
                   ) -> Iterator[tuple[str, ParamSpec, str | None]]:
    """(key, parameter, the architecture whose branch holds it or None) of every family
    hyperparameter in ``params``."""
    for param in params:
        if param.name in FAMILY_HYPERPARAMETERS:
            yield f"{key}.{param.name}", param, arch
        for choice, branch in param.branches.items():
            inner = choice if param.name == "arch" else arch
            yield from _family_params(branch, f"{key}.{param.name}.{choice}", inner)


def _covers(params: tuple[ParamSpec, ...], name: str, arch: str | None = None) -> bool:
    """Whether ``name`` is drawn on every path through ``params`` (every path that draws
    ``arch``, when given)."""
    def branch_covers(param: ParamSpec) -> bool:
        if not param.branches:
            return False
        if param.name == "arch" and arch in param.branches:
            return _covers(param.branches[arch], name, arch)
        return all(_covers(b, name, arch) for b in param.branches.values())

    return any(p.name == name or branch_covers(p) for p in params)


def _check_required(space: tuple[ParamSpec, ...], key: str) -> tuple[str, str] | None:
    """Every path must draw the hyperparameters that have no default: the general ones
    always, a family's (``depth``) wherever an architecture that takes it is drawn."""
    general = [n for n, default in HYPERPARAMETERS.items() if default is None
               and n not in FAMILY_HYPERPARAMETERS and n not in DATA_DEFAULT_HYPERPARAMETERS]
    missing = [n for n in general if not _covers(space, n)]
    for name in missing:  # drawn in some branches of a parameter: name a branch without it
        for param in space:
            lacking = [c for c, b in param.branches.items() if not _covers(b, name)]
            if lacking and len(lacking) < len(param.branches):
                return f"{key}.{param.name}.{lacking[0]}", f"missing {name}"
    if missing:
        return key, f"missing {', '.join(missing)}"
    required = [n for n in FAMILY_HYPERPARAMETERS if HYPERPARAMETERS[n] is None]
    branched = any(p.name == "arch" and p.branches for p in space)
    for arch in _drawable_archs(space):
        for name in required:
            if name in _takes(arch) and not _covers(space, name, arch):
                return (f"{key}.arch.{arch}" if branched else key), f"missing {name}"
    return None


def _check_level(params: tuple[ParamSpec, ...], key: str,
                 inherited: frozenset[str]) -> tuple[str, str] | None:
    names = [p.name for p in params]
    for param in params:
        where = f"{key}.{param.name}"
        if param.name not in HYPERPARAMETERS:
            return where, f"unknown hyperparameter; known: {', '.join(HYPERPARAMETERS)}"
        if param.name in inherited:
            return where, "already drawn above this branch; name it in one place only"
        problem = check_values(param)
        if problem:
            return where, problem
    drawn = inherited | set(names)
    for param in params:
        for choice, branch in param.branches.items():
            problem = _check_level(branch, f"{key}.{param.name}.{choice}", drawn)
            if problem:
                return problem
    return None
