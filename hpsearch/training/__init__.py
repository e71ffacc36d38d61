"""Training: the ``fit()`` loop (it knows nothing of Optuna or MLflow) and its training step
(eager or a captured CUDA graph), loaders (device-resident, or streamed from host memory
when ``plan_residency`` finds the data too large), batched augmentation, optimizer and
schedule factories, ``torch.compile`` per trial, per-class metrics.

Names are imported on first use, so importing this package loads no torch.
"""

from hpsearch._imports import lazy_exports

# Where a name is looked for, in this order; each module lists its names in __all__.
__getattr__ = lazy_exports(__name__, ("loop", "loader", "augment", "optim", "device",
                                       "metrics", "step", "cost", "compiled", "cuda_graphs",
                                       "checkpoint"))
