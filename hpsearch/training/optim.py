"""Optimizer and learning-rate schedule factories for a trial."""

from __future__ import annotations

import math

import torch
from torch import nn

from hpsearch.params import OPTIMIZERS

__all__ = ["OPTIMIZERS", "build_optimizer", "one_cycle", "one_cycle_values"]

# The one-cycle schedule's shape: warm-up share, and torch's OneCycleLR defaults for the rest.
PCT_START = 0.25  # share of the steps spent warming up
DIV_FACTOR = 25.0  # initial lr = max_lr / DIV_FACTOR
FINAL_DIV_FACTOR = 1e4  # final lr = initial lr / FINAL_DIV_FACTOR
MOMENTUM_RANGE = (0.85, 0.95)  # momentum (SGD) or beta1 (AdamW): lowest at the lr peak


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
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=_scheduled_steps(total_steps),
        pct_start=PCT_START, div_factor=DIV_FACTOR, final_div_factor=FINAL_DIV_FACTOR,
        base_momentum=MOMENTUM_RANGE[0], max_momentum=MOMENTUM_RANGE[1])


def one_cycle_values(*, max_lr: float, total_steps: int) -> tuple[list[float], list[float]]:
    """The values :func:`one_cycle` gives the learning rate and the momentum (SGD's
    ``momentum``, AdamW's ``beta1``) before each optimizer step, as plain lists.

    Entry ``k`` is what the scheduler has set after ``k`` steps, i.e. what step ``k``
    (0-based) trains with; entry ``total_steps`` is the value after the last step. The
    arithmetic is ``OneCycleLR.get_lr``'s (two phases, cosine annealing), so the values are
    equal to the scheduler's; a captured CUDA graph reads them from a device table
    instead of having the scheduler write Python floats that the graph would never see.
    """
    initial_lr = max_lr / DIV_FACTOR
    min_lr = initial_lr / FINAL_DIV_FACTOR
    low, high = MOMENTUM_RANGE
    scheduled = _scheduled_steps(total_steps)
    phases = [(float(PCT_START * scheduled) - 1, (initial_lr, max_lr), (high, low)),
              (scheduled - 1, (max_lr, min_lr), (low, high))]
    lrs, momenta = [], []
    for step in range(total_steps + 1):
        start_step = 0.0
        for i, (end_step, lr_range, momentum_range) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                lrs.append(_annealing_cos(*lr_range, pct))
                momenta.append(_annealing_cos(*momentum_range, pct))
                break
            start_step = end_step
    return lrs, momenta


def _scheduled_steps(total_steps: int) -> int:
    """The steps the schedule spans: ``total_steps``, or one more (never taken) where
    ``OneCycleLR`` would divide by zero because its warm-up ends at step 0
    (``PCT_START * total_steps == 1``: 4 steps, say one epoch of 4 batches)."""
    return total_steps + 1 if PCT_START * total_steps == 1 else total_steps


def _annealing_cos(start: float, end: float, pct: float) -> float:
    """Cosine anneal from ``start`` to ``end`` as ``pct`` goes from 0 to 1 (torch's formula)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
