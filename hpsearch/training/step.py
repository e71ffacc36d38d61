"""One training step (forward, loss, backward, optimizer, schedule) as an object that
``fit()`` calls per batch: :class:`EagerStep` runs it op by op; the CUDA-graph step of
:mod:`hpsearch.training.cuda_graphs` replays it from a captured graph. Either reports its
mode in one line (``mode``) for the progress display and the trial's run."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from hpsearch.training.optim import group_lr

__all__ = ["EagerStep", "TrainStep", "autocast", "batch_outcome"]


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
            The batch's summed cross-entropy (fp32, 0-d) and its number of correct
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
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, *,
                 label_smoothing: float = 0.0, amp_dtype: torch.dtype | None = None,
                 device: torch.device | None = None, mode: str = "eager") -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.label_smoothing, self.amp_dtype = label_smoothing, amp_dtype
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
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return batch_outcome(logits, loss, y)
