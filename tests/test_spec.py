"""Study specs: the built-in YAMLs, validation errors that name file, key and reason, and
how each kind of search-space entry is drawn from an Optuna trial."""

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from hpsearch.models import model_hyperparameters
from hpsearch.params import (
    DATA_DEFAULT_HYPERPARAMETERS,
    FAMILY_HYPERPARAMETERS,
    OPT_IN_HYPERPARAMETERS,
)
from hpsearch.studies import (
    HYPERPARAMETERS,
    ParamSpec,
    SpecError,
    StudySpec,
    builtin_spec_names,
    load_builtin_spec,
    load_spec,
)
from hpsearch.studies.components import build_pruner, build_sampler
from hpsearch.studies.pruning import CostAwarePruner

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE: dict[str, Any] = {
    "dataset": "mnist",
    "epochs": 3,
    "search_space": {
        "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "batch_size": [16, 32],
        "depth": {"type": "int", "low": 1, "high": 3},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "arch": ["mlp", "cnn"],
    },
}


def _write(tmp_path: Path, content: dict[str, Any] | str) -> Path:
    path = tmp_path / "study.yaml"
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text)
    return path


def _spec_with(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    raw = copy.deepcopy(BASE)
    change(raw)
    return _write(tmp_path, raw)


def _space(**entries: Any) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw["search_space"].update(entries)


def _top(**entries: Any) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw.update(entries)


def _applicable(arch: str) -> set[str]:
    """The hyperparameters a trial of ``arch`` draws: the general ones (but not those a
    spec that names them nowhere leaves out: class_weights, opt-in, and image_size, the data
    set's) and its family's."""
    return {n for n in HYPERPARAMETERS if n not in FAMILY_HYPERPARAMETERS
            and n not in OPT_IN_HYPERPARAMETERS and n not in DATA_DEFAULT_HYPERPARAMETERS
            } | set(model_hyperparameters(arch))


class _UntouchableTrial:
    """A stand-in trial that fails the test if anything is asked of it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a fixed parameter must not call trial.{name}")


# ---------------------------------------------------------------------------------------------
# Built-in specs
# ---------------------------------------------------------------------------------------------


def test_builtin_spec_names_are_the_three_data_sets_sorted() -> None:
    assert builtin_spec_names() == ["cifar10", "fashion_mnist", "mnist"]


@pytest.mark.parametrize("name", builtin_spec_names())
def test_builtin_spec_loads_and_every_path_draws_every_hyperparameter(name: str) -> None:
    spec = load_builtin_spec(name)
    arch, optimizer = spec.param("arch"), spec.param("optimizer")

    assert isinstance(spec, StudySpec)
    assert spec.dataset == name
    assert spec.source == f"built-in spec {name}.yaml"
    assert spec.metric == "val_accuracy" and spec.direction == "maximize"
    assert spec.epochs >= 1
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for choice in arch.choices:  # a draw per architecture and optimizer
        for opt in optimizer.choices:
            study.enqueue_trial({"arch": choice, "optimizer": opt})
            params = spec.sample(study.ask())
            assert set(params) == _applicable(choice)
            assert (params["arch"], params["optimizer"]) == (choice, opt)


@pytest.mark.parametrize("name", builtin_spec_names())
def test_builtin_sampler_and_pruner_build_a_cost_aware_median_pruner(name: str) -> None:
    spec = load_builtin_spec(name)

    sampler = build_sampler(dict(spec.sampler), seed=0)
    pruner = build_pruner(dict(spec.pruner), max_epochs=spec.epochs)

    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert isinstance(pruner, CostAwarePruner)
    assert isinstance(pruner.base, optuna.pruners.MedianPruner)
    assert pruner.max_epochs == spec.epochs


@pytest.mark.parametrize("name", builtin_spec_names())
def test_builtin_enqueued_trials_count_towards_tpes_random_start(name: str) -> None:
    spec = load_builtin_spec(name)

    assert len(spec.enqueue_trials) < spec.sampler["n_startup_trials"]
    for params in spec.enqueued_params():
        assert params["arch"] in spec.param("arch").choices


def test_unknown_builtin_spec_raises_value_error_listing_the_choices() -> None:
    with pytest.raises(ValueError, match="'nope'") as info:
        load_builtin_spec("nope")
    assert not isinstance(info.value, SpecError)
    for name in ("cifar10", "fashion_mnist", "mnist"):
        assert name in str(info.value)


# ---------------------------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", builtin_spec_names())
def test_builtin_spec_round_trips_through_its_yaml(name: str, tmp_path: Path) -> None:
    spec = load_builtin_spec(name)
    path = _write(tmp_path, spec.to_yaml())

    loaded = load_spec(path)

    assert loaded.to_dict() == spec.to_dict()
    assert dataclasses.replace(loaded, source=spec.source) == spec
    assert loaded.source == str(path)


def test_custom_spec_with_every_entry_kind_round_trips(tmp_path: Path) -> None:
    raw = copy.deepcopy(BASE)
    raw["search_space"]["depth"] = {"type": "int", "low": 2, "high": 8, "step": 2}
    raw["search_space"]["optimizer"] = "sgd"
    raw["metric"] = "val_loss"
    raw["sampler"] = {"name": "random"}
    raw["pruner"] = {"name": "median", "n_warmup_steps": 2}
    raw["enqueue_trials"] = [{"lr": 1.0e-3, "arch": "cnn"}]
    spec = load_spec(_write(tmp_path, raw))
    again = tmp_path / "again.yaml"
    again.write_text(spec.to_yaml())

    assert load_spec(again).to_dict() == spec.to_dict()
    assert spec.to_dict()["search_space"]["depth"] == {
        "type": "int", "low": 2, "high": 8, "log": False, "step": 2}
    assert spec.to_dict()["search_space"]["optimizer"] == "sgd"
    assert spec.direction == "minimize"  # follows from the metric when left out


def test_replace_revalidates_the_change() -> None:
    spec = load_builtin_spec("mnist")

    assert spec.replace(epochs=3).epochs == 3
    with pytest.raises(SpecError) as info:
        spec.replace(epochs=0)
    assert info.value.key == "epochs"
    assert ">= 1" in info.value.reason


# ---------------------------------------------------------------------------------------------
# Rejected specs: SpecError names the file, the key and the reason
# ---------------------------------------------------------------------------------------------

REJECTED = [
    pytest.param(_top(epoch=5), "epoch", "unknown key", id="unknown-top-level-key"),
    pytest.param(_space(momentum=0.9), "search_space.momentum", "unknown hyperparameter",
                 id="unknown-hyperparameter"),
    pytest.param(lambda raw: raw["search_space"].pop("lr"), "search_space", "missing lr",
                 id="missing-lr"),
    pytest.param(lambda raw: raw.pop("dataset"), "dataset", "missing", id="missing-dataset"),
    pytest.param(lambda raw: raw.pop("search_space"), "search_space", "missing",
                 id="missing-search-space"),
    pytest.param(_top(epochs="ten"), "epochs", "expected an integer", id="epochs-string"),
    pytest.param(_top(epochs=True), "epochs", "boolean", id="epochs-bool"),
    pytest.param(_top(epochs=0), "epochs", ">= 1", id="epochs-zero"),
    pytest.param(_top(augment=3), "augment", "true or false", id="augment-int"),
    pytest.param(_top(val_fraction=1.5), "val_fraction", "(0, 1)", id="val-fraction-too-big"),
    pytest.param(_space(lr={"type": "float", "low": 0.1, "high": 0.01}), "search_space.lr",
                 "empty range", id="low-above-high"),
    pytest.param(_space(batch_size=[]), "search_space.batch_size", "empty list of choices",
                 id="empty-choices"),
    pytest.param(_space(weight_decay={"type": "float", "low": 0.0, "high": 0.1, "log": True}),
                 "search_space.weight_decay", "log scale needs low > 0", id="log-low-zero"),
    pytest.param(_space(lr={"type": "float", "low": 1e-4, "high": 0.1, "lgo": True}),
                 "search_space.lr.lgo", "unknown key", id="unknown-range-key"),
    pytest.param(_space(lr={"type": "float", "low": 1e-4, "high": 0.1, "step": 1}),
                 "search_space.lr.step", "only int ranges", id="step-on-float"),
    pytest.param(_space(lr={"type": "normal", "low": 1e-4, "high": 0.1}),
                 "search_space.lr.type", "expected float, int or categorical",
                 id="unknown-range-type"),
    pytest.param(_space(lr={"type": "float", "low": "tiny", "high": 0.1}),
                 "search_space.lr.low", "expected a finite number", id="bound-not-a-number"),
    pytest.param(_space(depth={"type": "int", "low": 1.5, "high": 3}),
                 "search_space.depth.low", "expected an integer", id="int-range-float-bound"),
    pytest.param(_top(metric="val_loss", direction="maximize"), "direction", "minimize",
                 id="metric-direction-mismatch"),
    pytest.param(_top(metric="accuracy"), "metric", "not one of", id="unknown-metric"),
    pytest.param(_top(sampler={"name": "grid"}), "sampler.name", "'grid' is not one of",
                 id="unknown-sampler"),
    pytest.param(_top(pruner={"name": "median", "n_warmup": 1}), "pruner.n_warmup",
                 "unknown argument of median", id="unknown-pruner-argument"),
    pytest.param(_top(sampler={"name": "tpe", "seed": 1}), "sampler.seed",
                 "unknown argument of tpe", id="sampler-seed-comes-from-cli"),
    pytest.param(_top(pruner=3), "pruner", "expected a mapping", id="pruner-not-mapping"),
    pytest.param(_space(arch=["mlp", "transformer"]), "search_space.arch",
                 "'transformer' is not one of", id="unknown-architecture"),
    pytest.param(_space(arch={"type": "float", "low": 0.0, "high": 1.0}), "search_space.arch",
                 "list of choices or a fixed value", id="architecture-as-range"),
    pytest.param(_space(optimizer="adam"), "search_space.optimizer", "'adam' is not one of",
                 id="unknown-optimizer"),
    pytest.param(_space(dropout=1.0), "search_space.dropout", "[0, 1.0)", id="dropout-one"),
    pytest.param(_space(dropout={"type": "float", "low": 0.0, "high": 1.0}),
                 "search_space.dropout", "[0, 1.0)", id="dropout-range-reaching-one"),
    pytest.param(_space(lr=[0.0, 0.1]), "search_space.lr", "(0, inf)", id="lr-zero"),
    pytest.param(_space(batch_size={"type": "float", "low": 16, "high": 64}),
                 "search_space.batch_size", "not float", id="batch-size-float-range"),
    pytest.param(_space(batch_size=[16, 0]), "search_space.batch_size", "integers >= 1",
                 id="batch-size-zero"),
    pytest.param(_space(width=True), "search_space.width", "integers >= 1", id="width-bool"),
    pytest.param(_top(enqueue_trials=[{"lr": 1e-3}, {"width": 64}]), "enqueue_trials[1]",
                 "width = 64, but the space fixes it at 32", id="enqueue-fixed-param-other-value"),
    pytest.param(_top(enqueue_trials=[{"lr": 1e-3}, {"momentum": 0.9}]), "enqueue_trials[1]",
                 "'momentum' is not a searched hyperparameter", id="enqueue-unknown-param"),
    pytest.param(_top(enqueue_trials={"lr": 1e-3}), "enqueue_trials",
                 "list of parameter mappings", id="enqueue-not-a-list"),
]


@pytest.mark.parametrize(("change", "key", "reason"), REJECTED)
def test_invalid_spec_raises_spec_error_naming_file_key_and_reason(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], key: str, reason: str
) -> None:
    path = _spec_with(tmp_path, change)

    with pytest.raises(SpecError) as info:
        load_spec(path)

    error = info.value
    assert (error.source, error.key) == (str(path), key)
    assert reason in error.reason
    assert str(error) == f"{path}: {key}: {error.reason}"


def test_unknown_key_lists_the_known_keys(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(_spec_with(tmp_path, _top(epoch=5)))
    assert "epochs" in info.value.reason and "search_space" in info.value.reason


def test_unknown_pruner_argument_lists_the_real_ones(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(_spec_with(tmp_path, _top(pruner={"name": "median", "n_warmup": 1})))
    assert "n_warmup_steps" in info.value.reason


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "dataset: mnist\nepochs: 3\n\tsearch_space: {}\n")

    with pytest.raises(SpecError) as info:
        load_spec(path)

    assert (info.value.source, info.value.key) == (str(path), "<file>")
    assert info.value.reason == "not valid YAML at line 3"


@pytest.mark.parametrize("text", ["- dataset: mnist\n- epochs: 3\n", "just words\n", ""])
def test_file_that_is_not_a_mapping_is_rejected(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)

    with pytest.raises(SpecError) as info:
        load_spec(path)

    assert (info.value.source, info.value.key) == (str(path), "<file>")
    assert "mapping" in info.value.reason


def test_missing_file_is_a_spec_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(SpecError) as info:
        load_spec(path)

    assert (info.value.source, info.value.key) == (str(path), "<file>")
    assert "cannot be read" in info.value.reason


# ---------------------------------------------------------------------------------------------
# Accepted forms
# ---------------------------------------------------------------------------------------------


def test_bound_written_without_a_dot_is_read_as_a_float(tmp_path: Path) -> None:
    text = yaml.safe_dump(BASE, sort_keys=False).replace("0.0001", "1e-4")
    assert "low: 1e-4" in text  # PyYAML would read this back as the string '1e-4'
    spec = load_spec(_write(tmp_path, text))

    lr = spec.param("lr")
    assert type(lr.low) is float and lr.low == 1e-4
    assert (lr.kind, lr.high, lr.log) == ("float", 1e-2, True)


def test_omitted_hyperparameters_get_their_fixed_defaults(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, BASE))

    for name, default in HYPERPARAMETERS.items():
        if default is not None and name in _applicable("mlp") | _applicable("cnn"):
            assert spec.param(name) == ParamSpec(name, "fixed", value=default)
    with pytest.raises(KeyError):
        spec.param("momentum")


def test_scalar_is_fixed_and_suggest_returns_it_without_touching_the_trial(
    tmp_path: Path,
) -> None:
    spec = load_spec(_spec_with(tmp_path, _space(optimizer="sgd", lr=0.01)))

    assert spec.param("optimizer") == ParamSpec("optimizer", "fixed", value="sgd")
    assert spec.param("optimizer").suggest(_UntouchableTrial()) == "sgd"
    assert spec.param("lr").suggest(_UntouchableTrial()) == 0.01


def test_list_becomes_categorical_and_long_form_categorical_is_the_same(
    tmp_path: Path,
) -> None:
    short = load_spec(_spec_with(tmp_path, _space(arch=["mlp", "cnn"])))
    long = load_spec(_spec_with(
        tmp_path, _space(arch={"type": "categorical", "choices": ["mlp", "cnn"]})))

    assert short.param("arch") == ParamSpec("arch", "categorical", choices=("mlp", "cnn"))
    assert long.param("arch") == short.param("arch")


def test_enqueued_trial_of_searched_params_is_kept(tmp_path: Path) -> None:
    spec = load_spec(_spec_with(tmp_path, _top(enqueue_trials=[{"lr": 1e-3, "arch": "cnn"}])))

    assert spec.enqueue_trials == ({"lr": 1e-3, "arch": "cnn"},)


# ---------------------------------------------------------------------------------------------
# Drawing from a trial
# ---------------------------------------------------------------------------------------------


def test_suggest_draws_inside_the_space_with_log_scale_recorded(tmp_path: Path) -> None:
    raw_depth = {"type": "int", "low": 2, "high": 8, "step": 2}
    spec = load_spec(_spec_with(tmp_path, _space(depth=raw_depth)))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))

    seen_batch_sizes, seen_depths = set(), set()
    for _ in range(30):
        trial = study.ask()
        params = {p.name: p.suggest(trial) for p in spec.search_space}
        assert 1e-4 <= params["lr"] <= 1e-2
        assert 0.0 <= params["dropout"] <= 0.5
        assert params["arch"] in ("mlp", "cnn")
        seen_batch_sizes.add(params["batch_size"])
        seen_depths.add(params["depth"])
        assert set(trial.params) == {"lr", "batch_size", "depth", "dropout", "arch"}
        assert params["width"] == 32 and params["optimizer"] == "adamw"
        study.tell(trial, 0.0)

    assert seen_batch_sizes == {16, 32}
    assert seen_depths <= {2, 4, 6, 8} and len(seen_depths) > 1
    distributions = study.trials[0].distributions
    assert distributions["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert distributions["dropout"].log is False
    assert distributions["depth"] == optuna.distributions.IntDistribution(2, 8, step=2)


def test_suggest_against_a_fixed_trial_returns_its_values(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, BASE))
    trial = optuna.trial.FixedTrial(
        {"lr": 3e-3, "batch_size": 32, "depth": 2, "dropout": 0.25, "arch": "cnn"})

    params = {p.name: p.suggest(trial) for p in spec.search_space}

    assert params == {"lr": 3e-3, "batch_size": 32, "depth": 2, "dropout": 0.25,
                      "arch": "cnn", "width": 32, "optimizer": "adamw",
                      "weight_decay": 5.0e-4, "label_smoothing": 0.0}
    assert trial.distributions["lr"].log is True
    assert isinstance(trial.distributions["depth"], optuna.distributions.IntDistribution)


def test_log_scale_int_range_draws_in_range(tmp_path: Path) -> None:
    spec = load_spec(_spec_with(tmp_path, _space(
        batch_size={"type": "int", "low": 16, "high": 256, "log": True})))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))

    values = [spec.param("batch_size").suggest(study.ask()) for _ in range(20)]

    assert all(isinstance(v, int) and 16 <= v <= 256 for v in values)
    assert study.trials[0].distributions["batch_size"].log is True
    # log-uniform: the geometric mean of the range (64) splits the draws roughly in half
    assert 4 <= sum(v < 64 for v in values) <= 16


# ---------------------------------------------------------------------------------------------
# Gaps found in review, now closed
# ---------------------------------------------------------------------------------------------


def test_int_range_with_log_and_step_is_rejected_at_load(tmp_path: Path) -> None:
    path = _spec_with(tmp_path, _space(
        depth={"type": "int", "low": 1, "high": 8, "log": True, "step": 2}))

    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.key.startswith("search_space.depth")


def test_unknown_key_in_categorical_mapping_is_rejected(tmp_path: Path) -> None:
    path = _spec_with(tmp_path, _space(
        arch={"type": "categorical", "choices": ["mlp", "cnn"], "defualt": "mlp"}))

    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.key == "search_space.arch.defualt"


@pytest.mark.parametrize("enqueued", [{"lr": 10.0}, {"arch": "resnet"}])
def test_enqueued_value_outside_the_search_space_is_rejected(
    tmp_path: Path, enqueued: dict[str, Any]
) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(_spec_with(tmp_path, _top(enqueue_trials=[enqueued])))
    assert info.value.key == "enqueue_trials[0]"


def test_fixed_value_written_without_a_dot_is_read_as_a_float(tmp_path: Path) -> None:
    text = yaml.safe_dump(BASE, sort_keys=False) + "  weight_decay: 5e-4\n"
    spec = load_spec(_write(tmp_path, text))

    assert spec.param("weight_decay") == ParamSpec("weight_decay", "fixed", value=5e-4)


def test_dataset_name_is_checked_at_load(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(_spec_with(tmp_path, _top(dataset="fashion-mnist")))
    assert info.value.key == "dataset"
    assert "fashion_mnist" in info.value.reason


def test_pruner_argument_of_the_wrong_type_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(_spec_with(tmp_path, _top(pruner={"name": "median", "n_warmup_steps": -1})))
    assert info.value.key == "pruner"
    assert "median rejects" in info.value.reason


# ---------------------------------------------------------------------------------------------
# The JSON Schema and the built-in specs from the command line
# ---------------------------------------------------------------------------------------------


def _cli(*args: str):
    from click.testing import CliRunner

    from hpsearch.cli import main

    return CliRunner().invoke(main, list(args))


def test_published_schema_accepts_the_builtin_specs_and_rejects_typos() -> None:
    import json

    import jsonschema

    result = _cli("spec", "schema")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for name in builtin_spec_names():
        validator.validate(yaml.safe_load(load_builtin_spec(name).to_yaml()))
    # A registered name, or any string: the path of a folder or manifest of own images.
    assert schema["properties"]["dataset"]["anyOf"][0]["enum"] == ["cifar10", "fashion_mnist",
                                                                   "mnist"]
    assert schema["properties"]["dataset"]["anyOf"][1]["type"] == "string"
    typo = copy.deepcopy(BASE) | {"epoch": 3}
    assert any("epoch" in e.message for e in validator.iter_errors(typo))
    bad_range = copy.deepcopy(BASE)
    bad_range["search_space"]["lr"] = {"type": "float", "low": 1e-4, "hihg": 0.1}
    assert list(validator.iter_errors(bad_range))


@pytest.mark.parametrize("name", builtin_spec_names())
def test_spec_show_prints_the_builtin_file_with_its_comments(name: str) -> None:
    result = _cli("spec", "show", name)
    assert result.exit_code == 0
    assert result.output.startswith("#")
    assert yaml.safe_load(result.output)["dataset"] == name


def test_spec_show_of_an_unknown_name_lists_the_choices() -> None:
    result = _cli("spec", "show", "imagenet")
    assert result.exit_code == 2
    assert "unknown dataset 'imagenet'; choose one of: cifar10, fashion_mnist, mnist" in (
        result.output)


def test_a_registered_data_set_without_its_own_spec_gets_the_default_one(monkeypatch) -> None:
    import dataclasses as dc

    from hpsearch.data_utils import get_dataset, list_datasets, registry

    list_datasets()
    source = get_dataset("mnist")
    monkeypatch.setitem(registry._SOURCES, "mnist_copy",
                        dc.replace(source, info=dc.replace(source.info, name="mnist_copy")))

    spec = load_builtin_spec("mnist_copy")

    assert spec.dataset == "mnist_copy" and spec.source == "built-in spec _default.yaml"
    assert builtin_spec_names() == ["cifar10", "fashion_mnist", "mnist"]


# ---------------------------------------------------------------------------------------------
# Conditional spaces: parameters of their own per architecture (or optimizer)
# ---------------------------------------------------------------------------------------------

CONDITIONAL: dict[str, Any] = {
    "dataset": "fashion_mnist",
    "epochs": 3,
    "search_space": {
        "batch_size": [64, 128],
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "arch": {
            "cnn": {"depth": {"type": "int", "low": 2, "high": 4}, "width": [32, 64]},
            "mlp": {"depth": [1, 2], "width": [64, 128, 256]},
        },
        "optimizer": {
            "adamw": {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}},
            "sgd": {"lr": {"type": "float", "low": 1.0e-2, "high": 1.0e-1, "log": True}},
        },
    },
    "enqueue_trials": [{"arch": "cnn", "depth": 3, "width": 64, "optimizer": "adamw",
                        "lr": 3.0e-3}],
}


def _conditional(tmp_path: Path, change: Callable[[dict[str, Any]], None] = lambda raw: None):
    raw = copy.deepcopy(CONDITIONAL)
    change(raw)
    return load_spec(_write(tmp_path, raw))


def test_each_choice_draws_only_its_own_parameters_under_their_own_names(tmp_path) -> None:
    spec = _conditional(tmp_path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))

    seen = {"cnn": set(), "mlp": set()}
    for _ in range(60):
        trial = study.ask()
        params = spec.sample(trial)
        arch, optimizer = params["arch"], params["optimizer"]
        assert set(trial.params) == {"batch_size", "dropout", "arch", "optimizer",
                                     f"{arch}.depth", f"{arch}.width", f"{optimizer}.lr"}
        assert params["depth"] == trial.params[f"{arch}.depth"]
        low, high = (1e-3, 1e-2) if optimizer == "adamw" else (1e-2, 1e-1)
        assert low <= params["lr"] <= high
        seen[arch].add((params["depth"], params["width"]))
        assert params["weight_decay"] == 5.0e-4 and params["label_smoothing"] == 0.0
        study.tell(trial, 0.0)

    assert {d for d, _ in seen["cnn"]} == {2, 3, 4} and {w for _, w in seen["cnn"]} == {32, 64}
    assert {d for d, _ in seen["mlp"]} == {1, 2} and {w for _, w in seen["mlp"]} == {64, 128, 256}


def test_enqueued_plain_names_become_optuna_names_and_resume_draws_the_same(tmp_path) -> None:
    spec = _conditional(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="c", storage=storage,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    (enqueued,) = spec.enqueued_params()
    assert enqueued == {"arch": "cnn", "cnn.depth": 3, "cnn.width": 64, "optimizer": "adamw",
                        "adamw.lr": 3.0e-3}
    study.enqueue_trial(enqueued)
    first = spec.sample(trial := study.ask())
    assert {k: first[k] for k in ("arch", "depth", "width", "optimizer", "lr")} == {
        "arch": "cnn", "depth": 3, "width": 64, "optimizer": "adamw", "lr": 3.0e-3}
    study.tell(trial, 0.5)
    for _ in range(4):
        trial = study.ask()
        spec.sample(trial)
        study.tell(trial, 0.1)

    # Resumed in another process: the same names and distributions; a retry of a trial
    # (a dead worker's) with its Optuna params draws exactly its hyperparameters.
    resumed = optuna.load_study(study_name="c", storage=storage,
                                sampler=optuna.samplers.TPESampler(seed=1, group=True))
    old = resumed.trials[3]
    resumed.enqueue_trial(old.params)
    again = spec.sample(resumed.ask())
    plain = {k.split(".")[-1]: v for k, v in old.params.items()}
    assert {k: again[k] for k in plain} == plain
    for _ in range(3):
        trial = resumed.ask()
        spec.sample(trial)
        resumed.tell(trial, 0.2)


def test_enqueued_set_may_name_a_fixed_parameter_with_its_value(tmp_path) -> None:
    spec = _conditional(tmp_path, lambda raw: raw["enqueue_trials"][0].update(
        weight_decay=5.0e-4))

    (enqueued,) = spec.enqueued_params()
    assert "weight_decay" not in enqueued and enqueued["cnn.depth"] == 3


def test_conditional_spec_round_trips_through_its_yaml(tmp_path) -> None:
    spec = _conditional(tmp_path)
    again = tmp_path / "again.yaml"
    again.write_text(spec.to_yaml())

    assert load_spec(again).to_dict() == spec.to_dict()
    assert spec.to_dict()["search_space"]["arch"]["mlp"] == {"depth": [1, 2],
                                                             "width": [64, 128, 256]}


CONDITIONAL_REJECTED = [
    pytest.param(lambda raw: raw["search_space"]["arch"]["mlp"].pop("depth"),
                 "search_space.arch.mlp", "missing depth", id="branch-without-depth"),
    pytest.param(lambda raw: raw["search_space"].update(depth=2), "search_space.arch.cnn.depth",
                 "already drawn above this branch", id="drawn-twice"),
    pytest.param(lambda raw: raw["search_space"]["arch"]["cnn"].update(momentum=0.9),
                 "search_space.arch.cnn.momentum", "unknown hyperparameter",
                 id="unknown-in-branch"),
    pytest.param(lambda raw: raw["search_space"]["arch"]["cnn"].update(
        depth={"type": "int", "low": 4, "high": 2}), "search_space.arch.cnn.depth",
        "empty range: low 4 > high 2", id="empty-range-in-branch"),
    pytest.param(lambda raw: raw["search_space"]["arch"]["cnn"].update(
        depth={"type": "int", "low": 2, "high": 4, "lgo": True}),
        "search_space.arch.cnn.depth.lgo", "unknown key", id="unknown-range-key-in-branch"),
    pytest.param(lambda raw: raw["search_space"]["arch"].update(transformer={"depth": 1}),
                 "search_space.arch", "'transformer' is not one of", id="unknown-arch-branch"),
    pytest.param(lambda raw: raw["search_space"].update(batch_size={"64": {"lr": 0.1}}),
                 "search_space.batch_size", "only arch and optimizer choices can open branches",
                 id="branch-on-a-count"),
    pytest.param(lambda raw: raw["search_space"]["arch"].update(cnn=3),
                 "search_space.arch.cnn", "expected a mapping", id="branch-not-a-mapping"),
    pytest.param(lambda raw: raw["enqueue_trials"][0].update(width=512), "enqueue_trials[0]",
                 "width = 512 lies outside the search space", id="enqueued-outside-branch"),
    pytest.param(lambda raw: raw["enqueue_trials"][0].update(arch="mlp", depth=3),
                 "enqueue_trials[0]", "depth = 3 lies outside", id="enqueued-other-branch"),
    pytest.param(lambda raw: raw["enqueue_trials"][0].update(weight_decay=1e-4),
                 "enqueue_trials[0]", "weight_decay = 0.0001, but the space fixes it at 0.0005",
                 id="enqueued-fixed-other-value"),
]


@pytest.mark.parametrize(("change", "key", "reason"), CONDITIONAL_REJECTED)
def test_invalid_conditional_space_names_the_branch(tmp_path, change, key, reason) -> None:
    with pytest.raises(SpecError) as info:
        _conditional(tmp_path, change)
    assert (info.value.key, reason in info.value.reason) == (key, True), info.value.reason
