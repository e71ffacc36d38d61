"""The training loop: one ``fit()`` that knows nothing of Optuna or MLflow.

It reports each epoch through a callback; a callback that raises (for example Optuna's
``TrialPruned``) stops training, and the exception reaches the caller unchanged.

Host-device syncs: per-step loss and accuracy are accumulated in device tensors and read
once per epoch (one ``tolist()`` for training, one for validation), so on a GPU the host
queues steps without waiting for them.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hpsearch.errors import check_interrupted
from hpsearch.training.metrics import balanced_accuracy, macro_f1
from hpsearch.training.small_conv import small_conv_grads
from hpsearch.training.step import EagerStep, TrainStep, autocast

__all__ = ["EpochResult", "EvalResult", "TrainingDiverged", "evaluate", "fit"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; ``epoch`` is 1-based."""

    def __init__(self, epoch: int, loss: float) -> None:
        super().__init__(f"training diverged: loss {loss} at epoch {epoch}")
        self.epoch, self.loss = epoch, loss


@dataclass(frozen=True)
class EvalResult:
    """Loss, accuracy and confusion matrix of a model on one split.

    Attributes:
        loss: mean cross-entropy per image (nats).
        accuracy: share of images whose arg-max logit is the true class, in [0, 1].
        confusion: int64 array (num_classes, num_classes); row = true class,
            column = predicted class; sums to the number of images.
        predicted: int64 array (N,): each image's arg-max class, in batch order (the
            split's order for an unshuffled loader); None if not recorded.
        confidence: float32 array (N,): that class's softmax probability; None likewise.
    """

    loss: float
    accuracy: float
    confusion: np.ndarray
    predicted: np.ndarray | None = None
    confidence: np.ndarray | None = None

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the classes with images, in [0, 1] (from :attr:`confusion`)."""
        return balanced_accuracy(self.confusion)

    @property
    def macro_f1(self) -> float:
        """Mean F1 over the classes true or predicted, in [0, 1] (from :attr:`confusion`)."""
        return macro_f1(self.confusion)


@dataclass(frozen=True)
class EpochResult:
    """What one epoch of :func:`fit` measured.

    Attributes:
        epoch: 1-based epoch number (the step of every per-epoch metric).
        train_loss: mean training cross-entropy per image over the epoch (nats; the
            class-weighted mean where the trial weighs its classes).
        train_accuracy: training accuracy over the epoch, in [0, 1], on augmented images.
        val: validation loss, accuracy and confusion matrix after the epoch.
        lr: learning rate at the end of the epoch (the head's, for a pretrained backbone).
        epoch_seconds: wall time of the training part of the epoch (s).
        images_per_second: training images processed per second.
        lr_backbone: a pretrained backbone's learning rate at the end of the epoch; None
            for a network without a trainable backbone (not a metric then).
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    val: EvalResult
    lr: float
    epoch_seconds: float
    images_per_second: float
    lr_backbone: float | None = None

    def metrics(self) -> dict[str, float]:
        """The epoch's scalar metrics under the names logged to MLflow (``lr_backbone`` only
        where there is one); ``val_balanced_accuracy`` and ``val_macro_f1`` come from the
        validation confusion matrix."""
        backbone = {} if self.lr_backbone is None else {"lr_backbone": self.lr_backbone}
        return {
            "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy,
            "val_loss": self.val.loss,
            "val_accuracy": self.val.accuracy,
            "val_balanced_accuracy": self.val.balanced_accuracy,
            "val_macro_f1": self.val.macro_f1,
            "lr": self.lr,
            "epoch_seconds": self.epoch_seconds,
            "images_per_second": self.images_per_second,
        } | backbone


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Batches,
    *,
    num_classes: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``batches`` of (float images (B, C, H, W), int64 labels (B,)).

    The model is put in eval mode and left there. Everything is read from the device once,
    at the end. Raises ValueError on an empty split.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    classes, confidences = [], []
    for x, y in batches:
        check_interrupted()
        with autocast(device, amp_dtype):
            logits = model(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        probability, predicted = torch.softmax(logits, dim=1).max(dim=1)
        # index_add_ into a fixed-size tensor: bincount on CUDA reads its input's maximum
        # back to the host to size its output, a sync per batch.
        cells = y * num_classes + predicted
        confusion.index_add_(0, cells, torch.ones_like(cells))
        classes.append(predicted)
        confidences.append(probability)
    if not classes:
        raise ValueError("cannot evaluate on an empty split")
    counts = confusion.view(num_classes, num_classes).cpu().numpy()
    total = int(counts.sum())
    return EvalResult(float(loss_sum) / total, float(np.trace(counts)) / total, counts,
                      predicted=torch.cat(classes).cpu().numpy(),
                      confidence=torch.cat(confidences).cpu().numpy())


def fit(
    model: nn.Module,
    train_batches: Batches,
    val_batches: Batches,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    num_classes: int,
    device: torch.device,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_batch: Callable[[int, int, int], None] | None = None,
    train_step: TrainStep | None = None,
    start_epoch: int = 1,
) -> list[EpochResult]:
    """Train ``model`` for ``epochs`` epochs, evaluating on ``val_batches`` after each.

    Args:
        model: on ``device``; returns logits (B, num_classes) for float images (B, C, H, W).
        train_batches: re-iterable; each pass yields one epoch of (images, int64 labels).
        val_batches: re-iterable validation batches, same layout.
        epochs: number of epochs (>= 1).
        optimizer: built over ``model``'s parameters (unused when ``train_step`` is given).
        num_classes: number of classes (size of the confusion matrix).
        device: where model and batches live.
        scheduler: stepped after every optimizer step (e.g. ``OneCycleLR``), or None.
        label_smoothing: cross-entropy label smoothing in [0, 1).
        class_weights: float32 tensor (num_classes,) weighting each class's loss, or None.
        amp_dtype: autocast dtype (``torch.bfloat16`` on CUDA), or None for full precision;
            validation runs under it too. On a CPU, the weight gradients of convolutions on
            small maps are computed as :mod:`~hpsearch.training.small_conv` says.
        on_batch: called as ``on_batch(epoch, done, total)`` when an epoch starts
            (``done`` 0) and after each training step, with host-side counts only (it adds
            no device sync), for progress displays.
        on_epoch: called with each :class:`EpochResult`; an exception it raises stops
            training and propagates.
        train_step: the training step to run per batch (for example the CUDA-graph step
            of ``build_train_step``); default: an :class:`~hpsearch.training.step.EagerStep`
            over ``optimizer``, ``scheduler``, ``label_smoothing``, ``class_weights`` and
            ``amp_dtype``.
        start_epoch: the first epoch to train (1-based): a training continued after epoch
            ``start_epoch - 1``, its model, step and random states restored by the caller.
            Past ``epochs``, nothing is trained.

    Returns:
        One :class:`EpochResult` per epoch completed by this call.

    Raises:
        TrainingDiverged: the epoch's mean training loss is NaN or infinite (checked once
            per epoch, after the callback has seen the epoch).
        ValueError: ``start_epoch`` < 1.
    """
    if train_step is None:
        if optimizer is None:
            raise TypeError("fit() needs an optimizer or a train_step")
        train_step = EagerStep(model, optimizer, scheduler, label_smoothing=label_smoothing,
                               amp_dtype=amp_dtype, device=device, class_weights=class_weights)
    history: list[EpochResult] = []
    if start_epoch < 1:
        raise ValueError(f"start_epoch must be >= 1, got {start_epoch}")
    for epoch in range(start_epoch, epochs + 1):
        start = time.perf_counter()
        progress = None if on_batch is None else functools.partial(on_batch, epoch)
        with small_conv_grads(model, device, amp_dtype):
            train_loss, train_accuracy, seen = _train_epoch(model, train_batches, train_step,
                                                            device, progress)
        seconds = time.perf_counter() - start
        val = evaluate(model, val_batches, num_classes=num_classes, device=device,
                       amp_dtype=amp_dtype)
        result = EpochResult(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            val=val,
            lr=train_step.lr,
            epoch_seconds=seconds,
            images_per_second=seen / seconds if seconds > 0 else math.inf,
            lr_backbone=getattr(train_step, "lr_backbone", None),
        )
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(epoch, train_loss)
    return history


def _train_epoch(model: nn.Module, batches: Batches, step: TrainStep, device: torch.device,
                 on_batch: Callable[[int, int], None] | None = None
                 ) -> tuple[float, float, int]:
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, total = 0, len(batches) if hasattr(batches, "__len__") else 0
    if on_batch is not None:
        on_batch(0, total)
    for done, (x, y) in enumerate(batches, start=1):
        check_interrupted()  # a signal whose exception was swallowed (a flag read, no sync)
        batch_loss, batch_correct = step(x, y)
        loss_sum += batch_loss
        correct += batch_correct
        seen += y.shape[0]
        if on_batch is not None:
            on_batch(done, total)
    if seen == 0:
        raise ValueError("the training split yielded no batch (is batch_size > its size?)")
    loss_total, correct_total = torch.stack([loss_sum, correct.float()]).tolist()
    return loss_total / seen, correct_total / seen, seen
