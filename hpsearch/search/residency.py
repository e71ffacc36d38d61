"""Whether a study's training and validation splits stay resident on the device.

STUB, in this one place, until the streamed loader lands (``training/loader.py``'s
``plan_residency`` and ``make_loader(..., stream=True)``, issue 20 item 4): every data set
is resident, as before. When it lands, :func:`plan_residency` is that function (the
same signature) and :class:`~hpsearch.search.session.TrainingSession` passes
``stream=not data.resident`` to ``make_loader``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Residency", "plan_residency"]


@dataclass(frozen=True)
class Residency:
    """Where a study's splits live while its trials train.

    Attributes:
        resident: copied to the device once per process (True), or streamed from host
            memory in batches (False).
        reason: one line for the run's header.
    """

    resident: bool
    reason: str


def plan_residency(nbytes: int, device: torch.device, *, jobs: int = 1) -> Residency:
    """Whether ``nbytes`` of uint8 images fit on ``device`` for each of ``jobs`` workers.
    STUB: always resident (see the module docstring)."""
    return Residency(True, f"resident on {device}: {nbytes / 2**20:,.1f} MiB of images "
                           "copied there once per process")
