"""Image-classifier families for the search, built by name.

Importing this package registers the ``cnn``, ``mlp``, ``resnet`` and ``vgg`` builders, which all
share one keyword-only signature (in_channels, image_size, num_classes, depth, width, dropout);
use :func:`build_model` to build one from a search configuration.
"""

from hpsearch.models import cnn, mlp, resnet, vgg  # noqa: F401  (imported to register)
from hpsearch.models.registry import build_model, list_models, register_model

__all__ = ["build_model", "list_models", "register_model"]
