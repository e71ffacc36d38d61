"""The training code on a CUDA device, in this process: agreement with the CPU, the bf16
path, the captured CUDA-graph step, ``--compile`` over many trials, ``--deterministic``
reruns, and a trial that runs out of device memory.

Synthetic images (B, 1, 28, 28) keep these independent of any data set; TF32 convolutions
(on by default for cuDNN) make CUDA agree with the CPU to about 1e-3, not to the last bit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import optuna
import pytest
import torch
from torch import nn

from hpsearch.data_utils import get_dataset_info
from hpsearch.models import build_network
from hpsearch.params import TrialParams
from hpsearch.training import evaluate, fit
from hpsearch.training.compiled import compile_network
from hpsearch.training.cuda_graphs import WARMUP_STEPS, CudaGraphStep, build_train_step
from hpsearch.training.device import autocast_dtype
from hpsearch.training.optim import build_optimizer

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
INFO = get_dataset_info("fashion_mnist")


def _batches(n: int, batch_size: int, device: torch.device, seed: int = 0):
    """(images (B, 1, 28, 28) float, labels (B,)): a class-dependent mean plus noise, so a
    small network learns them in an epoch."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randn(n, 1, 28, 28, generator=g) * 0.5 + (y.float() / 5 - 1)[:, None, None, None]
    x = x.contiguous(memory_format=torch.channels_last)
    return [(x[i:i + batch_size].to(device), y[i:i + batch_size].to(device))
            for i in range(0, n, batch_size)]


def _network(arch: str, device: torch.device, *, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    params = TrialParams(arch=arch, depth=2, width=16, dropout=dropout, lr=0.01,
                         batch_size=64)
    return build_network(params, INFO).to(device, memory_format=torch.channels_last)


def _fit(arch: str, device: torch.device, amp_dtype=None, epochs: int = 2):
    model = _network(arch, device)
    optimizer = build_optimizer(model, name="sgd", lr=0.02, weight_decay=0.0)
    train, val = _batches(512, 64, device), _batches(256, 128, device, seed=1)
    history = fit(model, train, val, epochs=epochs, optimizer=optimizer, num_classes=10,
                  device=device, amp_dtype=amp_dtype)
    return model, history, val


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet"])
def test_fit_and_evaluate_on_cuda_agree_with_the_cpu(arch: str) -> None:
    cpu_model, cpu_history, cpu_val = _fit(arch, CPU)
    cuda_model, cuda_history, cuda_val = _fit(arch, CUDA)

    for ours, theirs in zip(cuda_history, cpu_history):
        assert ours.train_loss == pytest.approx(theirs.train_loss, rel=2e-2)
        assert ours.val.accuracy == pytest.approx(theirs.val.accuracy, abs=0.03)
    # The same weights evaluated on both devices: the same predictions but for near ties.
    cuda_model.load_state_dict(cpu_model.state_dict())
    on_cpu = evaluate(cpu_model, cpu_val, num_classes=10, device=CPU)
    on_cuda = evaluate(cuda_model, cuda_val, num_classes=10, device=CUDA)
    assert on_cuda.loss == pytest.approx(on_cpu.loss, rel=1e-3)
    assert abs(on_cuda.accuracy - on_cpu.accuracy) <= 2 / 256
    assert (on_cuda.predicted != on_cpu.predicted).sum() <= 2


def test_bf16_autocast_trains_and_validates_like_fp32() -> None:
    amp = autocast_dtype(CUDA)
    if amp is None:
        pytest.skip(f"{torch.cuda.get_device_name()} has no native bf16: trains in fp32")
    model, history, val = _fit("cnn", CUDA, amp_dtype=amp, epochs=3)

    assert all(torch.isfinite(torch.tensor(r.train_loss)) for r in history)
    assert history[-1].train_loss < history[0].train_loss
    in_bf16 = evaluate(model, val, num_classes=10, device=CUDA, amp_dtype=amp)
    in_fp32 = evaluate(model, val, num_classes=10, device=CUDA)
    assert in_bf16.accuracy == pytest.approx(in_fp32.accuracy, abs=0.02)
    assert in_bf16.loss == pytest.approx(in_fp32.loss, rel=0.05)


def _graph_step(model: nn.Module, *, max_lr: float, total_steps: int, name: str = "adamw",
                **options):
    optimizer = build_optimizer(model, name=name, lr=max_lr, weight_decay=1e-4)
    return CudaGraphStep(model, optimizer, max_lr=max_lr, total_steps=total_steps,
                         device=CUDA, amp_dtype=autocast_dtype(CUDA), **options)


def _refuse(body):
    raise RuntimeError("capture refused by the test")


def test_the_captured_step_trains_as_the_same_step_run_eagerly() -> None:
    batches = _batches(64 * 10 + 32, 64, CUDA)  # 10 full batches, then a partial one
    graphed, eager = _network("cnn", CUDA), _network("cnn", CUDA)
    graph_step = _graph_step(graphed, max_lr=0.01, total_steps=len(batches))
    eager_step = _graph_step(eager, max_lr=0.01, total_steps=len(batches), capture=_refuse)
    graphed.train()
    eager.train()

    graph_outcomes = [tuple(map(float, graph_step(x, y))) for x, y in batches]
    eager_outcomes = [tuple(map(float, eager_step(x, y))) for x, y in batches]

    assert graph_step.mode.startswith("cuda graph (whole step captured"), graph_step.mode
    assert graph_step.replays == len(batches) - 1 - WARMUP_STEPS
    assert eager_step.mode.startswith("eager (CUDA graph capture failed")
    for (loss, correct), (eager_loss, eager_correct) in zip(graph_outcomes, eager_outcomes):
        assert loss == pytest.approx(eager_loss, rel=1e-3)
        assert abs(correct - eager_correct) <= 1
    for got, expected in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)
    assert graph_step.lr == pytest.approx(eager_step.lr, rel=1e-6)


def test_dropout_draws_new_numbers_on_every_replay() -> None:
    model = _network("mlp", CUDA, dropout=0.5)
    step = _graph_step(model, max_lr=0.0, total_steps=20, name="sgd")  # lr 0: weights stay
    model.train()
    x, y = _batches(64, 64, CUDA)[0]

    losses = [float(step(x, y)[0]) for _ in range(WARMUP_STEPS + 4)]

    assert step.captured
    replayed = losses[WARMUP_STEPS:]
    assert len(set(replayed)) == len(replayed), replayed  # a frozen mask would repeat


def test_a_trial_step_on_cuda_is_a_cuda_graph_when_asked() -> None:
    model = _network("cnn", CUDA)
    optimizer = build_optimizer(model, name="sgd", lr=0.01, weight_decay=1e-4)
    step = build_train_step(model, optimizer, max_lr=0.01, total_steps=40, device=CUDA,
                            amp_dtype=autocast_dtype(CUDA), cuda_graphs=True)
    history = fit(model, _batches(64 * 10, 64, CUDA), _batches(256, 128, CUDA, seed=1),
                  epochs=2, num_classes=10, device=CUDA, train_step=step)

    assert step.mode.startswith("cuda graph (whole step captured"), step.mode
    assert history[-1].train_loss < history[0].train_loss


@pytest.mark.slow
def test_compile_keeps_compiling_over_ten_trials(recompile_limit_log) -> None:
    from torch._dynamo.utils import counters

    graphs = []
    for trial in range(10):
        params = TrialParams(arch="mlp", depth=1 + trial % 3, width=8 + 4 * trial,
                             dropout=0.1, lr=0.01, batch_size=64)
        model = build_network(params, INFO).to(CUDA)
        optimizer = build_optimizer(model, name="adamw", lr=0.01, weight_decay=0.0)
        before = counters["stats"]["unique_graphs"]
        fit(compile_network(model), _batches(256, 64, CUDA), _batches(200, 128, CUDA),
            epochs=1, optimizer=optimizer, num_classes=10, device=CUDA,
            amp_dtype=autocast_dtype(CUDA))
        graphs.append(counters["stats"]["unique_graphs"] - before)

    assert all(n >= 2 for n in graphs), graphs  # training and validation, every trial
    assert recompile_limit_log.hits == []


def test_deterministic_reruns_are_bit_identical() -> None:
    # A fresh process: cuBLAS reads its workspace setting when it starts.
    script = textwrap.dedent("""
        import torch
        from hpsearch.data_utils import get_dataset_info
        from hpsearch.models import build_network
        from hpsearch.params import TrialParams
        from hpsearch.training import fit
        from hpsearch.training.device import autocast_dtype, resolve_device
        from hpsearch.training.optim import build_optimizer, one_cycle

        device = resolve_device("cuda", deterministic=True)
        info = get_dataset_info("fashion_mnist")

        def train():
            torch.manual_seed(0)
            g = torch.Generator().manual_seed(1)
            x = torch.randn(512, 1, 28, 28, generator=g).to(device)
            y = torch.randint(0, 10, (512,), generator=g).to(device)
            batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)]
            params = TrialParams(arch="resnet", depth=2, width=16, dropout=0.2, lr=0.01,
                                 batch_size=64)
            model = build_network(params, info).to(device, memory_format=torch.channels_last)
            optimizer = build_optimizer(model, name="adamw", lr=0.01, weight_decay=1e-4)
            fit(model, batches, batches[:2], epochs=2, optimizer=optimizer, num_classes=10,
                device=device, amp_dtype=autocast_dtype(device),
                scheduler=one_cycle(optimizer, max_lr=0.01, total_steps=16))
            return model.state_dict()

        first, second = train(), train()
        assert all(torch.equal(first[k], second[k]) for k in first), "reruns differ"
        print("bit-identical")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bit-identical" in result.stdout


def test_a_trial_that_runs_out_of_device_memory_fails_and_the_next_one_trains(
        monkeypatch) -> None:
    from test_train import TINY, _FakeTracker, _tiny_split

    from hpsearch.models import registry
    from hpsearch.search.objective import Objective, TrialData
    from hpsearch.search.progress import Reporter
    from hpsearch.studies import load_builtin_spec

    class _Hog(nn.Module):
        """A linear classifier that first asks for more memory than the device has."""

        def __init__(self, features: int, num_classes: int) -> None:
            super().__init__()
            self.linear = nn.Linear(features, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.is_cuda:
                total = torch.cuda.get_device_properties(x.device).total_memory
                torch.empty(total // 2 + 1, dtype=torch.float32, device=x.device)  # 2x
            return self.linear(x.flatten(1))

    list(registry.list_models())
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))
    registry.register_model("hog")(
        lambda *, in_channels, image_size, num_classes, depth, width, dropout:
        _Hog(in_channels * image_size ** 2, num_classes))
    space = {"lr": 0.01, "batch_size": 16, "depth": 1, "dropout": 0.0, "width": 2,
             "optimizer": "adamw", "weight_decay": 0.0, "arch": ["hog", "mlp"]}
    spec = load_builtin_spec("mnist").replace(epochs=2, augment=False, search_space=space,
                                              enqueue_trials=[])
    data = TrialData(info=TINY, train=_tiny_split(48, seed=1), val=_tiny_split(24, seed=2))
    objective = Objective(spec=spec, data=data, device=CUDA, tracker=_FakeTracker(),
                          reporter=Reporter(spec.metric), seed=0)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"arch": "hog"})
    study.enqueue_trial({"arch": "mlp"})
    allocated_before = torch.cuda.memory_allocated()

    study.optimize(objective, n_trials=2, catch=(Exception,))

    hog, mlp = study.trials
    assert hog.state is optuna.trial.TrialState.FAIL
    assert hog.user_attrs["failure_kind"] == "out_of_memory"
    assert hog.user_attrs["fail_reason"].startswith(
        "out of memory with batch_size 16 and arch hog")
    assert mlp.state is optuna.trial.TrialState.COMPLETE
    assert torch.cuda.memory_allocated() - allocated_before < 64 * 2**20
