"""``hpsearch run`` on a small folder of one's own images, end to end: broken files skipped
and listed, the data report on the parent run, the champion registered; a changed folder
refused on resume and the champion registered again on the files the study was created
with; ``--jobs`` workers loading their own data while the coordinator loads none."""

from __future__ import annotations

import csv
import io
import json

import optuna
import pytest
from image_files import bomb_png, class_tree, image_bytes, noise, truncated, write
from mlflow.tracking import MlflowClient

import hpsearch
from hpsearch.errors import HpsearchError
from hpsearch.search.progress import Reporter

from conftest import EVERYTHING_ON, clean_env
from conftest import hpsearch as run_hpsearch

pytestmark = pytest.mark.slow

SPEC = """
dataset: photos
epochs: 1
image_size: 16
pruner: none
search_space:
  lr: 5.0e-3
  batch_size: 8
  depth: 1
  width: 16
  dropout: 0.0
  arch: mlp
  class_weights: [none, balanced]
"""
BROKEN = {"cat/truncated.png": "truncated", "cat/notes.jpg": "not an image",
          "dog/empty.png": "empty file", "dog/bomb.png": "decompression bomb"}


def _photos(root):
    class_tree(root / "photos", {"cat": 16, "dog": 10}, size=(20, 18))
    truncated(root / "photos" / "cat" / "truncated.png", image_bytes(noise("RGB", (40, 40))))
    (root / "photos" / "cat" / "notes.jpg").write_text("not a photo\n")
    (root / "photos" / "dog" / "empty.png").write_bytes(b"")
    bomb_png(root / "photos" / "dog" / "bomb.png")
    (root / "photos" / ".DS_Store").write_bytes(b"\0\0")
    (root / "spec.yaml").write_text(SPEC)


def _artifact(client, run_id, path, tmp_path):
    return open(client.download_artifacts(run_id, path, str(tmp_path))).read()


def _parent(client, study):
    experiment = client.get_experiment_by_name(study)
    return client.search_runs([experiment.experiment_id],
                              filter_string="tags.`hpsearch.role` = 'study'")[0]


def test_a_folder_with_broken_files_trains_registers_and_refuses_to_resume_changed(
        tmp_path, monkeypatch):
    _photos(tmp_path)
    cache = tmp_path / "cache"

    result = run_hpsearch(tmp_path, "run", "--spec", "spec.yaml", "--trials", "2",
                          "--device", "cpu", "--cache-dir", str(cache), timeout=600,
                          env=clean_env(**EVERYTHING_ON))  # the data report's figures

    assert result.returncode == 0, result.stderr
    assert ("photos: 26 images, 2 classes, 4 skipped (data/skipped.csv), leakage 0 images "
            "in two splits") in result.stderr
    assert "registered: hpsearch-photos version 1" in result.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = _parent(client, "photos")
    skipped = list(csv.DictReader(io.StringIO(
        _artifact(client, parent.info.run_id, "data/skipped.csv", tmp_path))))
    assert {row["path"] for row in skipped} == set(BROKEN)
    for row in skipped:
        assert BROKEN[row["path"]] in row["reason"]
    splits = list(csv.DictReader(io.StringIO(
        _artifact(client, parent.info.run_id, "data/splits.csv", tmp_path))))
    assert len(splits) == 26 and {r["class"] for r in splits} == {"cat", "dog"}
    assert {r["split"] for r in splits} == {"train", "val", "test"}
    report = json.loads(_artifact(client, parent.info.run_id, "data/own_images.json",
                                  tmp_path))
    assert report["skipped"] == 4 and report["image_size"] == 16
    assert report["originals"]["shorter_side"]["median"] == 18
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "data")}
    assert {"data/originals.png", "data/leakage.csv", "data/samples_per_class.png",
            "data/class_distribution.json"} <= files
    study = optuna.load_study(study_name="photos", storage=f"sqlite:///{tmp_path}/hpsearch.db")
    record = study.user_attrs["hpsearch.data"]
    inputs = {i.dataset.name: i.dataset for i in parent.inputs.dataset_inputs}
    assert inputs["photos-training"].digest == record["manifest_digest"][:32]
    assert json.loads(inputs["photos-training"].source)["uri"] == str(tmp_path / "photos")
    first = float(parent.data.metrics["test_accuracy"])

    # The folder changes: resuming is refused, naming what changed; registering again
    # tests the champion on the files the study was created with.
    write(tmp_path / "photos" / "cat" / "new.png", noise("RGB", (20, 18)))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HpsearchError) as refused:
        hpsearch.run(spec="spec.yaml", trials=3, device="cpu", cache_dir=cache,
                     reporter=Reporter("val_accuracy", stream=io.StringIO()))
    assert "was created on other images: " in str(refused.value)
    assert "1 image(s) added" in str(refused.value) and "--study-name" in str(refused.value)
    registered = run_hpsearch(tmp_path, "register", "photos", "--device", "cpu", timeout=300)
    assert registered.returncode == 0, registered.stderr
    assert f"test accuracy {first:.4f}" in registered.stdout


def test_with_jobs_the_coordinator_loads_no_training_data(tmp_path, monkeypatch):
    _photos(tmp_path)
    monkeypatch.chdir(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the coordinator loaded the training data")

    # The workers are new processes (spawn): only the coordinator's loading is refused.
    monkeypatch.setattr("hpsearch.search.runner.load_study_data", refuse)
    summary = hpsearch.run(spec="spec.yaml", trials=2, jobs=2, device="cpu",
                           cache_dir=tmp_path / "cache",
                           reporter=Reporter("val_accuracy", stream=io.StringIO()))

    assert (summary.n_complete, summary.exit_code) == (2, 0)
    assert summary.registration is not None
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = _parent(client, "photos")
    sizes = [int(parent.data.params[f"n_{split}"]) for split in ("train", "val", "test")]
    assert sum(sizes) == 26 and min(sizes) > 0  # logged by worker 1
    assert "data/skipped.csv" in {a.path for a in client.list_artifacts(
        parent.info.run_id, "data")}
    assert {i.dataset.name for i in parent.inputs.dataset_inputs} == {
        "photos-training", "photos-validation"}
