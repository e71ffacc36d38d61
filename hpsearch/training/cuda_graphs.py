"""The whole training step as one CUDA graph, captured once per trial and replayed per batch.

The networks of this search are small: a step at batch 64-512 is some 100-400 kernels of a
few microseconds each, so on a modern GPU the host's launching them, not the GPU, sets the
pace. A CUDA graph launches them all at once. This follows PyTorch's whole-network capture
recipe (``torch.cuda.graphs``; "CUDA Graphs" in the CUDA semantics notes):

- a few eager warm-up steps on a side stream first (cuDNN's benchmark picks its
  algorithms, autograd and the allocator settle); they are real steps on real batches;
- static input and target tensors, filled by ``copy_`` before each replay;
- gradients set to None before capture, so backward allocates them in the graph's private
  pool and every replay overwrites them (no ``zero_grad`` between replays);
- the optimizer update and the one-cycle schedule inside the graph, with the learning rate
  and the momentum in device tensors (:mod:`hpsearch.training.capturable`);
- ``torch.cuda.graph`` registers the default CUDA generator, so dropout draws new numbers
  on every replay; batch norm's running statistics update in place inside the graph;
- autocast with its weight cache off (``make_graphed_callables`` requires it; a cast
  cached at capture would be a stale copy).

A batch of another shape (the last partial batch, when the split is not a multiple of the
batch size) and evaluation run eagerly. Where capture is impossible or fails, the trial
trains eagerly and :attr:`CudaGraphStep.mode` says why, in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from hpsearch.errors import error_line
from hpsearch.training.capturable import CapturableOptimizer, NotCapturable
from hpsearch.training.optim import group_max_lrs, one_cycle, one_cycle_values
from hpsearch.training.step import EagerStep, TrainStep, autocast, batch_outcome, loss_of

__all__ = ["WARMUP_STEPS", "CudaGraphStep", "build_train_step"]

WARMUP_STEPS = 3  # eager steps before capture, as in PyTorch's recipe

Outputs = tuple[Tensor, Tensor]
# capture(body) runs ``body`` under capture and returns (replay, body's static outputs).
Capture = Callable[[Callable[[], Outputs]], tuple[Callable[[], None], Outputs]]


def build_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, *, max_lr: float,
                     total_steps: int, device: torch.device, amp_dtype: torch.dtype | None,
                     label_smoothing: float = 0.0, cuda_graphs: bool = False,
                     compiled: bool = False, class_weights: Tensor | None = None) -> TrainStep:
    """A trial's training step with hpsearch's one-cycle schedule over ``total_steps``.

    Args:
        model: the network (or its ``torch.compile`` wrapper), on ``device``.
        optimizer: from ``build_optimizer``, not stepped yet.
        max_lr: the schedule's peak learning rate.
        total_steps: optimizer steps the schedule spans.
        device: where model and batches live.
        amp_dtype: autocast dtype, or None.
        label_smoothing: cross-entropy label smoothing in [0, 1).
        cuda_graphs: capture the step in a CUDA graph where possible.
        class_weights: float32 tensor (num_classes,) on ``device`` weighting each class's
            loss, or None; every kind of step uses it (eager, compiled, CUDA graph).
        compiled: ``model`` is compiled (then ``torch.compile``'s mode decides about CUDA
            graphs, and this step stays eager).

    Returns:
        A :class:`CudaGraphStep`, or an eager step whose ``mode`` says why it is eager.
    """
    def eager(reason: str) -> EagerStep:
        return EagerStep(model, optimizer, one_cycle(optimizer, max_lr=max_lr,
                                                     total_steps=total_steps),
                         label_smoothing=label_smoothing, amp_dtype=amp_dtype,
                         device=device, mode=f"eager ({reason})", class_weights=class_weights)

    if compiled:
        return eager("--compile: torch.compile's mode decides about CUDA graphs; "
                     "--compile-mode reduce-overhead uses them")
    if not cuda_graphs:
        return eager("CUDA graphs off")
    if device.type != "cuda":
        return eager(f"CUDA graphs need a CUDA device; training on {device.type}")
    try:
        return CudaGraphStep(model, optimizer, max_lr=max_lr, total_steps=total_steps,
                             device=device, amp_dtype=amp_dtype,
                             label_smoothing=label_smoothing, class_weights=class_weights)
    except NotCapturable as exc:
        return eager(f"no CUDA graph: {exc}")


def capture_cuda_graph(body: Callable[[], Outputs]) -> tuple[Callable[[], None], Outputs]:
    """Capture ``body`` into a ``torch.cuda.CUDAGraph``: nothing runs yet."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = body()
    return graph.replay, outputs


class CudaGraphStep:
    """Eager warm-up, then capture once, then one replay per batch of the captured shape.

    Args:
        model: the network, on ``device``, in training mode when called.
        optimizer: from ``build_optimizer`` (AdamW or Nesterov SGD); its parameter groups
            are updated by a :class:`CapturableOptimizer`, not by its own ``step``.
        max_lr, total_steps: the one-cycle schedule (``one_cycle_values``); each parameter
            group peaks at ``max_lr`` times its ``lr_scale`` (``group_max_lrs``).
        device: a CUDA device (any device with a ``capture`` of your own, for tests).
        amp_dtype: autocast dtype, or None.
        label_smoothing: cross-entropy label smoothing.
        capture: how to capture the step (default :func:`capture_cuda_graph`).
        class_weights: float32 tensor (num_classes,) on ``device`` weighting each class's
            loss, or None (a device tensor: the graph reads it, never a host copy).

    Raises:
        NotCapturable: the optimizer cannot be updated inside a graph.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, max_lr: float,
                 total_steps: int, device: torch.device, amp_dtype: torch.dtype | None,
                 label_smoothing: float = 0.0, capture: Capture = capture_cuda_graph,
                 class_weights: Tensor | None = None) -> None:
        self.model, self.device = model, device
        self.amp_dtype, self.label_smoothing = amp_dtype, label_smoothing
        self.class_weights = class_weights
        # Each parameter group its own curve (a backbone's peak is a fraction of the head's);
        # the momentum's does not depend on the peak.
        lr_rows = [one_cycle_values(max_lr=peak, total_steps=total_steps)[0]
                   for peak in group_max_lrs(optimizer, max_lr)]
        momenta = one_cycle_values(max_lr=max_lr, total_steps=total_steps)[1]
        self.update = CapturableOptimizer(optimizer, lr_rows, momenta)
        # Which row of the update's learning rates is a backbone's (None: no such group).
        self._backbone_row = next((i for i, g in enumerate(optimizer.param_groups)
                                   if g.get("name", "").split(".")[0] == "backbone"), None)
        self._capture = capture
        self._replay: Callable[[], None] | None = None
        self._static: tuple[Tensor, Tensor] | None = None
        self._outputs: Outputs | None = None
        self.steps = self.replays = 0
        self.mode = f"cuda graph (warming up: {WARMUP_STEPS} eager steps before capture)"
        self.failure: str | None = None

    @property
    def captured(self) -> bool:
        return self._replay is not None

    @property
    def lr(self) -> float:
        return float(self.update.lr)

    @property
    def lr_backbone(self) -> float | None:
        if self._backbone_row is None:
            return None
        return float(self.update.lrs[self._backbone_row])
    def state_dict(self) -> dict[str, Any]:
        """The update's moments and the schedule's position. The warm-up and capture are
        not state: a step restored in a new process warms up and captures again (its
        warm-up steps are real steps, as here)."""
        return {"update": self.update.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.update.load_state_dict(state["update"])

    def __call__(self, x: Tensor, y: Tensor) -> Outputs:
        self.steps += 1
        if self.captured and x.shape == self._static[0].shape:
            return self._replay_on(x, y)
        if not self.captured and self.failure is None and self.steps > WARMUP_STEPS:
            try:
                self._capture_on(x, y)
            except Exception as exc:  # anything capture refuses: train eagerly, say why
                self._give_up(exc)
            else:
                return self._replay_on(x, y)
        if self.steps <= WARMUP_STEPS and self.device.type == "cuda":
            return self._on_side_stream(x, y)
        return self._body(x, y)

    def _body(self, x: Tensor, y: Tensor) -> Outputs:
        """The whole step; what the graph captures, and what eager steps run."""
        self._clear_grads()
        with autocast(self.device, self.amp_dtype, cache_enabled=False):
            logits = self.model(x)
            loss = loss_of(logits, y, label_smoothing=self.label_smoothing,
                           class_weights=self.class_weights)
        loss.backward()
        self.update.step()
        return batch_outcome(logits, loss, y)

    def _clear_grads(self) -> None:
        if self.captured:
            # The graph owns these gradient buffers: zero them in place for an eager step
            # (its backward accumulates into them), never drop them.
            grads = [p.grad for p in self.update.params if p.grad is not None]
            if grads:
                torch._foreach_zero_(grads)
        else:
            for p in self.update.params:
                p.grad = None

    def _on_side_stream(self, x: Tensor, y: Tensor) -> Outputs:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            outputs = self._body(x, y)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return outputs

    def _capture_on(self, x: Tensor, y: Tensor) -> None:
        static = (x.clone(), y.clone())  # allocated before capture, outside its pool
        guard = nullcontext() if self.device.type != "cuda" else torch.cuda.device(self.device)
        with guard:
            replay, outputs = self._capture(lambda: self._body(*static))
        self._replay, self._static, self._outputs = replay, static, outputs
        self.mode = (f"cuda graph (whole step captured after {WARMUP_STEPS} eager warm-up "
                     f"steps, batch {x.shape[0]})")

    def _replay_on(self, x: Tensor, y: Tensor) -> Outputs:
        self._static[0].copy_(x)
        self._static[1].copy_(y)
        self._replay()
        self.replays += 1
        return self._outputs

    def _give_up(self, exc: Exception) -> None:
        self.failure = error_line(exc, limit=200)
        self.mode = f"eager (CUDA graph capture failed: {self.failure})"
