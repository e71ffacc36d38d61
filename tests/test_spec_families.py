"""Each family's own hyperparameters in a study spec (the backbones' pretrained, freeze and
backbone_lr_mult; the from-scratch families' depth and width), and the definitions studies
recorded before these existed: they must compare equal, so those studies keep resuming."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from hpsearch.errors import HpsearchError
from hpsearch.params import TrialParams
from hpsearch.search.config import RunConfig
from hpsearch.search.storage import DEFINITION_ATTR, _differences, open_study, study_definition
from hpsearch.studies import SpecError, load_builtin_spec, load_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

DATA = Path(__file__).parent / "data"
# What hpsearch 0fb1659 (before the backbones) recorded as each study's definition, written by
# that version's storage.study_definition for the built-in specs and DATA/user_spec_*.yaml.
OLD_DEFINITIONS = json.loads((DATA / "study_definitions_0fb1659.json").read_text())

FINE_TUNING: dict[str, Any] = {
    "dataset": "cifar10",
    "epochs": 3,
    "search_space": {
        "batch_size": [32, 64],
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "arch": {
            "resnet18": {"freeze": ["none", "backbone", 2],
                         "backbone_lr_mult": {"type": "float", "low": 0.01, "high": 1.0,
                                              "log": True},
                         "pretrained": True},
            "mobilenet_v3_small": {"freeze": {"type": "int", "low": 0, "high": 14}},
            "cnn": {"depth": [2, 3]},
        },
    },
    "enqueue_trials": [{"arch": "resnet18", "freeze": 2, "backbone_lr_mult": 0.1,
                        "lr": 1.0e-3, "batch_size": 32, "dropout": 0.1}],
}


def _load(tmp_path: Path, raw: dict[str, Any]):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_spec(path)


def _config(spec, name: str, storage: str = "sqlite:///:memory:") -> RunConfig:
    return RunConfig(spec=spec, trials=1, study_name=name, register_name=name, storage=storage,
                     train_subset=3000 if name == "fashion_mnist" else None, seed=0)


def _spec(name: str):
    return load_builtin_spec(name) if not name.startswith("user_spec") else load_spec(
        DATA / f"{name}.yaml")


# ---------------------------------------------------------------------------------------------
# Studies created before the backbones keep resuming
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OLD_DEFINITIONS))
def test_a_definition_recorded_before_backbones_compares_equal(name: str) -> None:
    new = json.loads(json.dumps(study_definition(_config(_spec(name), name))))

    assert _differences(OLD_DEFINITIONS[name], new) == []
    assert new == OLD_DEFINITIONS[name]


@pytest.mark.parametrize("name", ["fashion_mnist", "user_spec_conditional"])
def test_a_study_created_by_the_previous_version_resumes(name: str, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    old = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    old.set_user_attr(DEFINITION_ATTR, OLD_DEFINITIONS[name])
    old.set_user_attr("hpsearch.dataset", OLD_DEFINITIONS[name]["dataset"])
    trial = old.ask()
    old.tell(trial, 0.5)

    resumed = open_study(_config(_spec(name), name, storage), tracking_uri="file:unused")

    assert len(resumed.trials) == 1
    # The check still refuses a real change: the test would catch a comparison that passes
    # everything.
    changed = _spec(name).replace(epochs=OLD_DEFINITIONS[name]["epochs"] + 1)
    with pytest.raises(HpsearchError, match="epochs"):
        open_study(_config(changed, name, storage), tracking_uri="file:unused")


def test_a_trial_recorded_before_backbones_reads_back_and_logs_the_same_params() -> None:
    recorded = {"lr": 0.005, "batch_size": 64, "depth": 2, "dropout": 0.1, "arch": "lenet",
                "width": 32, "optimizer": "adamw", "weight_decay": 0.0001,
                "label_smoothing": 0.0}

    params = TrialParams.from_dict(recorded)

    assert params.to_dict() == recorded and list(params.to_dict()) == list(recorded)
    assert (params.pretrained, params.freeze, params.backbone_lr_mult) == (None, None, None)


# ---------------------------------------------------------------------------------------------
# The conditional form carries each family's hyperparameters
# ---------------------------------------------------------------------------------------------


def test_each_architecture_draws_its_own_family_hyperparameters(tmp_path: Path) -> None:
    spec = _load(tmp_path, FINE_TUNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))

    drawn: dict[str, set] = {"resnet18": set(), "mobilenet_v3_small": set(), "cnn": set()}
    for _ in range(40):
        trial = study.ask()
        values = spec.sample(trial)
        params = TrialParams.from_dict(values)
        logged = params.to_dict()
        if params.arch == "cnn":
            assert (params.pretrained, params.freeze, params.backbone_lr_mult) == (
                None, None, None)
            assert logged["depth"] in (2, 3) and logged["width"] == 32
        else:
            assert "depth" not in logged and "width" not in logged
            assert params.pretrained is True
        if params.arch == "resnet18":
            assert params.freeze in ("none", "backbone", 2)
            assert 0.01 <= params.backbone_lr_mult <= 1.0
            assert {"resnet18.freeze", "resnet18.backbone_lr_mult"} <= set(trial.params)
        if params.arch == "mobilenet_v3_small":
            assert 0 <= params.freeze <= 14 and params.backbone_lr_mult == 1.0
        drawn[params.arch].add(params.freeze)
        study.tell(trial, 0.0)

    assert drawn["resnet18"] == {"none", "backbone", 2}
    resolved = spec.to_dict()["search_space"]
    # A default named nowhere is fixed at the top level where a family that takes it can be
    # drawn (width: cnn); one named in some branch is not (as width was before backbones),
    # and the architectures whose path does not draw it get its default when sampled
    # (mobilenet_v3_small: pretrained true, backbone_lr_mult 1.0, asserted above).
    assert resolved["width"] == 32
    assert not {"depth", "pretrained", "freeze", "backbone_lr_mult"} & set(resolved)
    assert spec.enqueued_params() == [{"arch": "resnet18", "resnet18.freeze": 2,
                                       "resnet18.backbone_lr_mult": 0.1, "lr": 1.0e-3,
                                       "batch_size": 32, "dropout": 0.1}]


def test_the_architectures_to_fetch_weights_for_are_those_that_may_be_pretrained(
        tmp_path: Path) -> None:
    assert _load(tmp_path, FINE_TUNING).pretrained_archs() == ["resnet18", "mobilenet_v3_small"]
    no_weights = _with(lambda raw: raw["search_space"]["arch"]["resnet18"].update(
        pretrained=False))
    assert _load(tmp_path, no_weights).pretrained_archs() == ["mobilenet_v3_small"]
    searched = _with(lambda raw: (raw["search_space"]["arch"]["resnet18"].pop("pretrained"),
                                  raw["search_space"].update(pretrained=[False, True])))
    assert _load(tmp_path, searched).pretrained_archs() == ["resnet18", "mobilenet_v3_small"]
    assert load_builtin_spec("fashion_mnist").pretrained_archs() == []


def test_a_space_of_backbones_only_needs_no_depth_and_records_no_width(tmp_path: Path) -> None:
    raw = {"dataset": "cifar10", "search_space": {
        "lr": 1.0e-3, "batch_size": 32, "dropout": 0.0, "arch": ["resnet18", "efficientnet_b0"],
        "freeze": ["backbone", 1], "backbone_lr_mult": {"type": "float", "low": 0.05,
                                                        "high": 0.5, "log": True}}}

    resolved = _load(tmp_path, raw).to_dict()["search_space"]

    assert "depth" not in resolved and "width" not in resolved
    assert resolved["pretrained"] is True and resolved["freeze"] == ["backbone", 1]


def _with(change):
    raw = copy.deepcopy(FINE_TUNING)
    change(raw)
    return raw


REJECTED = [
    pytest.param(lambda raw: raw["search_space"]["arch"]["resnet18"].update(depth=2),
                 "search_space.arch.resnet18.depth",
                 "resnet18 does not take depth; it takes: pretrained, freeze, backbone_lr_mult",
                 id="backbone-given-depth"),
    pytest.param(lambda raw: raw["search_space"]["arch"]["cnn"].update(freeze=1),
                 "search_space.arch.cnn.freeze", "cnn does not take freeze; it takes: depth, "
                 "width", id="scratch-family-given-freeze"),
    pytest.param(lambda raw: raw["search_space"].update(
        arch={"cnn": {"depth": 2}}, pretrained=True), "search_space.pretrained",
        "no architecture of this space (cnn) takes pretrained", id="top-level-taken-by-none"),
    pytest.param(lambda raw: raw["search_space"]["arch"]["cnn"].pop("depth"),
                 "search_space.arch.cnn", "missing depth", id="scratch-branch-without-depth"),
    pytest.param(lambda raw: raw["search_space"]["arch"]["resnet18"].update(freeze=["all"]),
                 "search_space.arch.resnet18.freeze", "none or backbone or a number",
                 id="freeze-unknown-word"),
    pytest.param(lambda raw: raw["search_space"]["arch"]["resnet18"].update(freeze=-1),
                 "search_space.arch.resnet18.freeze", ">= 0, got [-1]", id="freeze-negative"),
    pytest.param(lambda raw: raw["search_space"]["arch"]["resnet18"].update(
        backbone_lr_mult=2.0), "search_space.arch.resnet18.backbone_lr_mult",
        "values must lie in (0, 1.0]", id="lr-mult-above-one"),
    pytest.param(lambda raw: raw["search_space"]["arch"]["resnet18"].update(
        pretrained=["yes"]), "search_space.arch.resnet18.pretrained", "true or false",
        id="pretrained-not-a-bool"),
]


@pytest.mark.parametrize(("change", "key", "reason"), REJECTED)
def test_a_family_hyperparameter_where_it_does_not_belong_is_a_spec_error(
        tmp_path: Path, change, key: str, reason: str) -> None:
    with pytest.raises(SpecError) as info:
        _load(tmp_path, _with(change))

    assert info.value.key == key
    assert reason in info.value.reason, info.value.reason


def test_a_resolved_fine_tuning_spec_round_trips_through_its_yaml(tmp_path: Path) -> None:
    spec = _load(tmp_path, FINE_TUNING)
    again = tmp_path / "again.yaml"
    again.write_text(spec.to_yaml())

    assert load_spec(again).to_dict() == spec.to_dict()
    assert spec.replace(epochs=5).epochs == 5
