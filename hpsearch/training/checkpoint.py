"""A training's state between two epochs, so that an interrupted training continues where it
stopped and ends exactly as one that never stopped.

:func:`training_state` gathers everything that changes from one epoch to the next: the
model's parameters and buffers, the training step's state (optimizer moments, the one-cycle
schedule's position), the random generators training draws from (torch's CPU generator and
the CUDA device's: dropout, weight initialisation; the loader's device generator: shuffling
and augmentation) and the epochs' results so far. Nothing else draws random numbers during a
trial's training. The state is tensors and plain containers only, so it loads with
``torch.load(..., weights_only=True)`` (no pickled code runs on load), and
:func:`save_state` writes it atomically: a temporary file, then ``os.replace``, so an
interrupt during the write leaves the previous state whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpsearch.errors import signals_deferred
from hpsearch.training.batches import SplitLoader
from hpsearch.training.loop import EpochResult, EvalResult
from hpsearch.training.step import TrainStep

__all__ = ["STATE_FORMAT", "load_state", "restore_training_state", "save_state",
           "training_state"]

STATE_FORMAT = 1  # bumped when the layout below changes; another format is not loaded


def training_state(*, model: nn.Module, step: TrainStep, loader: SplitLoader,
                   device: torch.device, history: Sequence[EpochResult]) -> dict[str, Any]:
    """The state of a training after its last epoch in ``history``.

    Args:
        model: the network (not a ``torch.compile`` wrapper: the same parameters, plain
            names).
        step: the training step (its optimizer and schedule).
        loader: the training loader (its shuffling and augmentation generator).
        device: where training runs (its CUDA generator is saved on CUDA).
        history: every epoch trained so far, in order; the validation predictions of the
            last one are kept (the trial's mistakes grid is drawn from them).

    Returns:
        Tensors (on the CPU) and plain containers.
    """
    return {
        "format": STATE_FORMAT,
        "device_type": device.type,
        "model": {name: value.detach().cpu() for name, value in model.state_dict().items()},
        "step": _to_cpu(step.state_dict()),
        "loader": loader.state_dict(),
        "rng": {"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        "history": [_epoch_state(r, predictions=i == len(history) - 1)
                    for i, r in enumerate(history)],
    }


def restore_training_state(state: dict[str, Any], *, model: nn.Module, step: TrainStep,
                           loader: SplitLoader, device: torch.device) -> list[EpochResult]:
    """Put a :func:`training_state` back into a freshly built model, step and loader of the
    same configuration, and the random generators where they were.

    Returns:
        The epochs trained before the state was taken, in order.

    Raises:
        ValueError: the state is of another format, device type or network (a parameter's
            name or shape differs); nothing has been changed when it is raised about the
            format or the device type.
    """
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"checkpoint format {state.get('format')!r}, expected {STATE_FORMAT}")
    if state["device_type"] != device.type:
        raise ValueError(f"checkpoint of a training on {state['device_type']}, this one is on "
                         f"{device.type}")
    model.load_state_dict(state["model"])
    step.load_state_dict(state["step"])
    loader.load_state_dict(state["loader"])
    torch.set_rng_state(state["rng"]["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    return [_epoch_result(entry) for entry in state["history"]]


def save_state(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (creating its folder): a reader finds the
    previous file or the new one, never a part. SIGINT and SIGTERM wait for the write to
    end (tens of milliseconds), then interrupt as usual.

    Raises:
        OSError: the folder cannot be created or the file written (the previous file, if
            any, is left as it was).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with signals_deferred(), open(temporary, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before it replaces the last good state
            os.replace(temporary, path)
    except BaseException:  # a full disk, say: keep the last good state
        temporary.unlink(missing_ok=True)
        raise


def load_state(path: Path) -> dict[str, Any]:
    """Read a :func:`save_state` file (``weights_only``: tensors and plain data only).

    Raises:
        OSError: it cannot be read.
        Exception: it is not a state file (truncated, another kind); torch's unpickling
            errors vary.
    """
    return torch.load(path, map_location="cpu", weights_only=True)


def _to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it copied to the CPU (the same object there)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _epoch_state(result: EpochResult, *, predictions: bool) -> dict[str, Any]:
    val = result.val
    keep = predictions and val.predicted is not None
    return {
        "epoch": result.epoch, "train_loss": result.train_loss,
        "train_accuracy": result.train_accuracy, "lr": result.lr,
        "epoch_seconds": result.epoch_seconds, "images_per_second": result.images_per_second,
        "val": {"loss": val.loss, "accuracy": val.accuracy,
                "confusion": torch.from_numpy(val.confusion.copy()),
                "predicted": torch.from_numpy(val.predicted.copy()) if keep else None,
                "confidence": torch.from_numpy(val.confidence.copy()) if keep else None},
    }


def _epoch_result(entry: dict[str, Any]) -> EpochResult:
    val = entry["val"]
    predicted, confidence = val["predicted"], val["confidence"]
    return EpochResult(
        epoch=entry["epoch"], train_loss=entry["train_loss"],
        train_accuracy=entry["train_accuracy"],
        val=EvalResult(val["loss"], val["accuracy"], val["confusion"].numpy(),
                       predicted=None if predicted is None else predicted.numpy(),
                       confidence=None if confidence is None else confidence.numpy()),
        lr=entry["lr"], epoch_seconds=entry["epoch_seconds"],
        images_per_second=entry["images_per_second"])
