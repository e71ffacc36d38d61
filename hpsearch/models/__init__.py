"""Image-classifier families for the search, built by name.

Every family registers a builder with the hyperparameters it takes; :func:`build_model` builds
one by name and :func:`build_network` from a trial's parameters; :func:`input_stats` says how
the network's input must be normalised. The pretrained backbones' weights are found and
fetched by :mod:`hpsearch.models.weights`, their fine-tuning set-up is
:mod:`hpsearch.models.finetune`. Importing this package loads no torch: the families are
imported on first use, and the names of those two modules when first asked for.
"""

from hpsearch._imports import lazy_exports
from hpsearch.models.registry import (
    COMMON_ARGUMENTS,
    build_model,
    build_network,
    input_stats,
    list_models,
    model_hyperparameters,
    register_model,
)

__all__ = ["COMMON_ARGUMENTS", "build_model", "build_network", "input_stats", "list_models",
           "model_hyperparameters", "register_model"]

# WeightsUnavailable, ensure_weights, weights_available, ... and split_parameters, ...
__getattr__ = lazy_exports(__name__, ("weights", "finetune"))
