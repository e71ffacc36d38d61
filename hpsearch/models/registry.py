"""Name -> builder registry for the classifier families, after torchvision's ``models/_api.py``.

Each family is one module of :mod:`hpsearch.models.families` that registers its builder with
:func:`register_model`, saying which hyperparameters it takes; the families are imported on
first use, so importing the registry (or :mod:`hpsearch.models`) loads no torch. A new
architecture is one new file there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from hpsearch._imports import import_submodules
from hpsearch.params import FAMILY_HYPERPARAMETERS

if TYPE_CHECKING:
    from torch import nn

    from hpsearch.data_utils import DatasetInfo, Normalization
    from hpsearch.params import TrialParams

__all__ = ["COMMON_ARGUMENTS", "SCRATCH_HYPERPARAMETERS", "build_model", "build_network",
           "input_stats", "list_models", "model_hyperparameters", "register_model"]

ModelBuilder = Callable[..., "nn.Module"]
# (mean, std) per channel on the 0-1 pixel scale, or None for "the data set's own".
InputStats = Callable[..., "tuple[tuple[float, ...], tuple[float, ...]] | None"]

# The keyword arguments every builder takes. The image's shape and the number of classes
# have no default (a model shaped for another data set would fail far from the cause);
# dropout defaults to none.
COMMON_ARGUMENTS = ("in_channels", "image_size", "num_classes", "dropout")
_REQUIRED = ("in_channels", "image_size", "num_classes")
_DROPOUT_DEFAULT = 0.0
# What a family registered without ``hyperparameters`` takes: the from-scratch families'
# depth and width, with the values used when a caller leaves them out.
SCRATCH_HYPERPARAMETERS: Mapping[str, Any] = MappingProxyType({"depth": 2, "width": 32})


@dataclass(frozen=True)
class _Family:
    builder: ModelBuilder
    hyperparameters: Mapping[str, Any]  # name -> value when a caller leaves it out
    input_stats: InputStats | None


_BUILDERS: dict[str, _Family] = {}
_PLUGINS = "hpsearch.models.families"  # every public module there registers a family


def register_model(name: str, *, hyperparameters: Mapping[str, Any] = SCRATCH_HYPERPARAMETERS,
                   input_stats: InputStats | None = None
                   ) -> Callable[[ModelBuilder], ModelBuilder]:
    """Returns a decorator that registers a model builder under ``name``.

    Args:
        name: the architecture's name in specs and on the command line.
        hyperparameters: the family's own hyperparameters (names from
            :data:`hpsearch.params.FAMILY_HYPERPARAMETERS`) with the value each takes when a
            caller leaves it out; the builder receives exactly these besides
            ``in_channels``, ``image_size``, ``num_classes`` and ``dropout``.
        input_stats: ``input_stats(in_channels=..., **hyperparameters)`` gives the
            per-channel (mean, std) the network expects its input normalised with, or None
            for the data set's own (see :func:`input_stats`); left out: always the data
            set's.

    Raises:
        ValueError: When the decorator is applied and ``name`` is already registered
            (silently replacing a family would make search results ambiguous), or a
            hyperparameter is not a family hyperparameter.
    """
    unknown = sorted(set(hyperparameters) - set(FAMILY_HYPERPARAMETERS))
    if unknown:
        raise ValueError(f"model {name!r}: {', '.join(unknown)} are not family "
                         f"hyperparameters ({', '.join(FAMILY_HYPERPARAMETERS)})")

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _BUILDERS[name] = _Family(builder, MappingProxyType(dict(hyperparameters)),
                                  input_stats)
        return builder

    return decorator


def list_models() -> list[str]:
    """Returns the registered architecture names, sorted alphabetically."""
    import_submodules(_PLUGINS)
    return sorted(_BUILDERS)


def model_hyperparameters(name: str) -> Mapping[str, Any]:
    """The hyperparameters architecture ``name`` takes besides the common ones, with the
    value each takes when a caller leaves it out (``{"depth": 2, "width": 32}`` for the
    from-scratch families).

    Raises:
        ValueError: ``name`` is not registered; the message lists the choices.
    """
    return _family(name).hyperparameters


def build_model(name: str, **config: Any) -> nn.Module:
    """Builds the registered architecture ``name`` from a (search-space) configuration.

    Keyword arguments whose value is None are dropped first (as in timm's ``create_model``),
    and so are the hyperparameters of other families (a search space may draw ``depth`` for
    every architecture); the family's own defaults fill the rest, and ``dropout`` defaults to
    0. ``in_channels``, ``image_size`` and ``num_classes`` are required.

    Args:
        name: A name from :func:`list_models`.
        **config: ``in_channels`` (channels C of the input images), ``image_size`` (H = W of
            the square images, pixels), ``num_classes`` (output logits), ``dropout`` (drop
            probability before the final Linear layer), and the family's hyperparameters
            (:func:`model_hyperparameters`; what they mean is the family's: see its
            builder).

    Returns:
        The model, mapping float32 images (N, in_channels, image_size, image_size) to
        logits (N, num_classes).

    Raises:
        ValueError: If ``name`` is not registered, a keyword is no hyperparameter of any
            family, ``in_channels``, ``image_size`` or ``num_classes`` is missing, a size is
            below 1 (or below what the family supports), or ``dropout`` lies outside [0, 1)
            (NaN included); the message names the argument and value.
    """
    family = _family(name)
    unknown = sorted(set(config) - set(COMMON_ARGUMENTS) - set(FAMILY_HYPERPARAMETERS))
    if unknown:
        raise ValueError(f"unknown hyperparameter {unknown[0]!r} of {name!r}; it takes: "
                         f"{', '.join([*COMMON_ARGUMENTS, *family.hyperparameters])}")
    given = {key: value for key, value in config.items() if value is not None}
    missing = [arg for arg in _REQUIRED if arg not in given]
    if missing:
        raise ValueError(f"building {name!r} needs {', '.join(missing)} (the data set's image "
                         "shape and number of classes)")
    args = ({"dropout": _DROPOUT_DEFAULT} | dict(family.hyperparameters)
            | {key: value for key, value in given.items()
               if key in COMMON_ARGUMENTS or key in family.hyperparameters})
    for arg in ("in_channels", "image_size", "num_classes", "depth", "width"):
        if arg in args and args[arg] < 1:
            raise ValueError(f"{arg} must be >= 1, got {args[arg]!r}")
    if not 0.0 <= args["dropout"] < 1.0:  # written so that NaN fails it too
        raise ValueError(f"dropout must be in [0, 1), got {args['dropout']!r}")
    return family.builder(**args)


def build_network(params: TrialParams, info: DatasetInfo, *,
                  pretrained_weights: bool = False) -> nn.Module:
    """The architecture a trial's ``params`` describe, shaped for data set ``info`` (its
    images at ``params.image_size`` where the trial downsamples them).

    Args:
        params: the trial's hyperparameters.
        info: the data set (channels, image size, classes).
        pretrained_weights: load a backbone's pretrained weights when ``params.pretrained``
            (from torchvision's cache, downloaded when missing: see
            :mod:`hpsearch.models.weights`). False (the default) builds the shapes only:
            for loading a trained state dict (registration, serving), for counting the cost,
            and on the meta device; then nothing is read or downloaded.

    Raises:
        ValueError: as :func:`build_model`.
        hpsearch.models.weights.WeightsUnavailable: the weights are neither cached nor
            downloadable (only with ``pretrained_weights``).
    """
    hyperparameters = {n: getattr(params, n) for n in FAMILY_HYPERPARAMETERS}
    if not pretrained_weights:
        hyperparameters["pretrained"] = False if params.pretrained is not None else None
    return build_model(params.arch, in_channels=info.shape.channels,
                       image_size=params.image_size or info.shape.size,
                       num_classes=info.num_classes, dropout=params.dropout, **hyperparameters)


def input_stats(params: TrialParams, info: DatasetInfo) -> Normalization:
    """The per-channel statistics, on the 0-1 pixel scale, that the network of ``params``
    expects its input normalised with: the pretrained weights' for a backbone with
    ``pretrained`` (ImageNet's, whatever the data set), the data set's
    (``info.normalization``) otherwise. The training loader and the served model both
    normalise with these.

    Raises:
        ValueError: ``params.arch`` is not registered.
    """
    from hpsearch.data_utils.info import Normalization

    family = _family(params.arch)
    if family.input_stats is not None:
        own = {n: getattr(params, n) for n in family.hyperparameters
               if getattr(params, n) is not None}
        stats = family.input_stats(in_channels=info.shape.channels,
                                   **(dict(family.hyperparameters) | own))
        if stats is not None:
            return Normalization(*stats)
    return info.normalization


def _family(name: str) -> _Family:
    import_submodules(_PLUGINS)
    family = _BUILDERS.get(name)
    if family is None:
        raise ValueError(f"unknown architecture {name!r}; choose one of: "
                         f"{', '.join(list_models())}")
    return family
