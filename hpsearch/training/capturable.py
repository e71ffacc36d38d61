"""AdamW and SGD updates whose learning rate and momentum live in device tensors, so that a
CUDA graph capturing the step sees each step's values.

A captured graph replays its kernels with the arguments they were captured with: a Python
float (``group["lr"]``, ``betas``, ``momentum``) is frozen at capture. hpsearch's one-cycle
schedule changes the learning rate and the momentum (SGD's ``momentum``, AdamW's ``beta1``)
at every step, so both must be tensors that the graph reads and advances itself. torch's
``capturable=True`` AdamW takes a tensor learning rate but reads a tensor ``beta1`` through
``_foreach_lerp_`` / ``_foreach_pow`` Scalar arguments, i.e. with ``.item()``, a host sync
that capture forbids; SGD has no tensor momentum at all. So this module does the two
updates itself in ``torch._foreach_*`` ops with tensor operands only (the ops torch's own
capturable AdamW uses), with the arithmetic of ``torch.optim.AdamW`` (decoupled weight
decay, bias correction with the current ``beta1``, as torch computes it) and of
``torch.optim.SGD`` (Nesterov, no dampening, coupled weight decay).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CapturableOptimizer", "NotCapturable"]


class NotCapturable(ValueError):
    """The optimizer is not one this module can update inside a CUDA graph; the message
    says why."""


@dataclass
class _Group:
    """A parameter group and the update's state for it (moments of AdamW, SGD's momentum
    buffers in ``moments``; AdamW's second moments in ``squares``)."""

    params: list[Tensor]
    weight_decay: float
    moments: list[Tensor]
    squares: list[Tensor]


class CapturableOptimizer:
    """One update step of a ``build_optimizer`` AdamW or SGD, with the schedule on the device.

    Takes over the parameter groups of ``optimizer`` (their parameters, weight decay, AdamW's
    ``beta2`` and ``eps``), keeps its own state (zeros, as a fresh torch optimizer's), and
    after every update advances the learning rate and momentum to the schedule's next entry.
    Nothing in :meth:`step` reads a device value back to the host.

    Args:
        optimizer: a ``torch.optim.AdamW`` or ``torch.optim.SGD`` (Nesterov) whose state is
            still empty; its own ``step`` is not used.
        lr_values: learning rate before step 0, 1, ... (``one_cycle_values``); steps past the
            end keep the last value. One list for every group, or one list per parameter
            group, in the optimizer's order (each group its own one-cycle curve: a
            backbone's peak is a fraction of the head's).
        momentum_values: SGD's momentum or AdamW's ``beta1``, the same way.

    Raises:
        NotCapturable: another optimizer class, or an option this update does not implement
            (AMSGrad, maximize, dampening, SGD without Nesterov momentum).
    """

    def __init__(self, optimizer: torch.optim.Optimizer,
                 lr_values: Sequence[float] | Sequence[Sequence[float]],
                 momentum_values: Sequence[float]) -> None:
        self.kind = _kind(optimizer)
        self.groups = [_Group(list(g["params"]), float(g["weight_decay"]),
                              _zeros_like(g["params"]),
                              _zeros_like(g["params"]) if self.kind == "adamw" else [])
                       for g in optimizer.param_groups]
        first = optimizer.param_groups[0]
        self.beta2 = float(first["betas"][1]) if self.kind == "adamw" else 0.0
        self.eps = float(first.get("eps", 0.0))
        device = next(p.device for g in optimizer.param_groups for p in g["params"])
        rows = _lr_rows(lr_values, len(self.groups))
        # Row g: group g's learning rate before each step; the last row: the momentum.
        table = torch.tensor([*rows, list(momentum_values)], dtype=torch.float32,
                             device=device)
        self._table = table
        self._index = torch.zeros(1, dtype=torch.int64, device=device)
        self.lrs = table[:-1, 0].clone()  # (groups,) device tensor, updated in place
        self.momentum = table[-1, 0].clone()  # 0-d device tensor, updated in place
        self._step = torch.zeros((), dtype=torch.float32, device=device)

    @property
    def lr(self) -> Tensor:
        """The first group's learning rate (the head's), a 0-d view of :attr:`lrs`."""
        return self.lrs[0]

    @property
    def params(self) -> list[Tensor]:
        return [p for group in self.groups for p in group.params]

    def state_tensors(self) -> list[Tensor]:
        """Every tensor :meth:`step` changes besides the parameters: moments, the step
        count, the schedule position and its current values."""
        moments = [t for group in self.groups for t in (*group.moments, *group.squares)]
        return [*moments, self._step, self._index, self.lrs, self.momentum]

    def state_dict(self) -> dict[str, list[Tensor]]:
        """Copies of :meth:`state_tensors` on the CPU (tensors only: it loads with
        ``torch.load(..., weights_only=True)``)."""
        return {"state": [t.detach().cpu().clone() for t in self.state_tensors()]}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, list[Tensor]]) -> None:
        """Copy a :meth:`state_dict` into the state tensors, in place (a captured graph
        keeps reading the same tensors).

        Raises:
            ValueError: the state is of another optimizer (other tensors or shapes).
        """
        mine, saved = self.state_tensors(), state["state"]
        if len(mine) != len(saved) or any(a.shape != b.shape for a, b in zip(mine, saved)):
            raise ValueError("the saved state is of another optimizer or model")
        for tensor, value in zip(mine, saved):
            tensor.copy_(value)

    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter that has a gradient, then advance the schedule."""
        self._step += 1
        for g, group in enumerate(self.groups):
            with_grad = [i for i, p in enumerate(group.params) if p.grad is not None]
            if not with_grad:
                continue
            params = [group.params[i] for i in with_grad]
            grads = [p.grad for p in params]
            moments = [group.moments[i] for i in with_grad]
            if self.kind == "adamw":
                squares = [group.squares[i] for i in with_grad]
                self._adamw(params, grads, moments, squares, group.weight_decay, self.lrs[g])
            else:
                self._sgd(params, grads, moments, group.weight_decay, self.lrs[g])
        last = self._table.shape[1] - 1
        self._index.add_(1).clamp_(max=last)
        self.lrs.copy_(self._table[:-1].index_select(1, self._index).squeeze(1))
        self.momentum.copy_(self._table[-1].index_select(0, self._index).squeeze(0))

    def _adamw(self, params: list[Tensor], grads: list[Tensor], moments: list[Tensor],
               squares: list[Tensor], weight_decay: float, lr: Tensor) -> None:
        beta1 = self.momentum
        if weight_decay:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        torch._foreach_mul_(moments, beta1)
        torch._foreach_add_(moments, torch._foreach_mul(grads, 1 - beta1))
        torch._foreach_mul_(squares, self.beta2)
        torch._foreach_addcmul_(squares, grads, grads, value=1 - self.beta2)
        bias_correction1 = 1 - beta1 ** self._step
        bias_correction2_sqrt = (1 - torch.pow(self.beta2, self._step)).sqrt()
        denominators = torch._foreach_sqrt(squares)
        torch._foreach_div_(denominators, bias_correction2_sqrt)
        torch._foreach_add_(denominators, self.eps)
        # params += moment / (denominator / -step_size), step_size = lr / bias_correction1
        torch._foreach_div_(denominators, -lr / bias_correction1)
        torch._foreach_addcdiv_(params, moments, denominators)

    def _sgd(self, params: list[Tensor], grads: list[Tensor], buffers: list[Tensor],
             weight_decay: float, lr: Tensor) -> None:
        momentum = self.momentum
        if weight_decay:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        # buffer = momentum * buffer + grad; from a zero buffer the first step gives the
        # gradient itself, as torch's SGD (which starts its buffer as a copy of it).
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, grads)
        nesterov = torch._foreach_add(grads, torch._foreach_mul(buffers, momentum))
        torch._foreach_mul_(nesterov, lr)
        torch._foreach_sub_(params, nesterov)


def _lr_rows(lr_values: Sequence[float] | Sequence[Sequence[float]],
             groups: int) -> list[list[float]]:
    """One learning-rate row per group: ``lr_values`` itself, or each of its lists."""
    if lr_values and isinstance(lr_values[0], Sequence):
        if len(lr_values) != groups:
            raise ValueError(f"{len(lr_values)} learning-rate lists for {groups} parameter "
                             "groups")
        return [list(row) for row in lr_values]
    return [list(lr_values)] * groups


def _zeros_like(params: Sequence[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]


def _kind(optimizer: torch.optim.Optimizer) -> str:
    group = optimizer.param_groups[0]
    if isinstance(optimizer, torch.optim.AdamW):
        kind = "adamw"
        if group.get("amsgrad"):
            raise NotCapturable("AMSGrad is not implemented")
    elif isinstance(optimizer, torch.optim.SGD):
        kind = "sgd"
        if not group.get("nesterov") or group.get("dampening"):
            raise NotCapturable("only SGD with Nesterov momentum and no dampening is "
                                "implemented")
    else:
        raise NotCapturable(f"{type(optimizer).__name__} is not implemented (AdamW, SGD "
                            "are)")
    if group.get("maximize") or group.get("differentiable"):
        raise NotCapturable("maximize/differentiable optimizers are not implemented")
    if optimizer.state:
        raise NotCapturable("the optimizer has already stepped")
    return kind
