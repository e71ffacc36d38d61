"""A trial's state saved after every epoch, and a retried trial continuing from it: the same
result as a training never interrupted (bit for bit on the CPU), its earlier epochs reported
again, its state removed when it ends, retries run before the spec's waiting trials and
listed under plain names; and the first estimate of a study on a CPU. In-process, on tiny
tensors, with the interrupt raised at the ``epoch.end`` test pause."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from test_train import CPU, TINY, _FakeRun, _FakeTracker, _tiny_split

import hpsearch.search.objective as objective_module
from hpsearch import errors
from hpsearch.api import make_config
from hpsearch.errors import Interrupted
from hpsearch.search.checkpoints import CheckpointStore, default_checkpoint_root
from hpsearch.search.config import RunConfig, cpu_budget_command
from hpsearch.search.objective import Objective, TrialData
from hpsearch.search.progress import Reporter, StudyEstimate
from hpsearch.search.storage import RetriesFirstStudy, open_study, retry_interrupted
from hpsearch.studies import load_builtin_spec
from hpsearch.tracking.tables import trials_table
from hpsearch.training.checkpoint import load_state, save_state

optuna.logging.set_verbosity(optuna.logging.WARNING)
README = Path(__file__).resolve().parents[1] / "README.md"


class _Run(_FakeRun):
    """Also keeps the logged epochs' results and the weights logged at the end."""

    def __init__(self, number: int, params: dict) -> None:
        super().__init__(number, params)
        self.results, self.weights = [], None

    def log_epoch(self, result) -> None:
        super().log_epoch(result)
        self.results.append(result)

    def log_checkpoint(self, model) -> None:
        super().log_checkpoint(model)
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Tracker(_FakeTracker):
    def trial_run(self, trial_number: int, params: dict, *, retry_of=None) -> _Run:
        self.runs.append(_Run(trial_number, params))
        return self.runs[-1]


def _objective(store: CheckpointStore | None, *, optimizer: str = "adamw",
               epochs: int = 3) -> tuple[Objective, _Tracker, io.StringIO]:
    """Everything that draws random numbers is on: dropout (torch's generator), shuffling
    and augmentation (the loader's), a learned schedule (the optimizer's)."""
    lr = {"adamw": 0.02, "sgd": 0.1}[optimizer]
    spec = load_builtin_spec("mnist").replace(epochs=epochs, augment=True, search_space={
        "lr": lr, "batch_size": 16, "depth": 1, "dropout": 0.3, "arch": "mlp", "width": 4,
        "optimizer": optimizer, "weight_decay": 1e-3}, enqueue_trials=[])
    data = TrialData(info=TINY, train=_tiny_split(48, seed=1), val=_tiny_split(24, seed=2))
    tracker, stream = _Tracker(), io.StringIO()
    objective = Objective(spec=spec, data=data, device=CPU, tracker=tracker,
                          reporter=Reporter(spec.metric, stream=stream), seed=0,
                          checkpoints=store)
    return objective, tracker, stream


def _study(pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    return optuna.create_study(direction="maximize",
                               pruner=pruner or optuna.pruners.NopPruner())


def _run_trial(study: optuna.Study, objective: Objective) -> optuna.trial.FrozenTrial:
    """One trial as ``study.optimize`` runs it: an interrupt fails it, then propagates."""
    trial = study.ask()
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        return study.tell(trial, state=TrialState.PRUNED)
    except (Exception, KeyboardInterrupt):
        return study.tell(trial, state=TrialState.FAIL)
    return study.tell(trial, value)


def _stop_at_epoch_end(monkeypatch, epoch: int, exc: BaseException) -> None:
    """Raise ``exc`` at the ``epoch.end`` pause of ``epoch`` (where a test's signal lands)."""
    ends = []

    def pause(*points: str) -> None:  # one pause's names, widest first
        if points[0] != "epoch.end":  # another pause point (epoch.recording, ...)
            return
        ends.append(points[0])
        if len(ends) == epoch:
            raise exc

    monkeypatch.setattr(objective_module, "pause", pause)


def _learning(run: _Run) -> list[dict[str, float]]:
    """The logged metrics of each epoch, but its timing."""
    timing = {"epoch_seconds", "images_per_second"}
    return [{k: v for k, v in r.metrics().items() if k not in timing} for r in run.results]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_trial_interrupted_and_continued_ends_bit_for_bit_as_one_never_stopped(
        tmp_path, monkeypatch, optimizer) -> None:
    straight_objective, straight_tracker, _ = _objective(None, optimizer=optimizer)
    straight = _run_trial(_study(), straight_objective)

    store = CheckpointStore(tmp_path, "s")
    objective, tracker, stream = _objective(store, optimizer=optimizer)
    study = _study()
    _stop_at_epoch_end(monkeypatch, 1, Interrupted(signal.SIGINT))
    interrupted = _run_trial(study, objective)
    assert interrupted.state is TrialState.FAIL
    assert interrupted.user_attrs["failure_kind"] == "interrupted"
    saved = load_state(store.path(0))  # kept for the retry; loads with weights_only
    assert [entry["epoch"] for entry in saved["training"]["history"]] == [1]

    monkeypatch.setattr(objective_module, "pause", lambda *points: None)
    assert retry_interrupted(study) == [0]
    retry = _run_trial(study, objective)

    assert retry.state is TrialState.COMPLETE and retry.number == 1
    # The same training: every epoch's value, the final weights, bit for bit.
    assert retry.intermediate_values == straight.intermediate_values
    assert retry.value == straight.value
    weights, expected = tracker.runs[1].weights, straight_tracker.runs[0].weights
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert _learning(tracker.runs[1]) == _learning(straight_tracker.runs[0])
    # Only epochs 2 and 3 trained again; epoch 1 reported again (pruner and MLflow curve).
    out = stream.getvalue()
    assert "trial    1  continues trial 0 after epoch 1 of 3 (checkpoint " in out
    assert "trial    1  epoch   1/3" not in out and "trial    1  epoch   2/3" in out
    assert tracker.runs[1].logged_epochs == [1, 2, 3]
    assert tracker.runs[1].client.tags["hpsearch.resume"] == (
        "continues trial 0 after epoch 1 of 3")
    assert retry.user_attrs["epochs_run"] == 3 and retry.user_attrs["cost"]["epochs"] == 3
    assert not store.folder.exists()  # removed when the retry completed


def test_a_retry_without_its_predecessors_state_starts_over_and_says_so(tmp_path,
                                                                       monkeypatch) -> None:
    straight = _run_trial(_study(), _objective(None)[0])
    store = CheckpointStore(tmp_path, "s")
    objective, tracker, stream = _objective(store)
    study = _study()
    _stop_at_epoch_end(monkeypatch, 2, Interrupted(signal.SIGTERM))
    _run_trial(study, objective)
    store.remove([0])  # as on another machine
    monkeypatch.setattr(objective_module, "pause", lambda *points: None)
    retry_interrupted(study)

    retry = _run_trial(study, objective)

    reason = (f"no checkpoint of trial 0 in {store.folder} (it finished no epoch, or ran on "
              "another machine)")
    assert f"trial    1  retries trial 0 from epoch 1: {reason}" in stream.getvalue()
    assert tracker.runs[1].client.tags["hpsearch.resume"] == f"started over: {reason}"
    assert tracker.runs[1].logged_epochs == [1, 2, 3]
    # It trains with the seed of the trial it retries: as that trial would have.
    assert retry.intermediate_values == straight.intermediate_values


@pytest.mark.parametrize("end, pruner, saved, kept", [
    ("complete", None, [1, 2, 3], False),
    # Epoch 1 is the pruner's warm-up; at epoch 2 it prunes, before a save.
    ("pruned", optuna.pruners.ThresholdPruner(lower=1.5, n_warmup_steps=2), [1], False),
    ("failed with an error", RuntimeError("a bug"), [1, 2], False),
    ("interrupted", Interrupted(signal.SIGINT), [1, 2], True),
])
def test_a_trials_state_goes_when_it_ends_and_stays_when_it_is_interrupted(
        tmp_path, monkeypatch, end, pruner, saved, kept) -> None:
    store = CheckpointStore(tmp_path, "s")
    objective, _, _ = _objective(store)
    saved_epochs = []
    save = store.save

    def spy(number, state):
        saved_epochs.append(len(state["training"]["history"]))
        save(number, state)

    monkeypatch.setattr(store, "save", spy)
    if isinstance(pruner, BaseException):
        _stop_at_epoch_end(monkeypatch, 2, pruner)
        pruner = None

    _run_trial(_study(pruner), objective)

    assert saved_epochs == saved
    assert store.path(0).exists() is kept


def test_a_state_that_cannot_be_saved_is_said_once_and_training_goes_on(tmp_path,
                                                                        monkeypatch) -> None:
    store = CheckpointStore(tmp_path, "s")
    objective, _, stream = _objective(store)

    def full_disk(number, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "save", full_disk)
    trial = _run_trial(_study(), objective)

    assert trial.state is TrialState.COMPLETE
    assert stream.getvalue().count("its state was not saved") == 1
    assert ("trial    0  its state was not saved (No space left on device): an interrupt now "
            "loses the epochs since the last saved one") in stream.getvalue()


def test_a_failed_write_leaves_the_last_saved_state_whole(tmp_path, monkeypatch) -> None:
    path = tmp_path / "trial-0" / "state.pt"
    save_state({"epoch": torch.tensor(1)}, path)

    def save_on_a_full_disk(state, f):
        f.write(b"half a state")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    with pytest.raises(OSError):
        save_state({"epoch": torch.tensor(2)}, path)
    monkeypatch.undo()

    assert load_state(path)["epoch"].item() == 1
    assert [p.name for p in path.parent.iterdir()] == ["state.pt"]  # no temporary left


def test_a_signal_during_a_save_waits_for_the_write_to_end(tmp_path, monkeypatch) -> None:
    # Raised inside torch.save's C++ writer, an Interrupted comes out as a RuntimeError
    # (the trial would fail as an error): the write finishes first, then it interrupts.
    path = tmp_path / "trial-0" / "state.pt"
    save = torch.save

    def save_with_a_signal(state, f):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the write
        save(state, f)

    monkeypatch.setattr(torch, "save", save_with_a_signal)
    monkeypatch.setattr(errors, "_pending", None)
    previous = signal.signal(signal.SIGTERM, errors.raise_interrupted)
    try:
        with pytest.raises(Interrupted):
            save_state({"epoch": torch.tensor(2)}, path)
    finally:
        signal.signal(signal.SIGTERM, previous)

    assert load_state(path)["epoch"].item() == 2


def test_checkpoints_go_beside_a_sqlite_storage_else_in_the_working_directory(
        tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_checkpoint_root("sqlite:///hpsearch.db") == tmp_path / "hpsearch-checkpoints"
    assert default_checkpoint_root(f"sqlite:///{tmp_path}/sub/o.db") == (
        tmp_path / "sub" / "hpsearch-checkpoints")
    assert default_checkpoint_root("postgresql://u:p@db/optuna") == (
        tmp_path / "hpsearch-checkpoints")
    store = CheckpointStore(tmp_path / "c", "a b/../c")
    assert store.path(3).parent.parent.parent == tmp_path / "c"  # never outside the root
    assert store.path(3).parts[-2:] == ("trial-3", "state.pt")


def test_a_checkpoint_dir_that_cannot_be_written_is_refused(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(Exception, match=r"^checkpoint_dir .*file is not a directory"):
        CheckpointStore(tmp_path / "file" / "deeper", "s").check_writable()
    CheckpointStore(tmp_path / "new" / "deeper", "s").check_writable()  # creatable: fine
    assert not (tmp_path / "new").exists()  # checked without writing


def _interrupted(study: optuna.Study, **user_attrs) -> None:
    distributions = {"arch": CategoricalDistribution(["lenet", "mlp"]),
                     "lenet.depth": CategoricalDistribution([2, 3]),
                     "adamw.lr": FloatDistribution(1e-3, 1e-2, log=True)}
    study.add_trial(create_trial(
        state=TrialState.FAIL, params={"arch": "lenet", "lenet.depth": 2, "adamw.lr": 0.005},
        distributions=distributions,
        user_attrs={"failure_kind": "interrupted", "fail_reason": "interrupted by SIGINT",
                    **user_attrs}))


def test_a_waiting_retry_is_listed_under_the_plain_parameter_names() -> None:
    study = optuna.create_study(direction="maximize")
    _interrupted(study, hyperparameters={"arch": "lenet", "depth": 2, "lr": 0.005})
    retry_interrupted(study)
    _interrupted(study)  # as an older hpsearch left it: no hyperparameters attribute

    table = trials_table(study)

    assert list(table["state"]) == ["INTERRUPTED", "WAITING", "INTERRUPTED"]
    assert not {"lenet.depth", "adamw.lr"} & set(table.columns)
    assert list(table["depth"]) == [2, 2, 2] and list(table["lr"]) == [0.005] * 3


def test_retries_run_before_the_specs_enqueued_trials(tmp_path) -> None:
    spec = load_builtin_spec("fashion_mnist")  # 3 enqueued trials
    config = RunConfig(spec=spec, trials=10, study_name="order", register_name="m",
                       storage=f"sqlite:///{tmp_path / 'o.db'}")
    study = open_study(config, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert isinstance(study, RetriesFirstStudy)
    with pytest.warns(UserWarning, match="Heartbeat"):  # ask() outside optimize(): fine
        first = study.ask()
    first.set_user_attr("failure_kind", "interrupted")
    study.tell(first, state=TrialState.FAIL)
    retry_interrupted(study)  # enqueued as trial 3, after the enqueued trials 1 and 2

    with pytest.warns(UserWarning, match="Heartbeat"):
        order = [study.ask().number for _ in range(4)]

    assert order == [3, 1, 2, 4]


# ---------------------------------------------------------------------------------------------
# The first estimate of a study on a CPU
# ---------------------------------------------------------------------------------------------

README_CPU_COMMAND = ("hpsearch run --trials 20 --epochs 3 --train-subset 10000 --dataset "
                      "fashion_mnist --study-name fashion_mnist-cpu")


def _config(**overrides) -> RunConfig:
    arguments = dict(dataset="fashion_mnist", spec=None, trials=50, epochs=None,
                     timeout_s=None, train_subset=None, study_name=None, storage=None,
                     tracking_uri=None, data_dir=None, device="cpu", seed=0,
                     register_name=None, max_failures=5, heartbeat_interval_s=10, jobs=None,
                     compile=False)
    return make_config(**(arguments | overrides))


def test_the_first_estimate_gives_a_range_and_past_an_hour_the_readmes_cpu_budget() -> None:
    stream = io.StringIO()
    estimate = StudyEstimate(trials_left=50, epochs=15, device="cpu",
                             reporter=Reporter("val_accuracy", stream=stream),
                             smaller_command=cpu_budget_command(_config()))

    estimate(0, 1, 31.0)
    estimate(0, 2, 31.0)  # once only

    assert stream.getvalue().splitlines() == [
        "estimate: epoch 1 of trial 0 took 31 s on cpu; at that pace the 50 trials to run "
        "take 25 min 50 s if the pruner stops each after 1 epoch, up to 6 h 27 min if each "
        "trains all 15 epochs (other architectures train faster or slower)",
        "  that is hours: Ctrl-C keeps the finished trials, and the README's smaller budget "
        f"for a CPU: {README_CPU_COMMAND}"]
    assert README_CPU_COMMAND in README.read_text()


def test_a_short_study_gets_its_estimate_without_a_suggestion() -> None:
    stream = io.StringIO()
    StudyEstimate(trials_left=3, epochs=2, device="cpu",
                  reporter=Reporter("val_accuracy", stream=stream),
                  smaller_command="hpsearch run ...")(4, 1, 5.0)
    assert stream.getvalue() == (
        "estimate: epoch 1 of trial 4 took 5 s on cpu; at that pace the 3 trials to run take "
        "15 s if the pruner stops each after 1 epoch, up to 30 s if each trains all 2 epochs "
        "(other architectures train faster or slower)\n")


def test_the_cpu_budget_command_keeps_the_data_set_or_spec_and_a_study_of_its_own(
        tmp_path) -> None:
    assert cpu_budget_command(_config(dataset="cifar10", study_name="c")) == (
        "hpsearch run --trials 20 --epochs 3 --train-subset 10000 --dataset cifar10 "
        "--study-name c-cpu")
    spec = tmp_path / "my spec.yaml"
    spec.write_text(load_builtin_spec("mnist").to_yaml())
    assert cpu_budget_command(_config(dataset=None, spec=str(spec), data_dir="/d x")) == (
        f"hpsearch run --trials 20 --epochs 3 --train-subset 10000 --spec '{spec}' "
        "--data-dir '/d x' --study-name mnist-cpu")
    assert cpu_budget_command(_config(trials=20, epochs=3, train_subset=10000)) is None
