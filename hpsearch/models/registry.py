"""Name -> builder registry for the classifier families, after torchvision's ``models/_api.py``.

Each family is one module of :mod:`hpsearch.models.families` that registers its builder with
:func:`register_model`; the families are imported on first use, so importing the registry
(or :mod:`hpsearch.models`) loads no torch. A new architecture is one new file there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hpsearch._imports import import_submodules

if TYPE_CHECKING:
    from torch import nn

    from hpsearch.data_utils import DatasetInfo
    from hpsearch.params import TrialParams

__all__ = ["BUILDER_DEFAULTS", "build_model", "build_network", "list_models", "register_model"]

ModelBuilder = Callable[..., "nn.Module"]

# The keyword arguments every builder takes, with the values used when a caller leaves one
# out (or passes None).
BUILDER_DEFAULTS: dict[str, Any] = {
    "in_channels": 1, "image_size": 28, "num_classes": 10, "depth": 2, "width": 32,
    "dropout": 0.0,
}

_BUILDERS: dict[str, ModelBuilder] = {}
_PLUGINS = "hpsearch.models.families"  # every public module there registers a family


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Returns a decorator that registers a model builder under ``name``.

    Raises:
        ValueError: When the decorator is applied and ``name`` is already registered; silently
            replacing a family would make search results ambiguous.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Returns the registered architecture names, sorted alphabetically."""
    import_submodules(_PLUGINS)
    return sorted(_BUILDERS)


def build_model(name: str, **config: Any) -> nn.Module:
    """Builds the registered architecture ``name`` from a (search-space) configuration.

    Keyword arguments whose value is None are dropped first (as in timm's ``create_model``) and
    :data:`BUILDER_DEFAULTS` fill the rest, so a search space can leave a hyperparameter unset.

    Args:
        name: A name from :func:`list_models`.
        **config: ``in_channels`` (channels C of the input images), ``image_size`` (H = W of
            the square images, pixels), ``num_classes`` (output logits), ``depth`` and
            ``width`` (what they mean is the family's: see its builder), ``dropout`` (drop
            probability before the final Linear layer).

    Returns:
        The model, mapping float32 images (N, in_channels, image_size, image_size) to
        logits (N, num_classes).

    Raises:
        ValueError: If ``name`` is not registered, a size is below 1, or ``dropout`` lies
            outside [0, 1) (NaN included); the message names the argument and its value.
    """
    import_submodules(_PLUGINS)
    builder = _BUILDERS.get(name)
    if builder is None:
        choices = ", ".join(list_models())
        raise ValueError(f"unknown architecture {name!r}; choose one of: {choices}")
    args = BUILDER_DEFAULTS | {key: value for key, value in config.items() if value is not None}
    for arg in ("in_channels", "image_size", "num_classes", "depth", "width"):
        if args[arg] < 1:
            raise ValueError(f"{arg} must be >= 1, got {args[arg]!r}")
    if not 0.0 <= args["dropout"] < 1.0:  # written so that NaN fails it too
        raise ValueError(f"dropout must be in [0, 1), got {args['dropout']!r}")
    return builder(**args)


def build_network(params: TrialParams, info: DatasetInfo) -> nn.Module:
    """The architecture a trial's ``params`` describe, shaped for data set ``info``."""
    return build_model(params.arch, in_channels=info.in_channels, image_size=info.image_size,
                       num_classes=info.num_classes, depth=params.depth, width=params.width,
                       dropout=params.dropout)
