"""Image-classifier families for the search, built by name.

Every family registers a builder taking the keyword arguments of :data:`BUILDER_DEFAULTS`;
:func:`build_model` builds one by name and :func:`build_network` from a trial's parameters.
Importing this package loads no torch: the families are imported on first use.
"""

from hpsearch.models.registry import (
    BUILDER_DEFAULTS,
    build_model,
    build_network,
    list_models,
    register_model,
)

__all__ = ["BUILDER_DEFAULTS", "build_model", "build_network", "list_models", "register_model"]
