"""``--compile`` keeps compiling trial after trial: dynamo's recompile limit (8 graphs per
code object) used to turn the 5th differently shaped trial of a process back to eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpsearch.training import fit
from hpsearch.training.compiled import compile_network

CPU = torch.device("cpu")
TRIALS = 6  # 3 graphs each: 18, more than twice the recompile limit of 8


def _batches(n: int, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]


def _mlp(trial: int) -> nn.Module:
    """Trial ``trial``'s network: its own depth and width, as a search draws them."""
    torch.manual_seed(trial)
    width, depth = 8 + trial, trial % 3
    hidden = [layer for _ in range(depth) for layer in (nn.ReLU(), nn.Linear(width, width))]
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), *hidden, nn.Linear(width, 3))


class _CountingBackend:
    """A dynamo backend that runs each graph as traced and counts graphs and calls."""

    def __init__(self) -> None:
        self.graphs = self.calls = 0

    def __call__(self, graph_module: torch.fx.GraphModule, example_inputs):
        self.graphs += 1

        def run(*args):
            self.calls += 1
            return graph_module.forward(*args)

        return run


def _fit_compiled(trial: int, *, backend="inductor", epochs: int = 2) -> None:
    """Train trial ``trial``'s network through ``compile_network``, as a trial does."""
    train, val = _batches(64, 16, seed=1), _batches(40, 16, seed=2)  # val: a partial batch
    model = _mlp(trial)
    fit(compile_network(model, backend=backend), train, val, epochs=epochs,
        optimizer=torch.optim.AdamW(model.parameters()), num_classes=3, device=CPU)


def test_every_trial_of_a_process_trains_and_validates_compiled(recompile_limit_log) -> None:
    counts = []
    for trial in range(TRIALS):
        backend = _CountingBackend()
        _fit_compiled(trial, backend=backend)
        counts.append((backend.graphs, backend.calls))

    forward_calls = 2 * (4 + 3)  # 2 epochs of 4 training and 3 validation batches
    # Training, validation (no_grad), the partial validation batch: each trial compiles
    # its own three graphs and runs every forward through them.
    assert counts == [(3, forward_calls)] * TRIALS
    assert recompile_limit_log.hits == []


@pytest.mark.slow
def test_inductor_keeps_compiling_six_differently_shaped_trials(recompile_limit_log) -> None:
    from torch._dynamo.utils import counters

    graphs = []
    for trial in range(6):
        before = counters["stats"]["unique_graphs"]
        _fit_compiled(trial, epochs=1)
        graphs.append(counters["stats"]["unique_graphs"] - before)

    assert all(n >= 2 for n in graphs), graphs  # training and validation, every trial
    assert recompile_limit_log.hits == []
