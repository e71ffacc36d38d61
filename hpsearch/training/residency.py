"""Whether a data set stays resident on the training device or is streamed from host memory.

The rule is the one ``hpsearch data inspect`` states for a device of a given size
(:data:`~hpsearch.data_utils.own_images.report.RESIDENT_SHARE`): the images of every worker
may take half of the memory, the other half is the headroom for the networks, their
optimizer states, activations, the float copy of each batch and each worker's CUDA context.
Here the memory is what is free now, so other processes on the device count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Residency", "device_memory", "plan_residency"]


@dataclass(frozen=True)
class Residency:
    """Where a run keeps its training and validation images.

    Attributes:
        resident: True: on the device, copied once (``make_loader(..., stream=False)``);
            False: in host memory, each batch copied over (``stream=True``).
        reason: one line for the run header, e.g. ``resident on cuda:0: 7.5 GB of 80 GB
            free``.
    """

    resident: bool
    reason: str


def device_memory(device: torch.device | str) -> tuple[int, int]:
    """``(free, total)`` bytes of ``device``'s memory now: ``torch.cuda.mem_get_info`` on
    CUDA; elsewhere (CPU, Apple's unified memory) the host's available and total memory
    (psutil's ``available``: free plus reclaimable page cache)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)
    import psutil  # only here: the CUDA path does not need it

    memory = psutil.virtual_memory()
    return memory.available, memory.total


def plan_residency(nbytes: int, device: torch.device | str, *, jobs: int = 1,
                   model_headroom: float | None = None,
                   memory: tuple[int, int] | None = None) -> Residency:
    """Whether the training and validation images fit on ``device`` next to the model.

    Each of ``jobs`` workers holds its own copy of the images on the device, so they fit
    when ``jobs * nbytes <= (1 - model_headroom) * free``. On CUDA, measuring the free
    memory creates the calling process's CUDA context: ask where training runs (each
    worker, with ``jobs`` the number of workers), not in a coordinator that trains nothing.
    Workers that ask after another has copied its data see less free memory; one of them
    may then stream where the others are resident, which changes their speed, not their
    batches.

    Args:
        nbytes: bytes of the uint8 training and validation images (and labels), e.g.
            50,000 RGB images at 224 px: 7.5e9.
        device: the training device; ``cuda`` means the current CUDA device.
        jobs: worker processes training at once on the device (``--jobs``), >= 1.
        model_headroom: share of the free memory kept for everything but the images, in
            [0, 1); default ``1 - RESIDENT_SHARE`` (0.5), ``hpsearch data inspect``'s rule.
        memory: ``(free, total)`` bytes, for a caller (or a test) that knows them; default
            :func:`device_memory` now.

    Returns:
        The decision and its one-line reason.

    Raises:
        ValueError: ``nbytes < 0``, ``jobs < 1`` or ``model_headroom`` outside [0, 1).
    """
    from hpsearch.data_utils.own_images.report import RESIDENT_SHARE

    headroom = 1 - RESIDENT_SHARE if model_headroom is None else model_headroom
    if nbytes < 0 or jobs < 1 or not 0 <= headroom < 1:
        raise ValueError(f"need nbytes >= 0, jobs >= 1 and model_headroom in [0, 1), got "
                         f"{nbytes}, {jobs}, {headroom}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    free, _ = device_memory(device) if memory is None else memory
    if jobs * nbytes <= (1 - headroom) * free:
        copies = f" (a copy for each of {jobs} workers)" if jobs > 1 else ""
        return Residency(True, f"resident on {device}: {_size(nbytes)}{copies} of "
                               f"{_size(free)} free")
    room = "the model" if jobs == 1 else f"{jobs} workers"
    return Residency(False, f"streamed from host memory: {_size(nbytes)} does not fit in "
                            f"{_size(free)} free on {device} with headroom for {room}")


def _size(nbytes: float) -> str:
    """Decimal units, as data sets are sized (50,000 RGB images at 224 px: 7.5 GB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{nbytes:.0f} B"
