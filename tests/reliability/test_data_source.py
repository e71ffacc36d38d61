"""A data folder the user names is used or refused, never silently replaced by another copy
of the data set; the run says where its data came from."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from hpsearch.data_utils import DEBIAN_FASHION_MNIST_DIR

from conftest import cli, hpsearch, needs_fashion_mnist, tiny_mlp_spec
from observations import record

pytestmark = pytest.mark.slow


def test_a_folder_of_own_jpegs_is_refused_not_replaced_by_the_installed_copy(tmp_path):
    # What a new user did: their own photos, one folder per class, given as --data-dir.
    for i in range(6):
        folder = tmp_path / "myimgs" / ("cats", "dogs")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    result = cli(tmp_path, "run", "--data-dir", "./myimgs", "--trials", "1", "--device", "cpu")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("hpsearch: error: Could not load the fashion_mnist data set "
                               "from myimgs, the folder given with --data-dir or "
                               "HPSEARCH_DATA_DIR (a named folder is used or refused, never "
                               "replaced by another copy): it needs train-images-idx3-ubyte.gz")
    assert lines[0].endswith("it holds image files (cats/0.jpg, cats/2.jpg, cats/4.jpg, ...) "
                             "instead: to train on your own images, pass the folder with "
                             "--dataset")
    assert {p.name for p in tmp_path.iterdir()} == {"myimgs"}  # no store, no download
    assert {p.name for p in (tmp_path / "myimgs").iterdir()} == {"cats", "dogs"}
    record("--data-dir on a folder of the user's own JPEGs (class sub-folders)",
           "exit code 2, one line: the files Fashion-MNIST needs there, and 'to train on "
           "your own images, pass the folder with --dataset' (before: exit 0, trained on "
           "Debian's copy)", "nothing written, nothing downloaded into the folder")


@needs_fashion_mnist
def test_the_run_header_and_the_parent_run_name_the_folder_the_data_came_from(tmp_path):
    data = tmp_path / "data" / "fashion-mnist"
    data.mkdir(parents=True)
    for file in DEBIAN_FASHION_MNIST_DIR.glob("*-ubyte.gz"):
        (data / file.name).symlink_to(file)
    work = tmp_path / "work"
    work.mkdir()
    (work / "spec.yaml").write_text(tiny_mlp_spec(1))
    result = hpsearch(work, "run", "--spec", "spec.yaml", "--trials", "1", "--train-subset",
                      "300", "--device", "cpu", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr[-3000:]
    header = next(line for line in result.stderr.splitlines() if " images from " in line)
    assert header.endswith(f"300 training / 6000 validation images from {data}"), header

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fashion_mnist")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags["hpsearch.role"] == "study")
    assert parent.data.tags["hpsearch.data_source"] == str(data)
    inputs = parent.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["fashion_mnist-training",
                                               "fashion_mnist-validation"]
    assert all(i.dataset.source_type == "local"
               and json.loads(i.dataset.source) == {"uri": str(data)} for i in inputs)
    trial = next(r for r in runs if r.data.tags["hpsearch.role"] == "trial")
    assert trial.data.tags["hpsearch.data_source"] == str(data)
    record("--data-dir holding Fashion-MNIST in a sub-folder",
           "the run header ends 'images from DIR/fashion-mnist'; the parent and trial runs "
           "carry the tag hpsearch.data_source and MLflow dataset inputs whose source is "
           "that folder", "the study, its runs and the registered model")
