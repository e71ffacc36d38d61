"""Serving: registering the champion, the pyfunc model MLflow serves, predictions and the
checking of client images.

Names are imported on first use, so importing this package loads no torch.
"""

from hpsearch._imports import lazy_exports

# Where a name is looked for, in this order; each module lists its names in __all__.
__getattr__ = lazy_exports(__name__, ("uris", "images", "image_files", "predict", "classifier",
                                      "registration"))
