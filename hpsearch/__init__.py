"""hpsearch: MLflow-tracked hyperparameter search for image classifiers.

``hpsearch.run(dataset="fashion_mnist", trials=50)`` runs a study from Python (see
:func:`hpsearch.api.run`); importing the package itself loads nothing heavy.
"""

from hpsearch._imports import lazy_exports

__version__ = "0.1.0"
__all__ = ["__version__", "run"]
__getattr__ = lazy_exports(__name__, ("api",))
