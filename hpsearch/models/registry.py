"""Name -> builder registry for the classifier families, after torchvision's ``models/_api.py``."""

from collections.abc import Callable
from typing import Any

from torch import nn

ModelBuilder = Callable[..., nn.Module]

_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Returns a decorator that registers a model builder under ``name``.

    Args:
        name: Architecture name used by :func:`build_model`, e.g. ``"resnet"``.

    Returns:
        A decorator that stores the builder and returns it unchanged.

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
    return sorted(_BUILDERS)


def build_model(name: str, **config: Any) -> nn.Module:
    """Builds the registered architecture ``name`` from a (search-space) configuration.

    Keyword arguments whose value is None are dropped first (as in timm's ``create_model``), so a
    search space can leave a hyperparameter unset and get the builder's default.

    Args:
        name: A name from :func:`list_models`.
        **config: Keyword arguments for the builder, e.g. ``depth=3, width=16, dropout=None``.

    Returns:
        The model, mapping float32 images (N, in_channels, image_size, image_size) to
        logits (N, num_classes).

    Raises:
        ValueError: If ``name`` is not registered, or the builder rejects an argument value.
    """
    builder = _BUILDERS.get(name)
    if builder is None:
        choices = ", ".join(list_models())
        raise ValueError(f"unknown architecture {name!r}; choose one of: {choices}")
    return builder(**{key: value for key, value in config.items() if value is not None})


def check_builder_args(
    *, in_channels: int, image_size: int, num_classes: int, depth: int, width: int, dropout: float
) -> None:
    """Validates the arguments shared by every builder.

    Raises:
        ValueError: If ``in_channels``, ``image_size``, ``num_classes``, ``depth`` or ``width``
            is below 1, or ``dropout`` lies outside [0, 1); the message names the argument and
            its value.
    """
    sizes = dict(
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        depth=depth,
        width=width,
    )
    for arg, value in sizes.items():
        if value < 1:
            raise ValueError(f"{arg} must be >= 1, got {value!r}")
    # Written as a negated range check so that NaN is rejected too.
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
