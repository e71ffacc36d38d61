"""Study specs: search spaces and study settings, loaded from YAML and validated.

A spec file's shape is a pydantic model (:class:`SpecFile`, ``extra="forbid"``, strict types),
which also publishes the JSON Schema editors use (``hpsearch spec schema``). What the shape
cannot say (a known data set, a metric that fits its direction, hyperparameter values the
objective can use, sampler and pruner arguments Optuna accepts) is checked after it. Every
problem raises :class:`SpecError` naming the file, the key and the reason, so a typo never
silently falls back to a default (the habit of nanoGPT's ``configurator.py``).

Example (``hpsearch/studies/fashion_mnist.yaml`` is the full built-in one)::

    dataset: fashion_mnist
    epochs: 10
    search_space:
      lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
      batch_size: [128, 256, 512]          # a list is a categorical choice
      dropout: {type: float, low: 0.0, high: 0.5}
      arch:                                # choices with parameters of their own
        cnn: {depth: {type: int, low: 2, high: 4}, width: [32, 64]}
        mlp: {depth: [1, 2], width: [32, 64]}
        resnet18: {freeze: [none, backbone, 2],  # a pretrained backbone's own
                   backbone_lr_mult: {type: float, low: 0.01, high: 1.0, log: true}}
      optimizer: adamw                     # a scalar is fixed, not searched
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hpsearch.params import FAMILY_HYPERPARAMETERS, HYPERPARAMETERS
from hpsearch.studies.components import (
    PRUNERS,
    SAMPLERS,
    build_pruner,
    build_sampler,
    keyword_arguments,
)
from hpsearch.studies.file import IMAGE_KEYS, METRICS, SpecFile, build_space, reason_of
from hpsearch.studies.images import ImageSettings, image_settings, resolve_dataset_key
from hpsearch.studies.limits import MAX_SPEC_BYTES, SpecLoader, SpecTooLarge
from hpsearch.studies.narrowing import sizes_up_to, without_choices
from hpsearch.studies.space import (
    ParamSpec,
    architectures,
    check_space,
    default_params,
    enqueue_names,
    pretrained_archs,
    sample,
    taken_by,
)

__all__ = ["OWN_IMAGES_SPEC", "ImageSettings", "SpecError", "StudySpec", "load_spec",
           "parse_spec", "spec_schema", "validate_spec"]

OWN_IMAGES_SPEC = "_own_images"
"""The built-in study of a folder or manifest of one's own images (``_own_images.yaml``)."""


class SpecError(ValueError):
    """A study spec that cannot be used; the message names the file, key and reason.

    A key or value holding anything but printable ASCII is shown with Python's escapes
    (``'search_space.b\\u0430tch_size'``): a Cyrillic letter or a non-breaking space
    would otherwise print as the key it imitates. ``key`` and ``reason`` keep the text.
    """

    def __init__(self, source: str, key: str, reason: str) -> None:
        shown_key = key if _plain(key) else ascii(key)
        shown_reason = reason if _plain(reason) else reason.encode(
            "ascii", "backslashreplace").decode()
        super().__init__(f"{source}: {shown_key}: {shown_reason}")
        self.source, self.key, self.reason = source, key, reason


def _plain(text: str) -> bool:
    return text.isascii() and text.isprintable()


@dataclass(frozen=True)
class StudySpec:
    """A validated study spec. Build one with :func:`load_spec` or :func:`load_builtin_spec`.

    Attributes:
        dataset: a registered data set's name (``hpsearch.data_utils.list_datasets()``), or
            the absolute path of a folder or manifest of one's own images
            (:attr:`dataset_path`).
        epochs: most epochs per trial; the pruner's max resource.
        metric: ``val_accuracy``, ``val_loss``, ``val_balanced_accuracy`` or
            ``val_macro_f1``.
        direction: ``maximize`` or ``minimize``.
        val_fraction: share of the training images held out for validation, in (0, 1).
        augment: random crop (+ horizontal flip where the data set allows) while training.
        sampler: ``{"name": ..., **kwargs}`` for the Optuna sampler.
        pruner: ``{"name": ..., **kwargs}`` for the Optuna pruner.
        search_space: one :class:`ParamSpec` per hyperparameter, defaults filled in.
        enqueue_trials: parameter sets (plain names) tried before the sampler takes over.
        missing_weights: ``stop`` (a backbone whose weights cannot be had stops the run) or
            ``skip`` (it is left out of a new study; see
            :mod:`hpsearch.search.pretrained`).
        scratch_max_image_size: the from-scratch families are left out where the data
            set's images are larger than this (pixels), unless no backbone is left; None:
            never.
        source: the file the spec came from (for messages).
        images: how own images are read (a path as ``dataset``); None for a registered
            data set.
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
    missing_weights: str = "stop"
    scratch_max_image_size: int | None = None
    source: str = "<spec>"
    images: ImageSettings | None = None

    @property
    def dataset_path(self) -> Path | None:
        """The folder or manifest of own images the study trains on, or None for a
        registered data set (whose names are never absolute paths)."""
        path = Path(self.dataset)
        return path if path.is_absolute() else None

    def param(self, name: str) -> ParamSpec:
        """The top-level :class:`ParamSpec` called ``name``; KeyError if there is none."""
        for p in self.search_space:
            if p.name == name:
                return p
        raise KeyError(name)

    def sample(self, trial: Any) -> dict[str, Any]:
        """Draw a trial's hyperparameters (plain names, fixed ones included)."""
        return sample(self.search_space, trial)

    def enqueued_params(self) -> list[dict[str, Any]]:
        """:attr:`enqueue_trials` under the names Optuna knows them by (``cnn.depth``)."""
        return [enqueue_names(self.search_space, params) for params in self.enqueue_trials]

    def pretrained_archs(self) -> list[str]:
        """The architectures whose trials may start from pretrained weights (a backbone
        whose ``pretrained`` can be true): what to fetch before the first trial
        (``hpsearch.models.weights.ensure_weights``)."""
        return pretrained_archs(self.search_space)

    def architectures(self) -> list[str]:
        """The architectures this spec can draw, in the order it names them."""
        return architectures(self.search_space)

    def without_archs(self, archs: Iterable[str]) -> StudySpec:
        """A copy that cannot draw ``archs``: their choices (and branches) and the enqueued
        trials naming them are left out.

        Raises:
            SpecError: no architecture would be left.
        """
        drop = set(archs) & set(self.architectures())
        if not drop:
            return self
        if drop == set(self.architectures()):
            raise SpecError(self.source, "search_space.arch",
                            f"no architecture left without {', '.join(sorted(drop))}")
        data = self.to_dict()
        entries = without_choices(data["search_space"], "arch", drop)
        # A family's hyperparameter drawn for all architectures (or fixed at its default)
        # goes with the last architecture that takes it.
        taken = taken_by(a for a in self.architectures() if a not in drop)
        data["search_space"] = {name: entry for name, entry in entries.items()
                                if name not in FAMILY_HYPERPARAMETERS or name in taken}
        data["enqueue_trials"] = [
            {name: value for name, value in trial.items()
             if name not in FAMILY_HYPERPARAMETERS or name in taken}
            for trial in data["enqueue_trials"] if trial.get("arch") not in drop]
        return validate_spec(data, self.source)

    def image_sizes_up_to(self, size: int) -> tuple[StudySpec, list[str]]:
        """A copy whose searched ``image_size`` takes no value above ``size`` (the data
        set's images, pixels: a trial downsamples, never enlarges), and the values left out.
        Where none would be left, ``image_size`` is not searched (the data set's size);
        an enqueued trial's size above ``size`` becomes the largest size left."""
        data = self.to_dict()
        entry = data["search_space"].get("image_size")
        if entry is None:
            return self, []
        kept, dropped = sizes_up_to(entry, size)
        if not dropped:
            return self, []
        if kept is None:
            del data["search_space"]["image_size"]
        else:
            data["search_space"]["image_size"] = kept
        largest = max(kept) if isinstance(kept, list) else (
            kept["high"] if isinstance(kept, dict) else kept)
        for trial in data["enqueue_trials"]:
            if "image_size" in trial and kept is None:
                del trial["image_size"]
            elif trial.get("image_size", 0) > size:
                trial["image_size"] = largest
        return validate_spec(data, self.source), dropped

    def replace(self, **changes: Any) -> StudySpec:
        """A copy with ``changes`` applied and validated again (e.g. ``epochs`` from the CLI)."""
        return validate_spec(self.to_dict() | changes, self.source)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (what is logged to MLflow); the own-images keys
        only for own images."""
        images = self.images.to_dict() if self.images is not None else {}
        return {
            "dataset": self.dataset,
            "epochs": self.epochs,
            "metric": self.metric,
            "direction": self.direction,
            "val_fraction": self.val_fraction,
            "augment": self.augment,
            **images,
            "sampler": dict(self.sampler),
            "pruner": dict(self.pruner),
            "search_space": {p.name: p.to_dict() for p in self.search_space},
            "enqueue_trials": [dict(t) for t in self.enqueue_trials],
            "missing_weights": self.missing_weights,
            "scratch_max_image_size": self.scratch_max_image_size,
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_spec(path: str | Path) -> StudySpec:
    """Load and validate a user's spec file, in bounded time and memory whatever it holds
    (see :mod:`hpsearch.studies.limits`).

    Raises:
        SpecError: the file is missing or unreadable, larger than 256 KiB, not UTF-8 text,
            not YAML, larger than :data:`~hpsearch.studies.limits.MAX_SPEC_NODES` values
            once its aliases are expanded, or fails validation.
    """
    path = Path(path)
    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:  # refused before a byte is read
            raise SpecError(source, "<file>", _too_big(size))
        with path.open("rb") as file:
            # Never more than the limit: /dev/zero, a pipe or a growing file has no real size.
            data = file.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(source, "<file>", f"cannot be read ({exc.strerror})") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(source, "<file>", _too_big(None))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(source, "<file>", f"not UTF-8 text (byte {exc.start} is "
                                          f"{data[exc.start]:#04x})") from None
    return parse_spec(text, source, base=path.absolute().parent)


def _too_big(size: int | None) -> str:
    what = f"{size:,} bytes" if size is not None else f"more than {MAX_SPEC_BYTES:,} bytes"
    return (f"is {what}; a spec file is at most {MAX_SPEC_BYTES:,} bytes (256 KiB; the "
            "built-in ones are 1 to 4 KB)")


def spec_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, for editors (``hpsearch spec schema``)."""
    from hpsearch.data_utils import list_datasets

    schema = SpecFile.model_json_schema()
    schema["title"] = "hpsearch study spec"
    properties = schema["properties"]
    properties["dataset"] |= {"anyOf": [
        {"enum": list_datasets()},
        {"type": "string", "description": "a folder of images or a .csv/.tsv/.jsonl manifest"}]}
    properties["dataset"].pop("type", None)
    properties["metric"]["enum"] = list(METRICS)
    for kind, names in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        properties[kind]["anyOf"] = [{"type": "string", "enum": list(names)},
                                     {"$ref": "#/$defs/Component"}]
    return schema


def parse_spec(text: str, source: str, base: Path | None = None) -> StudySpec:
    try:
        raw = yaml.load(text, Loader=SpecLoader)
    except SpecTooLarge as exc:
        raise SpecError(source, "<file>", str(exc)) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise SpecError(source, "<file>", f"not valid YAML{line}") from None
    except ValueError as exc:  # an integer of more than 4300 digits (sys.int_info)
        raise SpecError(source, "<file>", f"holds a value Python cannot read: "
                                          f"{str(exc).split(';')[0]}") from None
    if not isinstance(raw, dict):
        raise SpecError(source, "<file>", "must be a YAML mapping of settings")
    return validate_spec(raw, source, base)


def validate_spec(raw: Mapping[str, Any], source: str, base: Path | None = None) -> StudySpec:
    """A :class:`StudySpec` from a spec file's mapping; ``base``: the folder a relative
    dataset path is read from (the spec file's; None: the working directory)."""
    try:
        file = SpecFile.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        # An unknown top-level key first: a misspelt key often explains a "missing" one.
        first = next((e for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1),
                     errors[0])
        raise SpecError(source, *reason_of(first)) from None
    try:
        dataset = resolve_dataset_key(file.dataset, base)
        images = image_settings(file) if Path(dataset).is_absolute() else None
    except ValueError as exc:  # (key, reason)
        raise SpecError(source, *exc.args) from None
    if images is None:
        given = [key for key in IMAGE_KEYS if getattr(file, key) is not None]
        if given:
            raise SpecError(source, given[0], f"only for your own images (a folder or "
                                              f"manifest as dataset); {dataset} is a "
                                              "registered data set")
    if file.metric not in METRICS:
        raise SpecError(source, "metric", f"{file.metric!r} is not one of {', '.join(METRICS)}")
    direction = file.direction or METRICS[file.metric]
    if direction != METRICS[file.metric]:
        raise SpecError(source, "direction", f"{file.metric} is optimised with direction "
                                             f"{METRICS[file.metric]}, not {direction!r}")
    space = _space(file, source)
    return StudySpec(
        dataset=dataset, epochs=file.epochs, metric=file.metric, direction=direction,
        val_fraction=float(file.val_fraction), augment=file.augment,
        sampler=_component("sampler", file.sampler.model_dump(), source),
        pruner=_component("pruner", file.pruner.model_dump(), source), search_space=space,
        enqueue_trials=_enqueued(file.enqueue_trials, space, source),
        missing_weights=file.missing_weights,
        scratch_max_image_size=file.scratch_max_image_size, source=source, images=images)


def _space(file: SpecFile, source: str) -> tuple[ParamSpec, ...]:
    try:
        space = build_space(file.search_space)
    except ValueError as exc:  # build_space says (key, reason)
        raise SpecError(source, *exc.args) from None
    problem = check_space(space)
    if problem:
        raise SpecError(source, *problem)
    # Hyperparameters named nowhere get their defaults, fixed, at the top level: a family's
    # only where an architecture that takes it can be drawn (see default_params).
    order = list(HYPERPARAMETERS)
    return tuple(sorted(space + default_params(space), key=lambda p: order.index(p.name)))


def _component(kind: str, config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Check ``{name: ..., **kwargs}`` against the Optuna class's real signature, then build
    it once, so a bad argument value fails at load time."""
    names = SAMPLERS if kind == "sampler" else PRUNERS
    name = config["name"]
    if name not in names:
        raise SpecError(source, f"{kind}.name", f"{name!r} is not one of {', '.join(names)}")
    allowed = keyword_arguments(kind, name)
    for arg in config:
        if arg != "name" and arg not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise SpecError(source, f"{kind}.{arg}", f"unknown argument of {name}; known: {known}")
    config = {"name": name} | {k: v for k, v in config.items() if k != "name"}
    try:
        if kind == "sampler":
            build_sampler(config, seed=0)
        else:
            build_pruner(config, max_epochs=100)
    except Exception as exc:  # Optuna raises ValueError or TypeError, depending on the check
        raise SpecError(source, kind, f"{name} rejects these arguments: {exc}") from None
    return config


def _enqueued(raw: list[dict[str, Any]], space: tuple[ParamSpec, ...],
              source: str) -> tuple[dict[str, Any], ...]:
    for i, params in enumerate(raw):
        try:
            enqueue_names(space, params)
        except ValueError as exc:
            raise SpecError(source, f"enqueue_trials[{i}]", str(exc)) from None
    return tuple(dict(t) for t in raw)
