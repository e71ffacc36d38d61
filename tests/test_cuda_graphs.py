"""The CUDA-graph training step, checked on the CPU: the schedule and optimizer arithmetic it
captures, that its body never reads the device back (capture forbids it), its capture /
replay / fallback logic with a stand-in for ``torch.cuda.graph``, and the reasons it gives
for training eagerly."""

from __future__ import annotations

import io

import optuna
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hpsearch.search.objective import Objective, TrialData
from hpsearch.search.progress import Reporter
from hpsearch.studies import load_builtin_spec
from hpsearch.training.capturable import CapturableOptimizer, NotCapturable
from hpsearch.training.cuda_graphs import WARMUP_STEPS, CudaGraphStep, build_train_step
from hpsearch.training.optim import build_optimizer, one_cycle, one_cycle_values
from hpsearch.training.step import EagerStep

CPU = torch.device("cpu")


def _net(seed: int = 1) -> nn.Module:
    """Conv + BatchNorm + Linear on (B, 1, 8, 8) images, 3 classes; no dropout, so two
    copies trained on the same batches stay comparable."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _batches(sizes: list[int], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))
            for n in sizes]


def _momentum(optimizer: torch.optim.Optimizer) -> float:
    group = optimizer.param_groups[0]
    return group["betas"][0] if "betas" in group else group["momentum"]


@pytest.mark.parametrize("name", ["adamw", "sgd"])
@pytest.mark.parametrize("total_steps", [1, 2, 3, 4, 5, 8, 100, 843])
def test_one_cycle_values_equal_torchs_schedule_step_by_step(name: str,
                                                             total_steps: int) -> None:
    optimizer = build_optimizer(_net(), name=name, lr=0.02, weight_decay=0.0)
    scheduler = one_cycle(optimizer, max_lr=0.02, total_steps=total_steps)
    lrs, momenta = [optimizer.param_groups[0]["lr"]], [_momentum(optimizer)]
    for _ in range(total_steps):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        momenta.append(_momentum(optimizer))

    assert one_cycle_values(max_lr=0.02, total_steps=total_steps) == (lrs, momenta)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_capturable_update_trains_as_torchs_optimizer_and_one_cycle(name: str) -> None:
    reference, ours = _net(), _net()
    optimizer = build_optimizer(reference, name=name, lr=0.05, weight_decay=0.01)
    scheduler = one_cycle(optimizer, max_lr=0.05, total_steps=30)
    update = CapturableOptimizer(build_optimizer(ours, name=name, lr=0.05, weight_decay=0.01),
                                 *one_cycle_values(max_lr=0.05, total_steps=30))
    for x, y in _batches([16] * 30):
        for model in (reference, ours):
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
        update.step()
        assert float(update.lr) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-6)
        assert float(update.momentum) == pytest.approx(_momentum(optimizer), rel=1e-6)

    for expected, got in zip(reference.parameters(), ours.parameters()):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # The frozen BatchNorm statistics saw the same batches.
    torch.testing.assert_close(ours[1].running_var, reference[1].running_var)


def test_capturable_update_refuses_an_optimizer_it_does_not_implement() -> None:
    model = _net()
    with pytest.raises(NotCapturable, match="Adagrad is not implemented"):
        CapturableOptimizer(torch.optim.Adagrad(model.parameters()), [0.1], [0.9])
    with pytest.raises(NotCapturable, match="Nesterov"):
        CapturableOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                            [0.1], [0.9])


class _HostReads(TorchDispatchMode):
    """Records every op that reads a tensor's value back to the host (``.item()``,
    ``float(t)``, a 0-d tensor passed where a Python number is expected): on CUDA each is
    a sync, which graph capture forbids."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_the_captured_step_never_reads_the_device_back(name: str) -> None:
    model = _net()
    step = _graph_step(model, _FakeGraph(model), total_steps=8, name=name,
                       amp_dtype=torch.bfloat16, label_smoothing=0.1)
    with _HostReads() as spy:
        for x, y in _batches([16] * 6):
            step(x, y)

    assert step.captured
    assert spy.reads == []


class _FakeGraph:
    """Stands in for ``torch.cuda.graph`` on the CPU. Capturing records the step without its
    effects (the state it changed is put back: a real capture runs no kernel); replaying
    runs it and writes its outputs into the captured ones, as a graph refills its static
    outputs."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.step, self.captures = model, None, 0

    def __call__(self, body):
        self.captures += 1
        state = [*self.model.state_dict().values(), *self.step.update.state_tensors()]
        saved = [t.clone() for t in state]
        outputs = body()
        for tensor, value in zip(state, saved):
            tensor.copy_(value)

        def replay() -> None:
            for static, fresh in zip(outputs, body()):
                static.copy_(fresh)

        return replay, outputs


def _refuse(body):
    raise RuntimeError("operation not permitted when stream is capturing\nmore detail")


def _graph_step(model: nn.Module, capture, total_steps: int, name: str = "adamw",
                **options) -> CudaGraphStep:
    optimizer = build_optimizer(model, name=name, lr=0.05, weight_decay=0.01)
    options = {"amp_dtype": None} | options
    step = CudaGraphStep(model, optimizer, max_lr=0.05, total_steps=total_steps, device=CPU,
                         capture=capture, **options)
    if isinstance(capture, _FakeGraph):
        capture.step = step
    return step


def _train(step, model: nn.Module, batches) -> list[tuple[float, int]]:
    model.train()
    return [(float(loss), int(correct)) for loss, correct in (step(x, y) for x, y in batches)]


def test_a_replayed_step_trains_exactly_as_the_same_step_run_eagerly() -> None:
    # Two epochs of 5 full batches and a partial one: capture at step 4, replays of the
    # full batches, the partial batches eager between replays.
    batches = _batches([16, 16, 16, 16, 16, 8] * 2)
    graphed, eager = _net(), _net()
    graph = _FakeGraph(graphed)
    graph_step = _graph_step(graphed, graph, total_steps=len(batches))
    eager_step = _graph_step(eager, _refuse, total_steps=len(batches))

    graphed_outcomes = _train(graph_step, graphed, batches)
    eager_outcomes = _train(eager_step, eager, batches)

    assert graph.captures == 1
    assert graph_step.replays == 7  # steps 4 (captured, then replayed), 5, and 7-11
    assert graph_step.mode == ("cuda graph (whole step captured after 3 eager warm-up "
                               "steps, batch 16)")
    assert eager_step.mode == ("eager (CUDA graph capture failed: RuntimeError: operation "
                               "not permitted when stream is capturing)")
    assert graphed_outcomes == eager_outcomes
    for got, expected in zip(graphed.state_dict().values(), eager.state_dict().values()):
        assert torch.equal(got, expected)
    assert graph_step.lr == eager_step.lr


def test_a_replayed_step_trains_as_torchs_optimizer_does() -> None:
    batches = _batches([16] * 12)
    graphed, reference = _net(), _net()
    graph_step = _graph_step(graphed, _FakeGraph(graphed), total_steps=len(batches))
    optimizer = build_optimizer(reference, name="adamw", lr=0.05, weight_decay=0.01)
    eager_step = EagerStep(reference, optimizer,
                           one_cycle(optimizer, max_lr=0.05, total_steps=len(batches)))

    _train(graph_step, graphed, batches)
    _train(eager_step, reference, batches)

    assert graph_step.replays == len(batches) - WARMUP_STEPS
    for got, expected in zip(graphed.parameters(), reference.parameters()):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert graph_step.lr == pytest.approx(eager_step.lr, rel=1e-6)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_a_graphed_step_restored_from_its_state_trains_on_as_if_never_stopped(name) -> None:
    # A trial's checkpoint after step 6 of 12: a new model and step (other initial weights)
    # restored from it warm up, capture again and end exactly where the straight run ends.
    batches = _batches([16] * 12)
    straight = _net()
    straight_step = _graph_step(straight, _FakeGraph(straight), 12, name)
    straight_outcomes = _train(straight_step, straight, batches)
    first = _net()
    first_step = _graph_step(first, _FakeGraph(first), 12, name)
    head = _train(first_step, first, batches[:6])
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "step": first_step.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = _net(seed=5)
    graph = _FakeGraph(resumed)
    resumed_step = _graph_step(resumed, graph, 12, name)

    resumed.load_state_dict(state["model"])
    resumed_step.load_state_dict(state["step"])
    tail = _train(resumed_step, resumed, batches[6:])

    assert graph.captures == 1 and resumed_step.replays == 6 - WARMUP_STEPS
    assert head + tail == straight_outcomes
    for got, expected in zip(resumed.state_dict().values(), straight.state_dict().values()):
        assert torch.equal(got, expected)
    for got, expected in zip(resumed_step.update.state_tensors(),
                             straight_step.update.state_tensors()):
        assert torch.equal(got, expected)  # moments, step count, schedule position
    assert resumed_step.lr == straight_step.lr


def test_a_graphed_steps_state_refuses_another_network() -> None:
    step = _graph_step(_net(), _refuse, 12)
    other = _graph_step(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), _refuse, 12)
    with pytest.raises(ValueError, match="another optimizer or model"):
        step.load_state_dict(other.state_dict())


def _step_mode(device: str, **options) -> str:
    model = _net()
    optimizer = options.pop("optimizer", None) or build_optimizer(model, name="sgd", lr=0.1,
                                                                   weight_decay=0.0)
    return build_train_step(model, optimizer, max_lr=0.1, total_steps=10,
                            device=torch.device(device), amp_dtype=None, **options).mode


def test_each_eager_step_says_why_it_is_not_a_cuda_graph() -> None:
    assert _step_mode("cpu") == "eager (CUDA graphs off)"
    assert _step_mode("cpu", cuda_graphs=True) == ("eager (CUDA graphs need a CUDA device; "
                                                   "training on cpu)")
    # On a CUDA device (nothing runs on it until the first batch):
    assert _step_mode("cuda", cuda_graphs=True, compiled=True).startswith(
        "eager (--compile: torch.compile's mode decides about CUDA graphs")
    plain_sgd = torch.optim.SGD(_net().parameters(), lr=0.1, momentum=0.9)
    assert _step_mode("cuda", cuda_graphs=True, optimizer=plain_sgd) == (
        "eager (no CUDA graph: only SGD with Nesterov momentum and no dampening is "
        "implemented)")
    assert _step_mode("cuda", cuda_graphs=True).startswith("cuda graph (warming up")


def test_a_trial_asking_for_cuda_graphs_on_a_cpu_trains_eagerly_and_says_why() -> None:
    from test_train import TINY, _FakeTracker, _tiny_split

    spec = load_builtin_spec("mnist").replace(epochs=2, augment=False, search_space={
        "lr": 0.01, "batch_size": 16, "depth": 1, "dropout": 0.0, "arch": "mlp",
        "width": 2, "optimizer": "adamw", "weight_decay": 0.0}, enqueue_trials=[])
    data = TrialData(info=TINY, train=_tiny_split(48, seed=1), val=_tiny_split(24, seed=2))
    tracker, stream = _FakeTracker(), io.StringIO()
    objective = Objective(spec=spec, data=data, device=CPU, tracker=tracker,
                          reporter=Reporter(spec.metric, stream=stream), seed=0,
                          cuda_graphs=True)
    study = optuna.create_study(direction="maximize")

    study.optimize(objective, n_trials=1)

    reason = "eager (CUDA graphs need a CUDA device; training on cpu)"
    assert study.trials[0].user_attrs["step_mode"] == reason
    assert tracker.runs[0].client.tags == {"hpsearch.step_mode": reason}
    assert f"trial    0  training step: {reason}" in stream.getvalue()


def test_a_replayed_step_weighs_the_classes_as_the_eager_step_does() -> None:
    # Class weights and label smoothing inside the captured step: a replay trains exactly
    # as the same weighted step run eagerly, and otherwise than an unweighted one.
    batches = _batches([16] * 8)
    weights = torch.tensor([0.5, 1.0, 2.0])
    graphed, eager, plain = _net(), _net(), _net()
    options = {"class_weights": weights, "label_smoothing": 0.1}
    graph_step = _graph_step(graphed, _FakeGraph(graphed), len(batches), **options)
    eager_step = _graph_step(eager, _refuse, len(batches), **options)
    plain_step = _graph_step(plain, _refuse, len(batches), label_smoothing=0.1)

    outcomes = _train(graph_step, graphed, batches)

    assert graph_step.replays == len(batches) - WARMUP_STEPS
    assert outcomes == _train(eager_step, eager, batches)
    assert outcomes != _train(plain_step, plain, batches)
