"""Studies of pretrained backbones: the weights fetched once before the first trial, the
backbones a study leaves out where their weights cannot be had (decided once, when the
study is created), the image sizes that fit the data, and the built-in own-images study.
No test needs the network: weights are created and saved under torchvision's file names."""

from __future__ import annotations

import io
from pathlib import Path

import optuna
import pytest
import yaml
from pretrained_files import counting_downloads, offline_cache, save_weights

from hpsearch.errors import HpsearchError
from hpsearch.models.weights import WeightsUnavailable, ensure_weights, weights_file
from hpsearch.search.config import RunConfig
from hpsearch.search.pretrained import fetch_weights, fit_to_data, recorded_architectures
from hpsearch.search.progress import Reporter
from hpsearch.search.storage import open_study, recorded_definition
from hpsearch.studies import SpecError, load_spec, own_images_spec
from hpsearch.tracking.provenance import using_tracking_uri

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


# ---------------------------------------------------------------------------------------------
# A backbone's failures are told in its own terms
# ---------------------------------------------------------------------------------------------


def test_out_of_memory_names_what_sizes_the_family_depth_and_width_or_freeze() -> None:
    from hpsearch.params import TrialParams
    from hpsearch.search.failures import classify_failure

    oom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    backbone = TrialParams(lr=0.01, batch_size=256, dropout=0.1, arch="vgg16",
                           pretrained=True, freeze=2, backbone_lr_mult=0.1, image_size=160)
    scratch = TrialParams(lr=0.01, batch_size=512, dropout=0.1, arch="cnn", depth=4, width=64)

    assert classify_failure(oom, backbone).reason == (
        "out of memory with batch_size 256 and arch vgg16 (freeze 2, image_size 160): CUDA "
        "out of memory. Tried to allocate 2.00 GiB")
    assert classify_failure(oom, scratch).reason == (
        "out of memory with batch_size 512 and arch cnn (depth 4, width 64): CUDA out of "
        "memory. Tried to allocate 2.00 GiB")


# ---------------------------------------------------------------------------------------------
# A backbone study end to end (in-process): weights fetched once, both learning rates in
# MLflow, the cost in the trials table, one checkpoint kept, a champion served offline
# ---------------------------------------------------------------------------------------------

BACKBONE_SPEC = """
dataset: fashion_mnist
epochs: 2
val_fraction: 0.02
pruner: none
search_space:
  lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
  batch_size: 64
  dropout: 0.0
  image_size: 20
  arch:
    mobilenet_v3_small: {pretrained: true, freeze: [none, 10], backbone_lr_mult: 0.5}
  optimizer: adamw
enqueue_trials:
  - {arch: mobilenet_v3_small, freeze: none, lr: 1.0e-4}
  - {arch: mobilenet_v3_small, freeze: none, lr: 3.0e-3}
  - {arch: mobilenet_v3_small, freeze: 10, lr: 2.0e-3}
"""


@pytest.fixture(scope="module")
def backbone_study(tmp_path_factory: pytest.TempPathFactory):
    """A finished 3-trial study of a pretrained MobileNetV3-small at 20 px (Fashion-MNIST's
    28 px images downsampled), its champion registered; the weights downloaded (created)
    by a counting stand-in for torch.hub."""
    from hpsearch.data_utils import DEBIAN_FASHION_MNIST_DIR

    if not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    import torch

    import hpsearch

    root = tmp_path_factory.mktemp("backbone")
    threads = torch.get_num_threads()
    # One thread: on a CPU shared with other jobs, OpenMP's threads wait for each other
    # (a MobileNet step took 30x longer with 2 threads on 2 busy cores than with one).
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        offline_cache(patch, root / "torch")
        downloaded = counting_downloads(patch)
        (root / "spec.yaml").write_text(BACKBONE_SPEC)
        stream = io.StringIO()
        summary = hpsearch.run(spec="spec.yaml", trials=3, train_subset=512, device="cpu",
                               study_name="bb", storage=f"sqlite:///{root / 'optuna.db'}",
                               tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                               reporter=Reporter("val_accuracy", stream=stream, live=False))
    torch.set_num_threads(threads)
    return root, summary, downloaded, stream.getvalue()


@pytest.mark.slow
def test_the_weights_are_fetched_once_before_the_first_trial(backbone_study) -> None:
    _, summary, downloaded, output = backbone_study

    assert summary.n_complete == 3 and summary.registration is not None
    assert downloaded == ["mobilenet_v3_small-047dcff4.pth"]  # once for three trials
    lines = output.splitlines()
    fetched = next(i for i, line in enumerate(lines)
                   if line.startswith("downloading the pretrained weights of "
                                      "mobilenet_v3_small (10 MB) into "))
    first_trial = next(i for i, line in enumerate(lines) if "trial    0" in line)
    assert fetched < first_trial


@pytest.mark.slow
def test_the_heads_and_the_backbones_learning_rates_reach_mlflow(backbone_study) -> None:
    from mlflow.tracking import MlflowClient

    root = backbone_study[0]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    study = optuna.load_study(study_name="bb", storage=f"sqlite:///{root / 'optuna.db'}")

    for trial in study.trials:
        run_id = trial.user_attrs["mlflow_run_id"]
        head = [m.value for m in client.get_metric_history(run_id, "lr")]
        backbone = [m.value for m in client.get_metric_history(run_id, "lr_backbone")]
        assert len(head) == len(backbone) == 2  # one per epoch
        assert backbone == pytest.approx([0.5 * lr for lr in head], rel=1e-6)
        assert client.get_run(run_id).data.params["backbone_lr_mult"] == "0.5"


@pytest.mark.slow
def test_the_trials_table_and_show_give_a_backbones_parameters_and_macs(
        backbone_study) -> None:
    import json

    from click.testing import CliRunner

    from hpsearch.cli import main
    from hpsearch.data_utils import get_dataset_info
    from hpsearch.models import build_network
    from hpsearch.params import TrialParams
    from hpsearch.training.cost import count_parameters, macs_per_image

    root = backbone_study[0]
    result = CliRunner().invoke(main, ["show", "bb", "--storage",
                                       f"sqlite:///{root / 'optuna.db'}", "--format", "json"])
    rows = {row["number"]: row for row in json.loads(result.output)}

    info = get_dataset_info("fashion_mnist")
    for row in rows.values():
        params = TrialParams.from_dict(row)
        assert row["arch"] == "mobilenet_v3_small" and row["image_size"] == 20
        assert row["params"] == count_parameters(build_network(params, info))
        assert row["macs"] == macs_per_image(params, info)
    frozen, whole = rows[2], rows[1]  # freeze 10: the first 4 stages do not train
    assert frozen["params"] < whole["params"]
    assert whole["macs"] == frozen["macs"] > 0


@pytest.mark.slow
def test_only_the_best_trials_weights_are_kept(backbone_study) -> None:
    from mlflow.tracking import MlflowClient

    root, summary, _, _ = backbone_study
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    study = optuna.load_study(study_name="bb", storage=f"sqlite:///{root / 'optuna.db'}")

    kept = {t.number for t in study.trials
            if client.list_artifacts(t.user_attrs["mlflow_run_id"], "checkpoint")}
    logged = {t.number for t in study.trials if t.user_attrs.get("checkpoint")}
    best = [t.number for t in study.trials if t.value == study.best_value]

    assert kept == set(best) and summary.best_trial in kept
    assert logged >= kept  # the earlier best trials logged theirs, deleted since


@pytest.mark.slow
def test_the_registered_backbone_loads_and_answers_offline_as_it_trained(
        backbone_study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    import numpy as np
    import torch

    from hpsearch.data_utils import get_dataset_info, load_dataset
    from hpsearch.models import build_network, input_stats
    from hpsearch.params import TrialParams
    from hpsearch.search.session import TrialData
    from hpsearch.training.loader import make_loader

    root = backbone_study[0]
    offline_cache(monkeypatch, tmp_path / "empty-torch-home")  # no weights, no network
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _never)
    _, test = load_dataset("fashion_mnist")
    images = test.images[:100]

    # The study's store for the load only (whatever tracking URI an earlier test left set).
    with using_tracking_uri(f"sqlite:///{root / 'mlflow.db'}"):
        model = mlflow.pyfunc.load_model("models:/hpsearch-bb@champion")
    served = model.predict({"images": images[:, 0]}, params={"output": "full"})

    # The trained network's probabilities, as its trial validated: the best trial's own
    # weights, its 20 px images downsampled on the device.
    study = optuna.load_study(study_name="bb", storage=f"sqlite:///{root / 'optuna.db'}")
    best = study.best_trial
    weights = mlflow.artifacts.download_artifacts(
        run_id=best.user_attrs["mlflow_run_id"], artifact_path="checkpoint/state_dict.pt",
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    params = TrialParams.from_dict(best.user_attrs["hyperparameters"])
    info = get_dataset_info("fashion_mnist")
    network = build_network(params, info)
    network.load_state_dict(torch.load(weights, weights_only=True))
    data = TrialData(info=info, train=test, val=type(test)(images, test.labels[:100]))
    (x, _), = make_loader(data.on_device(torch.device("cpu"), 20)[1], torch.device("cpu"),
                          normalization=input_stats(params, info))
    with torch.no_grad():
        trained = torch.softmax(network.eval()(x), dim=1).numpy()

    probabilities = np.array(served["probabilities"].tolist())
    np.testing.assert_allclose(probabilities, trained, rtol=1e-4, atol=1e-5)
    assert list(served["class_index"]) == trained.argmax(1).tolist()
    assert not any((tmp_path / "empty-torch-home").rglob("*.pth"))  # nothing was fetched


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("loading a registered model must not download anything")


def test_with_downloads_turned_off_a_missing_file_is_never_fetched(
        tmp_path: Path, torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    downloaded = counting_downloads(monkeypatch)
    monkeypatch.setenv("HPSEARCH_DOWNLOAD_WEIGHTS", "0")
    save_weights("mobilenet_v3_small")

    with pytest.raises(WeightsUnavailable, match=r"resnet18-f37072fd\.pth not in .*"
                       r"\$HPSEARCH_DOWNLOAD_WEIGHTS=0: downloads are off"):
        ensure_weights(["mobilenet_v3_small", "resnet18", "cnn"])
    assert downloaded == []
    monkeypatch.setenv("HPSEARCH_DOWNLOAD_WEIGHTS", "maybe")
    with pytest.raises(HpsearchError, match=r"HPSEARCH_DOWNLOAD_WEIGHTS='maybe': use 1"):
        ensure_weights(["resnet18"])


def test_the_builtin_own_images_study_fine_tunes_backbones_and_adds_scratch_for_small_images(
        tmp_path: Path) -> None:
    (tmp_path / "photos" / "a").mkdir(parents=True)
    spec = own_images_spec(tmp_path / "photos")
    reporter, stream = _reporter()

    small, large = fit_to_data(spec, 28, reporter), fit_to_data(spec, 224, reporter)

    backbones = ["mobilenet_v3_small", "resnet18", "efficientnet_b0"]
    assert spec.missing_weights == "skip" and spec.pretrained_archs() == backbones
    assert small.architectures() == [*backbones, "lenet", "cnn", "vgg", "mlp"]
    assert large.architectures() == backbones  # scratch families only up to 64 px
    assert [t["arch"] for t in large.enqueue_trials] == backbones  # each with its recipe
    assert "image_size" not in small.to_dict()["search_space"]  # 28 px: the cache's size
    assert large.param("image_size").choices == (64, 128, 224)
    assert stream.getvalue().splitlines() == [
        "image_size 64, 128, 224 left out: the images are 28 px (a trial downsamples, never "
        "enlarges)",
        "from-scratch families lenet, cnn, vgg, mlp left out: the images are 224 px, above "
        "the spec's scratch_max_image_size 64"]
