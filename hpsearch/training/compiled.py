"""``torch.compile`` for a trial's network, compiled afresh in every trial.

Dynamo keeps its compiled graphs per code object, and every network of a family runs the
same ``forward`` code (``nn.Sequential.forward``, a block's ``forward``), so the graphs of all
the trials in one process pile up on the same few code objects: each new architecture adds
at least two (training, and evaluation under ``no_grad``; the last partial validation batch
adds a third with a dynamic batch dimension). At ``torch._dynamo.config.recompile_limit``
(8) dynamo stops compiling that code and runs it eagerly, logging "torch._dynamo hit
config.recompile_limit" once: seen with ``hpsearch run --compile`` in the 5th of six MLP
trials of different shapes, after which the trials ran eager while they were reported as
compiled. :func:`compile_network` therefore clears dynamo's caches first
(``torch.compiler.reset()``): each trial compiles its own graphs, under the limit, and the
last trial's compiled code is released. Inductor's on-disk caches are kept, so a shape seen
before compiles again in a fraction of the first time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["COMPILE_MODES", "compile_network"]

# torch.compile's modes: "reduce-overhead" adds CUDA graphs (cudagraph trees) on CUDA,
# "max-autotune" also benchmarks kernel choices (and uses CUDA graphs on CUDA).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def compile_network(model: nn.Module, *, mode: str = "default",
                    backend: str | Callable = "inductor") -> nn.Module:
    """``torch.compile(model, mode=mode)`` after clearing dynamo's caches (see the module
    docstring). The compiled wrapper shares ``model``'s parameters; save ``model``.

    Args:
        model: the trial's network, on its device.
        mode: one of :data:`COMPILE_MODES`.
        backend: the compiler backend (tests pass their own: dynamo's graphs without
            inductor's code generation).

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of "
                         f"{', '.join(COMPILE_MODES)}")
    torch.compiler.reset()
    if backend != "inductor":  # modes are inductor options
        return torch.compile(model, backend=backend)
    return torch.compile(model, mode=mode, backend=backend)
