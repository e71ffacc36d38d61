"""Why a trial failed: interrupted, out of memory, or an error (a bug, counted towards the
study's consecutive-failure limit), and releasing the device memory a failed trial held."""

from __future__ import annotations

import gc
import signal
import traceback
from dataclasses import dataclass

import torch

from hpsearch.errors import error_line, first_line
from hpsearch.params import TrialParams

__all__ = ["Failure", "classify_failure", "release_memory"]


@dataclass(frozen=True)
class Failure:
    """Why a trial failed.

    Attributes:
        kind: ``interrupted`` (SIGINT/SIGTERM), ``out_of_memory`` or ``error`` (anything
            else: a bug, counted towards the study's consecutive-failure limit).
        reason: one line for people: the progress display, tags and the summary.
        run_status: the MLflow run status: KILLED when interrupted, else FAILED.
    """

    kind: str
    reason: str
    run_status: str


def classify_failure(exc: BaseException, params: TrialParams | None) -> Failure:
    """Classify the exception that ended a trial trained with ``params`` (None: it failed
    before its parameters were drawn)."""
    if isinstance(exc, KeyboardInterrupt):
        signum = getattr(exc, "signum", signal.SIGINT)
        return Failure("interrupted", f"interrupted by {signal.Signals(signum).name}", "KILLED")
    if _is_out_of_memory(exc) and params is not None:
        reason = (f"out of memory with batch_size {params.batch_size} and arch "
                  f"{params.arch} ({_size_of(params)}): {first_line(exc, limit=300)}")
        return Failure("out_of_memory", reason, "FAILED")
    return Failure("error", error_line(exc, limit=300), "FAILED")


def _size_of(params: TrialParams) -> str:
    """What sets the memory a trial's network needs, as its family has it: depth and width
    (from-scratch families), or freeze (a backbone: frozen stages keep no activations for
    the backward pass); and the image size where the trial downsamples."""
    parts = [f"{name} {getattr(params, name)}" for name in ("depth", "width", "freeze")
             if getattr(params, name) is not None]
    if params.image_size is not None:
        parts.append(f"image_size {params.image_size}")
    return ", ".join(parts) or "no size hyperparameters"


def _is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or an allocator's RuntimeError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        words in message for words in ("out of memory", "can't allocate memory",
                                       "failed to allocate"))


def release_memory(exc: BaseException, device: torch.device) -> None:
    """Drop the failed trial's model and optimizer (held by the traceback's frames) and
    return the freed blocks to the device, so the next trial starts with the memory free."""
    traceback.clear_frames(exc.__traceback__)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
