"""Training: the ``fit()`` loop (it knows nothing of Optuna or MLflow) and its training step
(eager or a captured CUDA graph), device-resident loaders, batched augmentation, optimizer
and schedule factories, ``torch.compile`` per trial, per-class metrics.

Names are imported on first use, so importing this package loads no torch.
"""

from hpsearch._imports import lazy_exports

_EXPORTS = {
    "EpochResult": "loop", "EvalResult": "loop", "TrainingDiverged": "loop",
    "evaluate": "loop", "fit": "loop",
    "EVAL_BATCH_SIZE": "loader", "DeviceLoader": "loader", "make_loader": "loader",
    "normalize": "loader",
    "random_crop": "augment", "random_hflip": "augment",
    "OPTIMIZERS": "optim", "build_optimizer": "optim", "one_cycle": "optim",
    "autocast_dtype": "device", "device_name": "device", "resolve_device": "device",
    "set_deterministic": "device",
    "EagerStep": "step", "TrainStep": "step",
    "CudaGraphStep": "cuda_graphs", "build_train_step": "cuda_graphs",
    "COMPILE_MODES": "compiled", "compile_network": "compiled",
    "one_cycle_values": "optim",
    "per_class_report": "metrics", "safe_name": "metrics",
    "count_parameters": "cost", "macs_per_image": "cost",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
