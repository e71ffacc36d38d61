"""The training loop (``fit``, ``evaluate``, ``build_optimizer``) on tiny CPU tensors, and the
Optuna objective's report / prune / fail logic driven with ``study.ask()``/``study.tell()``."""

import io
import math
from collections.abc import Iterator

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from hpsearch.data_utils import ArraySplit, DatasetInfo
from hpsearch.defaults import FIGURES_ENV
from hpsearch.search.objective import Objective, TrialData
from hpsearch.search.progress import Reporter
from hpsearch.studies import load_builtin_spec
from hpsearch.training import (
    EpochResult,
    EvalResult,
    TrainingDiverged,
    build_optimizer,
    evaluate,
    fit,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

CPU = torch.device("cpu")
NUM_CLASSES = 3
METRIC_NAMES = {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                "epoch_seconds", "images_per_second", "val_balanced_accuracy", "val_macro_f1"}
Batch = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(autouse=True)
def _figures_on(monkeypatch) -> None:
    """The objective's figures are asserted here (by name, through a fake client that draws
    nothing): on, as for a user, though the suite turns them off elsewhere."""
    monkeypatch.setenv(FIGURES_ENV, "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _prototypes() -> torch.Tensor:
    """One fixed +-1 pattern (1, 8, 8) per class: a linear model separates them easily."""
    return torch.randn(NUM_CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(7)).sign()


def _separable(n: int, batch_size: int, seed: int) -> list[Batch]:
    """Batches of (float images (B, 1, 8, 8), int64 labels (B,)): prototype plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % NUM_CLASSES
    y = y[torch.randperm(n, generator=g)]
    x = _prototypes()[y] + 0.5 * torch.randn(n, 1, 8, 8, generator=g)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]


def _linear() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, NUM_CLASSES))


class _CountingBatches:
    """Re-iterable batches that count the passes made over them."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches, self.passes = batches, 0

    def __iter__(self) -> Iterator[Batch]:
        self.passes += 1
        return iter(self.batches)


class _AlwaysClass(nn.Module):
    """Logits that put class ``k`` first for every image, whatever the input."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(NUM_CLASSES))
        with torch.no_grad():
            self.logits[k] = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), NUM_CLASSES)


class _Poisonable(nn.Module):
    """A linear classifier whose logits become NaN once ``poisoned`` is set."""

    def __init__(self, poisoned: bool = False) -> None:
        super().__init__()
        self.net, self.poisoned = _linear(), poisoned

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return logits * float("nan") if self.poisoned else logits


def _fit(model: nn.Module, train, val, *, epochs: int, lr: float = 0.05, **kwargs):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    return fit(model, train, val, epochs=epochs, optimizer=optimizer,
               num_classes=NUM_CLASSES, device=CPU, **kwargs)


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------


def test_fit_reports_every_epoch_in_order_and_learns_a_separable_problem() -> None:
    train, val = _separable(96, 16, seed=1), _separable(48, 16, seed=2)
    seen: list[EpochResult] = []

    history = _fit(_linear(), train, val, epochs=4, on_epoch=seen.append)

    assert [r.epoch for r in seen] == [1, 2, 3, 4]
    assert history == seen and all(a is b for a, b in zip(history, seen))
    losses = [r.train_loss for r in history]
    assert losses[-1] < losses[0] and all(b < a for a, b in zip(losses, losses[1:]))
    assert history[-1].val.accuracy >= 0.95
    assert history[-1].val.loss < history[0].val.loss
    assert history[-1].train_accuracy >= 0.9


def test_epoch_metrics_have_exactly_the_logged_names_and_values() -> None:
    train, val = _separable(96, 16, seed=1), _separable(48, 16, seed=2)

    result = _fit(_linear(), train, val, epochs=1)[0]
    metrics = result.metrics()

    assert set(metrics) == METRIC_NAMES
    assert metrics["val_loss"] == result.val.loss
    assert metrics["val_accuracy"] == result.val.accuracy
    assert metrics["train_loss"] == result.train_loss
    assert metrics["lr"] == 0.05
    assert result.epoch_seconds > 0
    assert metrics["images_per_second"] == pytest.approx(96 / result.epoch_seconds)
    assert result.val.confusion.sum() == 48
    recalls = np.diag(result.val.confusion) / result.val.confusion.sum(axis=1)
    assert metrics["val_balanced_accuracy"] == pytest.approx(recalls.mean())
    assert 0.0 <= metrics["val_macro_f1"] <= 1.0


def test_train_loss_and_accuracy_are_means_per_image_over_the_epoch() -> None:
    # lr 0: the model does not change during the epoch, so the epoch's training loss and
    # accuracy must equal an evaluation on the same batches. The last batch holds 4 of 36
    # images, so averaging per batch instead of per image would give a different number.
    torch.manual_seed(3)
    model = _linear()
    train = _separable(36, 16, seed=4)
    expected = evaluate(model, train, num_classes=NUM_CLASSES, device=CPU)

    result = _fit(model, train, _separable(12, 12, seed=5), epochs=1, lr=0.0)[0]

    assert [len(y) for _, y in train] == [16, 16, 4]
    assert result.train_loss == pytest.approx(expected.loss, rel=1e-5)
    assert result.train_accuracy == pytest.approx(expected.accuracy)


def test_scheduler_is_stepped_after_every_optimizer_step() -> None:
    model = _linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    train = _separable(96, 16, seed=1)  # 6 steps per epoch

    history = fit(model, train, _separable(12, 12, seed=2), epochs=2, optimizer=optimizer,
                  num_classes=NUM_CLASSES, device=CPU, scheduler=scheduler)

    assert [r.lr for r in history] == pytest.approx([0.1 / 7, 0.1 / 13])


def test_exception_from_on_epoch_propagates_and_stops_training() -> None:
    train = _CountingBatches(_separable(48, 16, seed=1))
    seen: list[int] = []

    def prune_at_once(result: EpochResult) -> None:
        seen.append(result.epoch)
        raise optuna.TrialPruned("pruned at epoch 1")

    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1"):
        _fit(_linear(), train, _separable(12, 12, seed=2), epochs=5, on_epoch=prune_at_once)

    assert seen == [1]
    assert train.passes == 1


def test_nan_loss_raises_training_diverged_after_the_callback_saw_the_epoch() -> None:
    seen: list[EpochResult] = []

    with pytest.raises(TrainingDiverged) as info:
        _fit(_Poisonable(poisoned=True), _separable(48, 16, seed=1), _separable(12, 12, seed=2),
             epochs=3, on_epoch=seen.append)

    assert info.value.epoch == 1
    assert math.isnan(info.value.loss)
    assert "epoch 1" in str(info.value)
    assert [r.epoch for r in seen] == [1]
    assert math.isnan(seen[0].train_loss)


def test_training_diverged_names_the_epoch_it_happened_in() -> None:
    model = _Poisonable()
    seen: list[int] = []

    def poison_after_first(result: EpochResult) -> None:
        seen.append(result.epoch)
        model.poisoned = True

    with pytest.raises(TrainingDiverged) as info:
        _fit(model, _separable(48, 16, seed=1), _separable(12, 12, seed=2), epochs=4,
             on_epoch=poison_after_first)

    assert info.value.epoch == 2
    assert seen == [1, 2]


def test_fit_on_an_empty_training_split_raises_value_error() -> None:
    with pytest.raises(ValueError, match="no batch"):
        _fit(_linear(), [], _separable(12, 12, seed=2), epochs=1)


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------


def test_confusion_rows_are_true_classes_and_columns_predictions() -> None:
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2])  # 5, 2 and 4 images
    batches = [(torch.zeros(6, 1, 8, 8), labels[:6]), (torch.zeros(5, 1, 8, 8), labels[6:])]

    result = evaluate(_AlwaysClass(2), batches, num_classes=NUM_CLASSES, device=CPU)

    assert isinstance(result, EvalResult)
    assert result.confusion.dtype == np.int64
    np.testing.assert_array_equal(result.confusion, [[0, 0, 5], [0, 0, 2], [0, 0, 4]])
    assert result.accuracy == pytest.approx(4 / 11)
    # logits (0, 0, 2): -log softmax is log(2 + e^2) - 2 for class 2, log(2 + e^2) otherwise
    log_z = math.log(2 + math.exp(2))
    assert result.loss == pytest.approx((7 * log_z + 4 * (log_z - 2)) / 11, rel=1e-6)


def test_confusion_sums_to_the_images_and_its_trace_gives_the_accuracy() -> None:
    train, val = _separable(96, 16, seed=1), _separable(50, 16, seed=2)  # last batch of 2
    model = _linear()
    _fit(model, train, val, epochs=1, lr=0.01)

    result = evaluate(model, val, num_classes=NUM_CLASSES, device=CPU)

    counts = result.confusion
    assert counts.shape == (NUM_CLASSES, NUM_CLASSES)
    assert counts.sum() == 50
    np.testing.assert_array_equal(counts.sum(axis=1), np.bincount(
        torch.cat([y for _, y in val]).numpy(), minlength=NUM_CLASSES))
    assert result.accuracy == np.trace(counts) / 50


def test_evaluate_leaves_the_model_in_eval_mode_without_changing_it() -> None:
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, NUM_CLASSES))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    evaluate(model, _separable(24, 8, seed=1), num_classes=NUM_CLASSES, device=CPU)

    assert model.training is False
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm running stats untouched


def test_evaluate_on_an_empty_split_raises_value_error() -> None:
    with pytest.raises(ValueError, match="empty split"):
        evaluate(_linear(), [], num_classes=NUM_CLASSES, device=CPU)


# ---------------------------------------------------------------------------------------------
# build_optimizer
# ---------------------------------------------------------------------------------------------


def _conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(),
                         nn.Linear(72, NUM_CLASSES))


@pytest.mark.parametrize(("name", "kind"), [("adamw", torch.optim.AdamW),
                                            ("sgd", torch.optim.SGD)])
def test_weight_decay_goes_only_to_matrices_and_kernels(name: str, kind: type) -> None:
    model = _conv_net()

    optimizer = build_optimizer(model, name=name, lr=0.1, weight_decay=0.01)

    assert type(optimizer) is kind
    decay, no_decay = optimizer.param_groups
    assert [p.shape for p in decay["params"]] == [(2, 1, 3, 3), (NUM_CLASSES, 72)]
    assert [p.ndim for p in no_decay["params"]] == [1, 1, 1, 1]  # biases, BN scale and shift
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    assert {decay["lr"], no_decay["lr"]} == {0.1}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_sgd_uses_nesterov_momentum() -> None:
    optimizer = build_optimizer(_conv_net(), name="sgd", lr=0.1, weight_decay=0.0)

    assert optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["nesterov"] is True


@pytest.mark.parametrize(("name", "shrink"), [
    ("adamw", 1 - 0.1 * 0.5),  # decoupled: w <- w (1 - lr wd)
    ("sgd", 1 - 0.1 * 0.5 * 1.9),  # L2 in the gradient, first Nesterov step: (1 + 0.9) lr wd w
])
def test_a_step_with_zero_gradient_decays_weights_but_not_biases(name: str,
                                                                 shrink: float) -> None:
    model = nn.Linear(4, 2)
    optimizer = build_optimizer(model, name=name, lr=0.1, weight_decay=0.5)
    weight, bias = model.weight.detach().clone(), model.bias.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)

    optimizer.step()

    torch.testing.assert_close(model.weight.detach(), weight * shrink)
    assert torch.equal(model.bias.detach(), bias)


def test_unknown_optimizer_raises_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"'adam'.*adamw, sgd"):
        build_optimizer(_linear(), name="adam", lr=0.1, weight_decay=0.0)


# ---------------------------------------------------------------------------------------------
# The objective: report, prune, complete, fail (ask/tell on tiny tensors, MLflow faked)
# ---------------------------------------------------------------------------------------------

TINY = DatasetInfo.build(name="tiny", class_names=("a", "b", "c"), channels=1, size=8,
                        mean=(0.5,), std=(0.5,), hflip=False, crop_padding=1)


def _tiny_split(n: int, seed: int) -> ArraySplit:
    """uint8 images (n, 1, 8, 8): each class's prototype pattern (0 or 255) plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % NUM_CLASSES
    x = (_prototypes()[y] > 0).float() * 200 + 40 * torch.rand(n, 1, 8, 8, generator=g)
    return ArraySplit(x.to(torch.uint8).numpy(), y.numpy())


class _FakeClient:
    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []
        self.figures: list[str] = []
        self.tags: dict[str, str] = {}

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.tags[key] = value

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.texts.append((artifact_file, text))

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        self.figures.append(artifact_file)


class _FakeRun:
    """Records what the objective logs to a trial's MLflow run."""

    def __init__(self, number: int, params: dict) -> None:
        self.run_id, self.params, self.client = f"run-{number}", dict(params), _FakeClient()
        self.logged_epochs: list[int] = []
        self.checkpoints = 0
        self.finished: dict | None = None

    def log_epoch(self, result: EpochResult) -> None:
        self.logged_epochs.append(result.epoch)

    def log_checkpoint(self, model: nn.Module) -> None:
        self.checkpoints += 1

    def log_cost(self, cost: dict) -> None:
        self.cost = dict(cost)

    def finish(self, state, history, class_names, *, reason=None, value=None, status=None,
               tags=None) -> None:
        self.finished = {"state": state, "epochs": [r.epoch for r in history],
                         "class_names": list(class_names), "reason": reason, "value": value,
                         "status": status, "tags": dict(tags or {})}


class _FakeTracker:
    def __init__(self) -> None:
        self.runs: list[_FakeRun] = []

    def trial_run(self, trial_number: int, params: dict, *, retry_of=None) -> _FakeRun:
        self.runs.append(_FakeRun(trial_number, params))
        return self.runs[-1]


def _objective(epochs: int = 3, **space) -> tuple[Objective, _FakeTracker, io.StringIO]:
    search_space = {"lr": {"type": "float", "low": 0.01, "high": 0.05, "log": True},
                    "batch_size": 16, "depth": 1, "dropout": 0.0, "arch": "mlp", "width": 2,
                    "optimizer": "adamw", "weight_decay": 0.0} | space
    spec = load_builtin_spec("mnist").replace(epochs=epochs, augment=False,
                                              search_space=search_space, enqueue_trials=[])
    data = TrialData(info=TINY, train=_tiny_split(48, seed=1), val=_tiny_split(24, seed=2))
    tracker, stream = _FakeTracker(), io.StringIO()
    objective = Objective(spec=spec, data=data, device=CPU, tracker=tracker,
                          reporter=Reporter(spec.metric, stream=stream), seed=0)
    return objective, tracker, stream


def _ask_and_run(study: optuna.Study, objective: Objective) -> optuna.trial.FrozenTrial:
    """One trial the way ``study.optimize`` would run it, through ask/tell."""
    trial = study.ask()
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        return study.tell(trial, state=TrialState.PRUNED)
    except Exception:
        return study.tell(trial, state=TrialState.FAIL)
    return study.tell(trial, value)


def test_objective_reports_each_epoch_and_is_pruned_by_the_pruner() -> None:
    objective, tracker, stream = _objective(epochs=4)
    # No accuracy reaches 1.5, so the threshold pruner prunes at the first report.
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=1.5))

    frozen = _ask_and_run(study, objective)

    assert frozen.state is TrialState.PRUNED
    assert list(frozen.intermediate_values) == [1]
    run = tracker.runs[0]
    assert run.logged_epochs == [1]
    assert run.finished["state"] == "PRUNED" and run.finished["epochs"] == [1]
    assert run.client.figures == ["misclassified.png"]  # pruned trials keep their grid too
    accuracy = frozen.intermediate_values[1]
    assert 0.0 <= accuracy <= 1.0
    assert run.finished["reason"] == f"pruned at epoch 1: val_accuracy {accuracy:.4f}"
    assert run.checkpoints == 0
    assert "epoch   1/4" in stream.getvalue()


def test_objective_completes_with_the_last_epochs_metric_and_keeps_the_best_weights() -> None:
    objective, tracker, _ = _objective(epochs=3)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner(),
                                sampler=optuna.samplers.RandomSampler(seed=0))

    first = _ask_and_run(study, objective)
    second = _ask_and_run(study, objective)

    assert first.state is TrialState.COMPLETE and second.state is TrialState.COMPLETE
    assert list(first.intermediate_values) == [1, 2, 3]
    assert first.value == first.intermediate_values[3]
    assert first.value >= 0.9  # the tiny problem is learnable in three epochs
    assert 0.01 <= first.params["lr"] <= 0.05
    hyperparameters = first.user_attrs["hyperparameters"]
    assert hyperparameters["lr"] == first.params["lr"] and hyperparameters["width"] == 2
    assert first.user_attrs["mlflow_run_id"] == "run-0"
    assert tracker.runs[0].params == hyperparameters
    assert tracker.runs[0].finished == {"state": "COMPLETE", "epochs": [1, 2, 3],
                                        "class_names": ["a", "b", "c"], "reason": None,
                                        "value": first.value, "status": None,
                                        "tags": {"hpsearch.best_so_far": "true"}}
    assert tracker.runs[0].client.figures == ["misclassified.png"]
    assert tracker.runs[0].client.tags == {"hpsearch.step_mode": "eager (CUDA graphs off)"}
    # The first finished trial is the best so far; the second only if it ties or beats it.
    assert tracker.runs[0].checkpoints == 1 and first.user_attrs["checkpoint"] is True
    assert tracker.runs[1].checkpoints == int(second.value >= first.value)


def test_diverging_trial_is_pruned_with_its_reason_and_epoch() -> None:
    objective, tracker, _ = _objective(epochs=3, lr=1.0e30, optimizer="sgd")
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())

    frozen = _ask_and_run(study, objective)

    # A diverged configuration is a search result, not a bug: pruned, and no NaN reported.
    assert frozen.state is TrialState.PRUNED
    assert frozen.user_attrs["diverged_epoch"] == 1
    assert frozen.intermediate_values == {}
    run = tracker.runs[0]
    assert run.finished["state"] == "PRUNED"
    assert run.finished["reason"].startswith("diverged at epoch 1: train_loss nan")
    assert run.finished["tags"] == {"hpsearch.diverged_epoch": "1"}
    assert run.finished["epochs"] == [1]
    assert run.client.texts == []  # no traceback: nothing went wrong in the code
    assert run.client.figures == []  # a diverged model's predictions are NaN: no grid
