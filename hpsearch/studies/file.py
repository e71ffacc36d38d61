"""The shape of a study spec file as pydantic models: the JSON Schema comes from here, and
pydantic's errors become the ``(key, reason)`` pairs :class:`~hpsearch.studies.SpecError`
reports (``search_space.lr.low``, ``expected a finite number, got 'tiny'``).

A search-space entry is one of: a scalar (fixed), a list (categorical), a range mapping
(``{type: float|int, low, high, log, step}``), ``{type: categorical, choices: [...]}``, or a
mapping of choices to their own parameters (``{cnn: {depth: ...}, mlp: {...}}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypeAliasType

from hpsearch.studies.space import ParamSpec

__all__ = ["IMAGE_KEYS", "METRICS", "SpecFile", "build_space", "reason_of"]

# Each metric a study may optimise, with its direction. The balanced accuracy (mean recall
# over the classes) and the macro F1 weigh every class alike, however rare: the metrics for
# imbalanced data (computed from the validation confusion matrix after every epoch).
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize",
           "val_balanced_accuracy": "maximize", "val_macro_f1": "maximize"}
# The spec keys of a folder or manifest of one's own images (see ImageSettings).
IMAGE_KEYS = ("image_size", "test_fraction", "dedupe", "path_column", "label_column",
              "split_column")
# Hyperparameters that take real numbers: `1e-4` (no dot), which PyYAML reads as a string,
# is read as a float there rather than tripping users up.
_REAL_VALUED = ("lr", "dropout", "weight_decay", "label_smoothing", "backbone_lr_mult")
_STEP_REASON = "only int ranges take a step, an integer >= 1"


def _as_float(x: Any) -> Any:
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return x  # left for the type check to reject with the key named
    return x


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class FloatRange(_Strict):
    """Real values from ``low`` to ``high`` (both inclusive)."""

    type: Literal["float"]
    low: Annotated[float, BeforeValidator(_as_float)]
    high: Annotated[float, BeforeValidator(_as_float)]
    log: bool = Field(False, description="log-uniform (low must be > 0)")
    step: Any = Field(None, description="not for float ranges")

    @field_validator("step")
    @classmethod
    def _no_step(cls, step: Any) -> None:
        if step is not None:
            raise PydanticCustomError("spec", _STEP_REASON)


class IntRange(_Strict):
    """Integers from ``low`` to ``high`` (both inclusive), every ``step``."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = Field(False, description="log-uniform (low must be > 0; no step > 1)")
    step: int | None = Field(None, description="grid step, an integer >= 1")

    @field_validator("step")
    @classmethod
    def _positive(cls, step: int | None) -> int | None:
        if step is not None and step < 1:
            raise PydanticCustomError("spec", _STEP_REASON)
        return step


Scalar = bool | int | float | str | None


class Categorical(_Strict):
    """One of ``choices`` (the long form of a list)."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)


def _entry_kind(value: Any) -> str:
    if isinstance(value, BaseModel):
        return value.type
    if isinstance(value, Mapping):
        return value["type"] if "type" in value else "conditional"
    return "choices" if isinstance(value, list) else "fixed"


# typing.Union: "Entry" (a forward reference, for the recursion) cannot stand in an X | Y.
Entry = TypeAliasType("Entry", Annotated[Union[  # noqa: UP007
    Annotated[FloatRange, Tag("float")],
    Annotated[IntRange, Tag("int")],
    Annotated[Categorical, Tag("categorical")],
    Annotated[list[Scalar], Tag("choices")],
    Annotated[Scalar, Tag("fixed")],
    # {choice: {hyperparameter: entry}}: parameters drawn only when that choice is.
    Annotated[dict[str, dict[str, "Entry"]], Tag("conditional")],
], Discriminator(_entry_kind)])


class Component(BaseModel):
    """An Optuna sampler or pruner: ``name`` and the class's keyword arguments."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    name: str


def _named(default: str):
    """A name alone stands for ``{name: ...}``; a mapping without one names ``default``."""

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, Mapping) and "name" not in value:
            return {"name": default, **value}
        return value

    return BeforeValidator(convert)


class SpecFile(_Strict):
    """A study spec file (YAML): the study's settings and its search space."""

    dataset: str = Field(description="a registered data set (fashion_mnist, mnist, cifar10), "
                                     "or the path of a folder of your own images or of a "
                                     ".csv/.tsv/.jsonl manifest (relative to the spec file's "
                                     "folder); a registered name wins over a path")
    epochs: int = Field(10, ge=1, description="most epochs one trial trains (Hyperband's "
                                              "max_resource)")
    metric: str = Field("val_accuracy", description="val_accuracy, val_loss, "
                                                    "val_balanced_accuracy or val_macro_f1, "
                                                    "reported to the pruner after every epoch")
    direction: str | None = Field(None, description="maximize or minimize; must agree with "
                                                    "the metric")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of the training set "
                                                             "held out for validation")
    augment: bool = Field(True, description="random crop (and flip where the data set "
                                            "allows) while training")
    # Own images only (a path as dataset); None: the default, and not given.
    image_size: int | None = Field(None, ge=8, le=1024, description=(
        "own images: side of the square images the cache holds, pixels (default: the median "
        "shorter side of the images, clipped to 16..224, rounded down to a multiple of 8)"))
    test_fraction: float | None = Field(None, ge=0, lt=1, description=(
        "own images: share of the training files carved out for the test split where no "
        "test/ folder or split column gives one (default 0.1; 0: no test split)"))
    dedupe: bool | None = Field(None, description=(
        "own images: drop images that are also in an earlier split from val and test "
        "(default false)"))
    path_column: str | None = Field(None, description=(
        "own images: a manifest's column (JSONL: key) of image paths (default path)"))
    label_column: str | None = Field(None, description=(
        "own images: a manifest's column of class labels (default label)"))
    split_column: str | None = Field(None, description=(
        "own images: a manifest's column of splits, train/val/test (default split; optional "
        "in the manifest)"))
    sampler: Annotated[Component, _named("tpe")] = Field(
        default_factory=lambda: Component(name="tpe"),
        description="Optuna sampler: {name: tpe|random, ...its keyword arguments}")
    pruner: Annotated[Component, _named("hyperband")] = Field(
        default_factory=lambda: Component(name="hyperband"),
        description="Optuna pruner: {name: hyperband|median|..., ...its keyword arguments}")
    search_space: dict[str, Entry] = Field(
        description="hyperparameter -> range, list of choices, fixed value, or "
                    "{choice: {its own hyperparameters}}")
    enqueue_trials: list[dict[str, Any]] = Field(
        default_factory=list, description="list of parameter sets to try first "
                                          "(Study.enqueue_trial)")
    missing_weights: Literal["stop", "skip"] = Field(
        "stop", description="a pretrained backbone whose weights are neither cached nor "
                            "downloadable: stop before the first trial (exit 2, naming the "
                            "file and the folder to put it in), or skip: leave it out of a "
                            "new study with one line saying so (a resumed study keeps the "
                            "architectures it was created with)")
    scratch_max_image_size: int | None = Field(
        None, ge=1, description="leave the from-scratch families (those without pretrained "
                                "weights) out where the data set's images are larger than "
                                "this many pixels, unless no backbone is left; null: never")


def build_space(entries: Mapping[str, Any], key: str = "search_space") -> tuple[ParamSpec, ...]:
    """:class:`ParamSpec` objects from validated entries.

    Raises:
        ValueError: ``(key, reason)``: an empty range or list, or a log scale from 0.
    """
    return tuple(_param(name, entry, f"{key}.{name}") for name, entry in entries.items())


def _param(name: str, entry: Any, key: str) -> ParamSpec:
    real = name in _REAL_VALUED
    if isinstance(entry, (FloatRange, IntRange)):
        if entry.low > entry.high:
            raise ValueError(key, f"empty range: low {entry.low} > high {entry.high}")
        if entry.log and entry.low <= 0:
            raise ValueError(key, f"log scale needs low > 0, got {entry.low}")
        step = getattr(entry, "step", None)
        if step is not None and step > 1 and entry.log:
            # Optuna's IntDistribution refuses the pair; say so now, not in every trial.
            raise ValueError(f"{key}.step", "a log-scale range cannot take a step > 1")
        return ParamSpec(name, entry.type, low=entry.low, high=entry.high, log=entry.log,
                         step=step)
    if isinstance(entry, Categorical):
        entry = entry.choices
    if isinstance(entry, list):
        if not entry:
            raise ValueError(key, "empty list of choices")
        return ParamSpec(name, "categorical",
                         choices=tuple(_as_float(v) if real else v for v in entry))
    if isinstance(entry, dict):
        if not entry:
            raise ValueError(key, "empty list of choices")
        branches = {choice: build_space(sub, f"{key}.{choice}") for choice, sub in entry.items()}
        return ParamSpec(name, "categorical", choices=tuple(entry), branches=branches)
    return ParamSpec(name, "fixed", value=_as_float(entry) if real else entry)


def reason_of(error: Mapping[str, Any]) -> tuple[str, str]:
    """``(key, reason)`` for one of pydantic's validation errors of a :class:`SpecFile`."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    key = _key(loc)
    top = len(loc) == 1
    if kind == "extra_forbidden":
        fields = _fields_at(loc)
        return key, (f"unknown key; known keys: {fields}" if top
                     else f"unknown key; known: {fields}")
    if kind == "missing":
        description = SpecFile.model_fields[loc[0]].description if top else None
        return key, f"missing; {description}" if description else "missing"
    if kind == "union_tag_invalid":
        return f"{key}.type", f"expected float, int or categorical, got {value['type']!r}"
    if loc[-1] == "step":
        return key, _STEP_REASON
    return key, _type_reason(kind, value, loc, error)


def _type_reason(kind: str, value: Any, loc: tuple, error: Mapping[str, Any]) -> str:
    got = "a boolean" if isinstance(value, bool) else repr(value)
    if kind == "int_type":
        return f"expected an integer, got {got}"
    if kind in ("float_type", "finite_number"):
        number = "a finite number" if loc[-1] in ("low", "high") else "a number"
        return f"expected {number}, got {got}"
    if kind == "bool_type":
        return f"expected true or false, got {value!r}"
    if kind == "string_type":
        return f"expected a string, got {value!r}"
    if loc == ("image_size",) and kind in ("greater_than_equal", "less_than_equal"):
        return f"must be in 8..1024 pixels, got {value!r}"
    if loc == ("test_fraction",) and kind in ("greater_than_equal", "less_than"):
        return f"must lie in [0, 1), got {value!r}"
    if kind == "greater_than_equal":
        return f"must be >= {error['ctx']['ge']}, got {value!r}"
    if kind in ("greater_than", "less_than"):
        return f"must lie in (0, 1), got {value!r}"
    if loc[0] in ("sampler", "pruner"):
        return f"expected a mapping with a 'name', got {value!r}"
    if loc[0] == "enqueue_trials":
        return "expected a list of parameter mappings"
    if kind == "list_type":
        return "expected a list of choices"
    if kind == "too_short":
        return "empty list of choices"
    if kind in ("dict_type", "model_type"):
        return f"expected a mapping, got {value!r}"
    return error["msg"]


def _key(loc: tuple) -> str:
    """``search_space.lr.low`` from pydantic's location, without its union tags."""
    if loc[0] == "enqueue_trials":
        return "enqueue_trials" if len(loc) < 2 else f"enqueue_trials[{loc[1]}]"
    parts, rest = [str(loc[0])], list(loc[1:])
    if loc[0] != "search_space":
        return ".".join(parts + [str(r) for r in rest])
    while rest:
        parts.append(str(rest.pop(0)))  # a hyperparameter
        tag = rest.pop(0) if rest else None
        if tag == "conditional":
            if rest:
                parts.append(str(rest.pop(0)))  # the choice; its hyperparameter follows
            continue
        if tag in ("float", "int", "categorical"):
            parts += [str(r) for r in rest[:1]]  # the range's field
        break
    return ".".join(parts)


def _fields_at(loc: tuple) -> str:
    """The known keys where an unknown one was found."""
    models = {"float": FloatRange, "int": IntRange, "categorical": Categorical}
    tags = [part for part in loc if part in models]
    model = models[tags[-1]] if tags and loc[0] == "search_space" else SpecFile
    return ", ".join(model.model_fields)
