"""Studies of pretrained backbones: the weights fetched once before the first trial, the
backbones a study leaves out where their weights cannot be had (decided once, when the
study is created), the image sizes that fit the data, and the built-in own-images study.
No test needs the network: weights are created and saved under torchvision's file names."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from pretrained_files import counting_downloads, offline_cache, save_weights

from hpsearch.models.weights import WeightsUnavailable, weights_file
from hpsearch.search.config import RunConfig
from hpsearch.search.pretrained import fetch_weights, fit_to_data, recorded_architectures
from hpsearch.search.progress import Reporter
from hpsearch.search.storage import open_study, recorded_definition
from hpsearch.studies import SpecError, load_spec

SKIP_SPEC = {
    "dataset": "fashion_mnist",
    "epochs": 2,
    "missing_weights": "skip",
    "scratch_max_image_size": 64,
    "search_space": {
        "lr": 1.0e-3,
        "batch_size": 32,
        "dropout": 0.0,
        "image_size": [16, 24, 32],
        "arch": {
            "mobilenet_v3_small": {"freeze": ["none", "backbone"]},
            "resnet18": {"freeze": ["none", 2]},
            "cnn": {"depth": 2},
        },
    },
    "enqueue_trials": [
        {"arch": "resnet18", "freeze": 2, "image_size": 32},
        {"arch": "mobilenet_v3_small", "freeze": "none", "image_size": 24},
        {"arch": "cnn"},
    ],
}


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return offline_cache(monkeypatch, tmp_path / "torch")


def _spec(tmp_path: Path, raw: dict = SKIP_SPEC, **changes: object):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw | changes, sort_keys=False))
    return load_spec(path)


def _reporter() -> tuple[Reporter, io.StringIO]:
    stream = io.StringIO()
    return Reporter("val_accuracy", stream=stream, live=False), stream


# ---------------------------------------------------------------------------------------------
# Weights: fetched once, or the backbone left out (skip), or the run stopped (stop)
# ---------------------------------------------------------------------------------------------


def test_a_skip_spec_leaves_out_the_backbones_it_cannot_fetch_in_one_line(
        tmp_path: Path, torch_home: Path) -> None:
    save_weights("mobilenet_v3_small")
    reporter, stream = _reporter()

    searched = fetch_weights(_spec(tmp_path), reporter)

    folder = weights_file("resnet18").parent
    assert searched.architectures() == ["mobilenet_v3_small", "cnn"]
    assert [t["arch"] for t in searched.enqueue_trials] == ["mobilenet_v3_small", "cnn"]
    assert stream.getvalue().splitlines() == [
        f"downloading the pretrained weights of resnet18 (45 MB) into {folder}",
        f"left out resnet18: pretrained weights neither cached nor downloadable "
        f"(resnet18-f37072fd.pth); put the files in {folder} to search them in a new study; "
        f"searching mobilenet_v3_small, cnn"]


def test_a_stop_spec_stops_and_a_skip_spec_with_nothing_left_stops_too(
        tmp_path: Path, torch_home: Path) -> None:
    only_backbones = SKIP_SPEC["search_space"] | {
        "arch": {"resnet18": {"freeze": ["none", 2]}}}
    reporter, _ = _reporter()

    with pytest.raises(WeightsUnavailable, match=r"resnet18-f37072fd\.pth not in"):
        fetch_weights(_spec(tmp_path, missing_weights="stop"), reporter)
    with pytest.raises(WeightsUnavailable, match=r"resnet18-f37072fd\.pth not in"):
        fetch_weights(_spec(tmp_path, search_space=only_backbones, enqueue_trials=[]), reporter)


def test_missing_weights_are_downloaded_once_each_and_cached_ones_never(
        tmp_path: Path, torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_weights("mobilenet_v3_small")
    downloaded = counting_downloads(monkeypatch)
    reporter, _ = _reporter()

    first = fetch_weights(_spec(tmp_path), reporter)
    again = fetch_weights(_spec(tmp_path), reporter)

    assert downloaded == ["resnet18-f37072fd.pth"]
    assert first.architectures() == again.architectures() == [
        "mobilenet_v3_small", "resnet18", "cnn"]


def _created(tmp_path: Path, spec, reporter: Reporter) -> str:
    """Create the study ``spec`` searches now (as the runner does); its storage URL."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    config = RunConfig(spec=spec, trials=1, study_name="own", register_name="own",
                       storage=storage)
    open_study(config, tracking_uri="sqlite:///unused.db")
    return storage


def test_a_resumed_study_searches_the_architectures_it_was_created_with(
        tmp_path: Path, torch_home: Path) -> None:
    save_weights("mobilenet_v3_small")
    reporter, stream = _reporter()
    assert recorded_definition(f"sqlite:///{tmp_path / 'optuna.db'}", "own") is None
    assert not (tmp_path / "optuna.db").exists()  # looking does not create the file
    created = fetch_weights(_spec(tmp_path), reporter)
    storage = _created(tmp_path, created, reporter)
    save_weights("resnet18")  # the file appears before the study resumes

    recorded = recorded_architectures(recorded_definition(storage, "own"))
    resumed = fetch_weights(_spec(tmp_path), reporter, recorded=recorded)
    fresh = fetch_weights(_spec(tmp_path), reporter)

    assert recorded == ["mobilenet_v3_small", "cnn"]
    assert resumed == created  # same definition: the resume is not refused
    assert fresh.architectures() == ["mobilenet_v3_small", "resnet18", "cnn"]
    assert stream.getvalue().splitlines()[-1] == (
        "resnet18: weights now in the cache, but this study was created without them and "
        "keeps its architectures; search them in a new study (--study-name)")
    # And the other way: a recorded backbone whose file has gone must be fetched again.
    weights_file("mobilenet_v3_small").unlink()
    with pytest.raises(WeightsUnavailable, match=r"mobilenet_v3_small-047dcff4\.pth"):
        fetch_weights(_spec(tmp_path), reporter, recorded=recorded)


# ---------------------------------------------------------------------------------------------
# The data decide the image sizes and the from-scratch families
# ---------------------------------------------------------------------------------------------


def test_image_sizes_above_the_datas_are_left_out_and_enqueued_ones_follow(
        tmp_path: Path) -> None:
    reporter, stream = _reporter()
    spec = _spec(tmp_path)

    at_28 = fit_to_data(spec, 28, reporter)
    at_12 = fit_to_data(spec, 12, reporter)
    at_32 = fit_to_data(spec, 32, reporter)

    assert at_28.param("image_size").choices == (16, 24)
    assert [t.get("image_size") for t in at_28.enqueue_trials] == [24, 24, None]
    assert "image_size" not in at_12.to_dict()["search_space"]  # the data set's size
    assert [t.get("image_size") for t in at_12.enqueue_trials] == [None, None, None]
    assert at_32 == spec
    assert stream.getvalue().splitlines() == [
        "image_size 32 left out: the images are 28 px (a trial downsamples, never enlarges)",
        "image_size 16, 24, 32 left out: the images are 12 px (a trial downsamples, never "
        "enlarges)"]


def test_an_image_size_range_is_cut_at_the_datas_size(tmp_path: Path) -> None:
    space = SKIP_SPEC["search_space"] | {"image_size": {"type": "int", "low": 16, "high": 64,
                                                        "step": 8}}
    spec = _spec(tmp_path, search_space=space, enqueue_trials=[])

    fitted = fit_to_data(spec, 40, _reporter()[0])

    assert (fitted.param("image_size").low, fitted.param("image_size").high) == (16, 40)


def test_from_scratch_families_are_left_out_for_large_images_while_a_backbone_is_left(
        tmp_path: Path) -> None:
    reporter, stream = _reporter()
    spec = _spec(tmp_path, search_space=SKIP_SPEC["search_space"] | {"image_size": 96},
                 enqueue_trials=[])
    only_scratch = spec.without_archs(["mobilenet_v3_small", "resnet18"])

    assert fit_to_data(spec, 64, reporter).architectures() == [
        "mobilenet_v3_small", "resnet18", "cnn"]
    assert fit_to_data(spec, 96, reporter).architectures() == [
        "mobilenet_v3_small", "resnet18"]
    assert fit_to_data(only_scratch, 96, reporter).architectures() == ["cnn"]
    assert stream.getvalue().splitlines() == [
        "image_size 96 left out: the images are 64 px (a trial downsamples, never enlarges)",
        "from-scratch families cnn left out: the images are 96 px, above the spec's "
        "scratch_max_image_size 64"]


def test_leaving_out_every_architecture_is_a_spec_error(tmp_path: Path) -> None:
    spec = _spec(tmp_path)

    with pytest.raises(SpecError, match=r"search_space\.arch: no architecture left"):
        spec.without_archs(spec.architectures())
