"""Optimizer and learning-rate schedule factories for a trial."""

from __future__ import annotations

import torch
from torch import nn

from hpsearch.params import OPTIMIZERS

__all__ = ["OPTIMIZERS", "build_optimizer", "one_cycle"]


def build_optimizer(
    model: nn.Module, *, name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019) or SGD with Nesterov momentum 0.9.

    Weight decay applies to weight matrices and kernels only; decaying biases and
    normalisation scales only shrinks them for no regularising effect.

    Raises:
        ValueError: ``name`` is neither ``adamw`` nor ``sgd``.
    """
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if name == "adamw":
        # On CUDA the fused kernel updates all parameters in one launch per step.
        fused = all(p.is_cuda for p in model.parameters()) or None
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def one_cycle(optimizer: torch.optim.Optimizer, *, max_lr: float,
              total_steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """The one-cycle schedule (Smith & Topin 2017, arXiv:1708.07120) over ``total_steps``
    optimizer steps: warm-up over the first quarter, then cosine annealing."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr,
                                               total_steps=total_steps, pct_start=0.25)
