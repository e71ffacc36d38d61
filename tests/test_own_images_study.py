"""Own images in a study, in this process and in seconds: ``--dataset PATH`` and the spec's
``dataset: PATH``, the own-images spec keys and options, the built-in own-images study, the
data a study trains on and records (and refuses to resume on when it changed), class
weights in every kind of training step, the balanced metrics, and the per-class metric
keys of any class name. The end-to-end runs are in ``test_own_images_run.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from image_files import class_tree, noise, write
from torch import nn

from hpsearch.api import make_config
from hpsearch.data_utils import list_datasets
from hpsearch.data_utils.own_images import ImageOptions, load_cached_split, load_images
from hpsearch.errors import HpsearchError
from hpsearch.params import TrialParams
from hpsearch.search.config import RunConfig
from hpsearch.search.data import DataRecord, load_study_data, own_images_info
from hpsearch.search.progress import Reporter
from hpsearch.search.session import TrainingSession, TrialData
from hpsearch.search.storage import study_definition
from hpsearch.studies import SpecError, load_builtin_spec, load_spec, own_images_spec
from hpsearch.training.cuda_graphs import build_train_step
from hpsearch.training.loop import EvalResult
from hpsearch.training.metrics import balanced_accuracy, macro_f1
from hpsearch.training.optim import build_optimizer
from hpsearch.training.step import EagerStep, balanced_class_weights, class_weight_tensor

CPU = torch.device("cpu")
TINY_SPACE = {"lr": 3.0e-3, "batch_size": 8, "depth": 1, "width": 16, "dropout": 0.0,
              "arch": "mlp"}


def _spec_file(tmp_path: Path, **top: object) -> Path:
    raw = {"dataset": "photos", "epochs": 1, "search_space": dict(TINY_SPACE)} | top
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _config(kwargs: dict, **overrides: object) -> RunConfig:
    arguments = dict(dataset=None, spec=None, trials=1, epochs=None, timeout_s=None,
                     train_subset=None, study_name=None, storage=None, tracking_uri=None,
                     data_dir=None, device="cpu", seed=0, register_name=None, max_failures=5,
                     heartbeat_interval_s=10, jobs=1, compile=False)
    return make_config(**(arguments | kwargs | overrides))


# --- the dataset: a registered name or a path ------------------------------------------------

def test_a_spec_reads_a_relative_dataset_path_from_its_own_folder(tmp_path, monkeypatch):
    class_tree(tmp_path / "photos", {"a": 2, "b": 2})
    monkeypatch.chdir("/")  # not the spec's folder

    spec = load_spec(_spec_file(tmp_path))

    assert spec.dataset == str((tmp_path / "photos").resolve())
    assert spec.dataset_path == (tmp_path / "photos").resolve()
    assert spec.images is not None and spec.images.test_fraction == 0.1


def test_a_registered_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    class_tree(tmp_path / "mnist", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)

    spec = load_spec(_spec_file(tmp_path, dataset="mnist"))
    config = _config({"dataset": "mnist"})

    assert spec.dataset == "mnist" and spec.dataset_path is None and spec.images is None
    assert config.spec.dataset == "mnist" and config.study_name == "mnist"


def test_a_name_that_is_neither_lists_the_registered_names_and_asks_for_a_path(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as spec_error:
        load_spec(_spec_file(tmp_path, dataset="fotos"))
    with pytest.raises(HpsearchError) as option_error:
        _config({"dataset": "fotos"})

    assert spec_error.value.key == "dataset"
    for message in (spec_error.value.reason, str(option_error.value)):
        assert "'fotos'" in message and ", ".join(list_datasets()) in message
        assert "must exist" in message
    assert f"relative path is read from the spec file's folder, {tmp_path}" in (
        spec_error.value.reason)


def test_a_path_as_dataset_runs_the_builtin_own_images_study_named_after_the_folder(
        tmp_path, monkeypatch):
    class_tree(tmp_path / "data" / "my photos", {"a": 2, "b": 2})
    (tmp_path / "data" / "labels.csv").write_text("path,label\nmy photos/a/0.png,a\n")
    monkeypatch.chdir(tmp_path)

    folder = _config({"dataset": "data/my photos"})
    manifest = _config({"dataset": str(tmp_path / "data" / "labels.csv")})

    assert folder.spec.source == "built-in spec _own_images.yaml"
    assert folder.spec.dataset == str(tmp_path / "data" / "my photos")
    assert folder.study_name == "my photos" and folder.register_name == "hpsearch-my photos"
    assert manifest.study_name == "labels"
    assert folder.spec.metric == "val_balanced_accuracy"
    assert folder.spec.param("class_weights").choices == ("none", "balanced")


def test_image_options_override_the_spec_and_are_refused_for_a_registered_data_set(
        tmp_path, monkeypatch):
    class_tree(tmp_path / "photos", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)

    config = _config({"dataset": "photos", "image_size": 24, "dedupe": True,
                      "cache_dir": tmp_path / "c"})

    assert (config.spec.images.image_size, config.spec.images.dedupe) == (24, True)
    assert config.cache_dir == str(tmp_path / "c")
    # The Python API names its arguments (the command line spells them as options).
    for option, value in (("image_size", 24), ("dedupe", True), ("cache_dir", "c")):
        with pytest.raises(HpsearchError, match=f"^{option}.* fashion_mnist is a registered"):
            _config({"dataset": "fashion_mnist", option: value})
    with pytest.raises(HpsearchError, match=r"^image_size must be in 8\.\.1024 pixels, got 4"):
        _config({"dataset": "photos", "image_size": 4})


def test_a_dataset_option_disagreeing_with_the_specs_path_is_refused(tmp_path, monkeypatch):
    class_tree(tmp_path / "photos", {"a": 2, "b": 2})
    class_tree(tmp_path / "other", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)
    spec = _spec_file(tmp_path)

    assert _config({"dataset": "./photos", "spec": spec}).spec.dataset == str(
        tmp_path / "photos")
    with pytest.raises(HpsearchError, match=r"^dataset other disagrees with"):
        _config({"dataset": "other", "spec": spec})


@pytest.mark.parametrize(("top", "key", "reason"), [
    ({"dataset": "mnist", "image_size": 32}, "image_size", "only for your own images"),
    ({"dataset": "mnist", "label_column": "y"}, "label_column", "only for your own images"),
    ({"test_fraction": 0.95}, "test_fraction", "val_fraction + test_fraction must be below 1"),
    ({"test_fraction": 1.0}, "test_fraction", "must lie in [0, 1), got 1.0"),
    ({"image_size": 2000}, "image_size", "must be in 8..1024 pixels, got 2000"),
    ({"path_column": " "}, "path_column", "must name a column"),
    ({"dedupe": "yes"}, "dedupe", "expected true or false"),
    ({"search_space": TINY_SPACE | {"class_weights": ["balanced", "inverse"]}},
     "search_space.class_weights", "'inverse' is not one of none, balanced"),
])
def test_own_image_keys_are_checked_at_load(tmp_path, top, key, reason):
    class_tree(tmp_path / "photos", {"a": 2, "b": 2})
    with pytest.raises(SpecError) as error:
        load_spec(_spec_file(tmp_path, **top))
    assert error.value.key == key
    assert reason in error.value.reason


def test_the_balanced_metrics_are_study_metrics_maximised(tmp_path):
    class_tree(tmp_path / "photos", {"a": 2, "b": 2})
    for metric in ("val_balanced_accuracy", "val_macro_f1"):
        assert load_spec(_spec_file(tmp_path, metric=metric)).direction == "maximize"
    with pytest.raises(SpecError, match="minimize"):
        load_spec(_spec_file(tmp_path, metric="val_macro_f1", direction="minimize"))


def test_builtin_studies_neither_draw_nor_record_class_weights():
    for name in ("fashion_mnist", "mnist", "cifar10"):
        spec = load_builtin_spec(name)
        config = RunConfig(spec=spec, trials=1, study_name=name, register_name=name)
        assert "class_weights" not in spec.to_dict()["search_space"]
        assert set(study_definition(config)) == {
            "dataset", "search_space", "epochs", "metric", "direction", "val_fraction",
            "augment", "train_subset", "seed"}
        assert "image_size" not in spec.to_dict()


def test_an_own_images_definition_holds_its_image_settings(tmp_path):
    class_tree(tmp_path / "photos", {"a": 2, "b": 2})
    spec = own_images_spec(tmp_path / "photos").replace(image_size=32)
    config = RunConfig(spec=spec, trials=1, study_name="p", register_name="p")

    assert study_definition(config)["images"] == {
        "image_size": 32, "test_fraction": 0.1, "dedupe": False, "path_column": "path",
        "label_column": "label", "split_column": "split"}


# --- the data a study trains on and records ----------------------------------------------------

def _photos(tmp_path: Path, classes: dict[str, int] | None = None) -> Path:
    root = tmp_path / "photos"
    class_tree(root, classes or {"cat": 12, "dog": 6}, size=(20, 20))
    return root


def _own_config(tmp_path: Path, **overrides: object) -> RunConfig:
    spec = own_images_spec(_photos(tmp_path)).replace(image_size=16, val_fraction=0.2,
                                                      test_fraction=0.2)
    return RunConfig(spec=spec, trials=1, study_name="photos", register_name="p",
                     cache_dir=str(tmp_path / "cache"), **overrides)


def test_a_folder_becomes_the_splits_and_data_set_info_of_its_trials(tmp_path):
    config = _own_config(tmp_path, train_subset=5)

    data = load_study_data(config, Reporter("val_accuracy", stream=open("/dev/null", "w")))

    info = data.info
    assert info.name == "photos" and info.class_names == ("cat", "dog")
    assert info.shape.as_tuple() == (3, 16, 16)
    assert info.augmentation.hflip and info.augmentation.crop_padding == 1
    assert info.normalization.mean == pytest.approx(data.tested.images.mean)
    assert len(data.train) == 5 and data.train.images.shape[1:] == (3, 16, 16)
    assert len(data.val) + len(data.tested.test) == 18 - len(data.tested.images.train)
    assert data.tested.source == str(tmp_path / "photos")


def test_the_crop_padding_is_a_sixteenth_of_the_image_side(tmp_path):
    dataset = load_images(_photos(tmp_path), ImageOptions(image_size=224),
                          cache_dir=tmp_path / "c", progress=None)
    assert own_images_info(dataset).augmentation.crop_padding == 14


def _record(tmp_path: Path, folder: Path, **options: object) -> DataRecord:
    data = load_images(folder, ImageOptions(image_size=16, **options),
                       cache_dir=tmp_path / "cache", progress=None)
    return DataRecord.of(data)


def test_the_record_names_files_added_and_removed_per_split_and_class(tmp_path):
    root = tmp_path / "photos"
    class_tree(root, {"cat": 4, "dog": 4}, split="train")
    class_tree(root, {"cat": 2, "dog": 2}, split="val")
    class_tree(root, {"cat": 2, "dog": 2}, split="test")
    old = _record(tmp_path, root)
    write(root / "train" / "cat" / "new.png", noise("RGB", (20, 16)))
    (root / "val" / "dog" / "0.png").unlink()
    class_tree(root, {"bird": 3}, split="train")

    changes = old.differences(_record(tmp_path, root))

    assert changes == ["classes added: 'bird'", "train/cat: 4 -> 5 (1 image(s) added)",
                       "val/dog: 2 -> 1 (1 image(s) removed)"]
    assert old.differences(json.loads(json.dumps(old))) == []


def test_the_record_names_a_new_image_size_and_a_removed_class(tmp_path):
    root = _photos(tmp_path, {"cat": 6, "dog": 6, "cow": 6})
    old = _record(tmp_path, root)
    for path in (root / "cow").iterdir():
        path.unlink()
    new = DataRecord.of(load_images(root, ImageOptions(image_size=24),
                                    cache_dir=tmp_path / "cache", progress=None))

    changes = old.differences(new)

    assert changes[:2] == ["classes removed: 'cow'", "image size 16 px -> 24 px"]


def test_a_cached_split_is_the_split_the_load_gave_dedupe_included(tmp_path):
    root = tmp_path / "photos"
    for split in ("train", "test"):
        class_tree(root, {"cat": 3, "dog": 3}, split=split)
    write(root / "train" / "cat" / "x.png", noise("RGB", (20, 16), seed=7))
    write(root / "test" / "cat" / "x copy.png", noise("RGB", (20, 16), seed=7))
    data = load_images(root, ImageOptions(image_size=16, dedupe=True),
                       cache_dir=tmp_path / "cache", progress=None)

    test, files = load_cached_split(data.cache_dir, "test", dedupe=True)
    _, all_files = load_cached_split(data.cache_dir, "test")

    assert "test/cat/x copy.png" not in files and "test/cat/x copy.png" in all_files
    assert files == data.files["test"] and len(all_files) == len(files) + 1
    assert np.array_equal(np.asarray(test.images), np.asarray(data.test.images))
    assert np.array_equal(test.labels, data.test.labels)


# --- class weights in every training step ----------------------------------------------------

def test_balanced_weights_are_scikit_learns():
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0] * 50 + [1] * 10 + [2] * 5)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)

    assert balanced_class_weights([50, 10, 5]) == pytest.approx(expected)
    assert balanced_class_weights([4, 4]) == [1.0, 1.0]


def _weighted_loss(logits, y, weights, smoothing):
    """Cross-entropy with class weights and label smoothing, written out: the weighted mean
    over the batch of each image's smoothed loss, each class's term weighted too."""
    log_p = torch.log_softmax(logits, dim=1)
    k = logits.shape[1]
    target = torch.full_like(log_p, smoothing / k)
    target[torch.arange(len(y)), y] += 1 - smoothing
    per_image = -(target * log_p * weights).sum(1)
    return per_image.sum() / weights[y].sum()


def test_the_eager_step_weighs_each_class_with_label_smoothing():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(10, 4), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    weights = class_weight_tensor([6, 2, 2], CPU)
    expected = _weighted_loss(model(x).detach(), y, weights, 0.1) * len(y)
    step = EagerStep(model, torch.optim.SGD(model.parameters(), lr=0.0), label_smoothing=0.1,
                     class_weights=weights)

    loss, _ = step(x, y)

    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    unweighted, _ = EagerStep(model, torch.optim.SGD(model.parameters(), lr=0.0),
                              label_smoothing=0.1)(x, y)
    assert float(unweighted) != pytest.approx(float(loss), rel=1e-3)


@pytest.mark.parametrize(("compiled", "cuda_graphs"), [(True, False), (False, False),
                                                       (False, True)])
def test_every_kind_of_step_gets_the_class_weights(compiled, cuda_graphs):
    model = nn.Linear(4, 2)
    weights = class_weight_tensor([3, 1], CPU)
    step = build_train_step(model, build_optimizer(model, name="adamw", lr=0.01,
                                                   weight_decay=0.0),
                            max_lr=0.01, total_steps=4, device=CPU, amp_dtype=None,
                            class_weights=weights, compiled=compiled, cuda_graphs=cuda_graphs)
    assert step.class_weights is weights


def test_a_trial_with_balanced_weights_weighs_the_split_it_trains_on(tmp_path):
    config = _own_config(tmp_path)
    data = load_study_data(config, Reporter("val_accuracy", stream=open("/dev/null", "w")))
    trial_data = TrialData(info=data.info, train=data.train, val=data.val)
    params = TrialParams.from_dict(TINY_SPACE | {"class_weights": "balanced"})

    session = TrainingSession.build(params, data=trial_data, device=CPU, seed=0, epochs=1,
                                    augment=False, amp_dtype=None)
    plain = TrainingSession.build(TrialParams.from_dict(TINY_SPACE), data=trial_data,
                                  device=CPU, seed=0, epochs=1, augment=False, amp_dtype=None)

    counts = np.bincount(data.train.labels, minlength=2)
    assert trial_data.class_counts == tuple(counts)
    assert session.step.class_weights.tolist() == pytest.approx(
        [counts.sum() / (2 * n) for n in counts])
    assert plain.step.class_weights is None


# --- balanced accuracy and macro F1 ----------------------------------------------------------

@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_balanced_accuracy_and_macro_f1_are_scikit_learns():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y_true = rng.choice(4, 300, p=[0.7, 0.2, 0.1, 0.0])  # class 3 never true
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 4, 300))
    confusion = np.bincount(y_true * 4 + y_pred, minlength=16).reshape(4, 4)

    assert balanced_accuracy(confusion) == pytest.approx(
        balanced_accuracy_score(y_true, y_pred))
    assert macro_f1(confusion) == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    result = EvalResult(loss=0.0, accuracy=0.0, confusion=confusion)
    assert result.balanced_accuracy == balanced_accuracy(confusion)


def test_a_model_that_never_predicts_the_rare_class_scores_low_balanced_accuracy():
    confusion = np.array([[95, 0], [5, 0]])  # accuracy 0.95
    assert balanced_accuracy(confusion) == 0.5
    assert macro_f1(confusion) == pytest.approx((2 * 0.95 / 1.95) / 2)


# --- per-class metric keys -------------------------------------------------------------------

def test_per_class_metrics_of_any_class_name_get_valid_distinct_keys():
    from mlflow.utils.validation import _validate_metric_name

    from hpsearch.tracking.runs import TrialRun
    from hpsearch.training.metrics import per_class_report

    class Client:
        def log_dict(self, *args) -> None:
            pass

        def log_batch(self, run_id, metrics) -> None:
            self.metrics = metrics

    names = ["a b", "a/b", "it's \"q\"", "v1.2", "Äpfel", "猫", "..", "A B"]
    confusion = np.eye(len(names), dtype=np.int64) * 3
    client = Client()
    TrialRun(client, "run")._log_per_class(per_class_report(confusion, names), epoch=2)

    keys = [m.key for m in client.metrics]
    assert len(keys) == len(set(keys)) == 3 * len(names)
    for key in keys:
        _validate_metric_name(key)
    assert {"val_f1/a_b", "val_f1/a_b_1", "val_f1/äpfel", "val_f1/猫"} <= set(keys)


# --- what register and the --jobs coordinator read --------------------------------------------

def test_register_tests_on_the_recorded_cache_without_looking_at_the_folder(
        tmp_path, monkeypatch):
    from hpsearch.search.data import image_options, load_recorded_test_data

    config = _own_config(tmp_path)
    data = load_study_data(config, Reporter("val_accuracy", stream=open("/dev/null", "w")))
    record = DataRecord.of(data.tested.images, image_options(config.spec, 0), data.info)
    write(tmp_path / "photos" / "cat" / "added later.png", noise("RGB", (20, 20)))

    def no_load(*args, **kwargs):
        raise AssertionError("the folder was scanned or decoded")

    monkeypatch.setattr("hpsearch.search.data.load_images", no_load)
    tested = load_recorded_test_data(str(tmp_path / "photos"), json.loads(json.dumps(record)),
                                     data_dir=None, cache_dir=None,
                                     reporter=Reporter("value"))

    assert np.array_equal(np.asarray(tested.test.images), np.asarray(data.tested.test.images))
    assert np.array_equal(tested.test.labels, data.tested.test.labels)
    assert tested.info == data.info


def test_a_registered_data_sets_test_split_is_read_without_its_training_files(monkeypatch):
    from hpsearch.data_utils import formats
    from hpsearch.search.data import load_recorded_test_data

    from conftest import needs_fashion_mnist

    if needs_fashion_mnist.args[0]:
        pytest.skip(needs_fashion_mnist.kwargs["reason"])
    read = []
    original = formats.read_idx_images
    monkeypatch.setattr(formats, "read_idx_images",
                        lambda path: read.append(Path(path).name) or original(path))

    tested = load_recorded_test_data("fashion_mnist", None, data_dir=None, cache_dir=None,
                                     reporter=Reporter("value"))

    assert read == ["t10k-images-idx3-ubyte.gz"]
    assert len(tested.test) == 10_000 and tested.info.name == "fashion_mnist"


# --- hpsearch data inspect: would the images fit on the device ---------------------------------

class _FakeNVML:
    """pynvml's calls that device_memory makes: one GPU with 8 GiB free."""

    class _Memory:
        free = 8 * 2**30

    def __init__(self) -> None:
        self.shut_down = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"Tesla T4"

    def nvmlDeviceGetMemoryInfo(self, handle: int):
        return self._Memory()


def test_device_memory_is_the_gpus_through_nvml_else_the_hosts(monkeypatch):
    import sys

    import psutil

    from hpsearch.data_utils.own_images.report import DeviceMemory, device_memory

    nvml = _FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert device_memory() == DeviceMemory(8 * 2**30, "Tesla T4 (GPU 0)", "NVML, free now")
    assert nvml.shut_down

    def no_driver() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(nvml, "nvmlInit", no_driver)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": 3 * 2**30}))
    assert device_memory() == DeviceMemory(3 * 2**30, "host memory", "psutil, available now")


def test_inspect_says_whether_the_images_of_every_worker_fit(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from hpsearch.cli import main
    from hpsearch.data_utils.own_images.report import DeviceMemory

    root = class_tree(tmp_path / "p", {"a": 10, "b": 10}, size=(16, 16))
    image_bytes = 20 * 3 * 16 * 16
    # Room for exactly 3 copies in the half of the device the images may take.
    memory = DeviceMemory(2 * 3 * image_bytes, "Tesla T4 (GPU 0)", "NVML, free now")
    monkeypatch.setattr("hpsearch.data_utils.own_images.report.device_memory", lambda: memory)

    def inspect(*args: str) -> dict:
        result = CliRunner().invoke(main, ["data", "inspect", str(root), "--cache-dir",
                                           str(tmp_path / "c"), "--format", "json", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["device"]

    assert inspect("--jobs", "3")["fits"] is True
    device = inspect("--jobs", "4")
    assert device["fits"] is False and device["jobs"] == 4
    assert (device["device"], device["source"]) == ("Tesla T4 (GPU 0)", "NVML, free now")
    given = inspect("--device-memory", "1")
    assert (given["source"], given["memory_gb"], given["fits"]) == ("--device-memory", 1, True)


def test_the_data_report_gives_each_class_count_and_the_imbalance_ratio():
    from hpsearch.data_utils import ArraySplit
    from hpsearch.tracking.report import log_data_report

    class Client:
        def log_dict(self, run_id, content, path) -> None:
            self.logged = {path: content}

        def log_figure(self, *args) -> None:
            pass

    def split(counts):
        labels = np.repeat(np.arange(len(counts)), counts)
        return ArraySplit(np.zeros((len(labels), 1, 4, 4), np.uint8), labels)

    client = Client()
    log_data_report(client, "run", {"training": split([30, 5, 10]),
                                    "validation": split([3, 1, 1])}, ["a", "b", "c"])

    report = client.logged["data/class_distribution.json"]
    assert report["images_per_class"] == {"training": [30, 5, 10], "validation": [3, 1, 1]}
    assert report["imbalance_ratio"] == 6.0
