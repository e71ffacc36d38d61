"""Search: the study runner, the objective, coordination of workers and ``--jobs`` worker
processes.

Names are imported on first use, so importing this package loads no torch.
"""

from hpsearch._imports import lazy_exports

# Where a name is looked for, in this order; each module lists its names in __all__.
__getattr__ = lazy_exports(__name__, ("config", "progress", "storage", "study", "runner",
                                       "objective"))
