"""One training step (forward, loss, backward, optimizer, schedule) as an object that
``fit()`` calls per batch: :class:`EagerStep` runs it op by op; the CUDA-graph step of
:mod:`hpsearch.training.cuda_graphs` replays it from a captured graph. Either reports its
mode in one line (``mode``) for the progress display and the trial's run."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from hpsearch.training.optim import group_lr

__all__ = ["EagerStep", "TrainStep", "autocast", "balanced_class_weights", "batch_outcome",
           "class_weight_tensor", "loss_of"]


class TrainStep(Protocol):
    """What ``fit()`` needs of a training step.

    Attributes:
        mode: one line saying how the step runs and why (``eager (...)``, ``cuda graph
            (...)``).
        lr: the learning rate the next step uses (read once per epoch); the head's, where
            the parameter groups have several.
        lr_backbone: a pretrained backbone's learning rate for the next step, or None where
            no parameter group is a backbone's.
    """

    mode: str

    @property
    def lr(self) -> float: ...

    @property
    def lr_backbone(self) -> float | None: ...
    def state_dict(self) -> dict[str, Any]:
        """What the step has changed besides the model's parameters and buffers (optimizer
        moments, the schedule's position), as tensors and plain containers: it loads with
        ``torch.load(..., weights_only=True)``."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of the same step over the same model."""
        ...

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Train on one batch: float images (B, C, H, W), int64 labels (B,).

        Returns:
            The batch's summed cross-entropy (fp32, 0-d; class-weighted where the step has
            class weights: the weighted mean times the batch size) and its number of correct
            arg-max predictions (int64, 0-d), both on the device, unread.
        """
        ...


def autocast(device: torch.device, amp_dtype: torch.dtype | None, *,
             cache_enabled: bool | None = None) -> AbstractContextManager:
    """``torch.autocast`` to ``amp_dtype`` on ``device``, or nothing when it is None."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype,
                          cache_enabled=cache_enabled)


def balanced_class_weights(counts: Sequence[int]) -> list[float]:
    """Each class's loss weight, inversely proportional to its frequency: ``n_samples /
    (n_classes * count)`` (scikit-learn's ``compute_class_weight("balanced")``; King & Zeng
    2001). A balanced split gets 1.0 for every class; a class with no image gets 0.0.

    Args:
        counts: the training images of each class, in class-index order.
    """
    total, n = sum(counts), len(counts)
    return [total / (n * count) if count else 0.0 for count in counts]


def class_weight_tensor(counts: Sequence[int], device: torch.device | str) -> Tensor:
    """:func:`balanced_class_weights` as a float32 tensor (C,) on ``device``, for
    ``cross_entropy(weight=...)``."""
    return torch.tensor(balanced_class_weights(counts), dtype=torch.float32, device=device)


def loss_of(logits: Tensor, y: Tensor, *, label_smoothing: float,
            class_weights: Tensor | None) -> Tensor:
    """The training loss of a batch: cross-entropy with label smoothing and, where given,
    class weights (the weighted mean over the batch, as torch's ``cross_entropy``: a batch's
    images weigh by their class's weight)."""
    return nn.functional.cross_entropy(logits, y, weight=class_weights,
                                       label_smoothing=label_smoothing)


def batch_outcome(logits: Tensor, loss: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(summed loss, correct predictions) of a batch whose mean loss is ``loss``."""
    return loss.detach().float() * y.shape[0], (logits.detach().argmax(1) == y).sum()


class EagerStep:
    """The step op by op: ``zero_grad``, forward under autocast, backward,
    ``optimizer.step()``, ``scheduler.step()``.

    Args:
        model: returns logits (B, num_classes).
        optimizer: built over ``model``'s parameters.
        scheduler: stepped after every optimizer step, or None.
        label_smoothing: cross-entropy label smoothing in [0, 1).
        amp_dtype: autocast dtype, or None for full precision.
        device: where model and batches live.
        mode: the line :attr:`mode` reports (why this step is eager).
        class_weights: float32 tensor (num_classes,) on ``device`` weighting each class's
            loss (:func:`class_weight_tensor`), or None for none.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, *,
                 label_smoothing: float = 0.0, amp_dtype: torch.dtype | None = None,
                 device: torch.device | None = None, mode: str = "eager",
                 class_weights: Tensor | None = None) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.label_smoothing, self.amp_dtype = label_smoothing, amp_dtype
        self.class_weights = class_weights
        self.device = device
        self.mode = mode

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def lr_backbone(self) -> float | None:
        return group_lr(self.optimizer, "backbone")
    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with autocast(self.device or x.device, self.amp_dtype):
            logits = self.model(x)
            loss = loss_of(logits, y, label_smoothing=self.label_smoothing,
                           class_weights=self.class_weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return batch_outcome(logits, loss, y)
