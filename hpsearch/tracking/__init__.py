"""Tracking: MLflow runs of a study (one experiment per study, one parent run per invocation,
one nested run per trial), figures, the study report and provenance.

Names are imported on first use: ``hpsearch.tracking.tables`` needs neither torch nor MLflow.
"""

from hpsearch._imports import lazy_exports

# Where a name is looked for, in this order; each module lists its names in __all__.
__getattr__ = lazy_exports(__name__, ("tables", "runs", "orphans", "provenance", "figures",
                                      "report"))
