"""The serving contract: the champion takes raw images in every accepted layout and dtype,
and base64-encoded image files, answers one class name per image (or, with the inference
parameter ``output``, class indices, or class index, name and probabilities), works with
``mlflow.models.evaluate``'s classifier evaluator, and turns bad requests into HTTP 400 while
it goes on serving. Also ``hpsearch predict`` and ``hpsearch serve``."""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from hpsearch.data_utils import DEBIAN_FASHION_MNIST_DIR, get_dataset_info, load_dataset
from hpsearch.serving.images import MAX_BATCH
from hpsearch.tracking.provenance import using_tracking_uri
from hpsearch.training.device import autocast_dtype

from conftest import (
    MODEL,
    clean_env,
    cli,
    free_port,
    hpsearch,
    port_closes,
    post_images,
    tiny_mlp_spec,
    wait_until_ready,
)

pytestmark = pytest.mark.slow

N = 64


@pytest.fixture(scope="module")
def test_split():
    return load_dataset("fashion_mnist")[1]


@pytest.fixture(scope="module")
def local_model(served, tracking_uri):
    """The same registered version, loaded in-process through the same pyfunc code (MLflow's
    tracking URI set for the load only: a global one would reach other modules' tests)."""
    with using_tracking_uri(tracking_uri):
        return mlflow.pyfunc.load_model(served.model_uri)


@pytest.fixture(scope="module")
def expected(local_model, test_split):
    """In-process answers for the first N test images: class_index, label, probabilities."""
    images = test_split.images[:N, 0]  # uint8 (N, 28, 28)
    return local_model.predict(pd.DataFrame({"images": list(images)}),
                               params={"output": "full"})


LAYOUTS = {
    "uint8 (N, 28, 28)": lambda x: x[:, 0],
    "uint8 (N, 1, 28, 28)": lambda x: x,
    "uint8 (N, 28, 28, 1)": lambda x: x.transpose(0, 2, 3, 1),
    "float (N, 28, 28)": lambda x: x[:, 0] / 255.0,
    "float (N, 1, 28, 28)": lambda x: x / 255.0,
    "float (N, 28, 28, 1)": lambda x: x.transpose(0, 2, 3, 1) / 255.0,
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_accepted_layout_and_dtype_gives_the_in_process_predictions(
        served, test_split, expected, layout):
    images = LAYOUTS[layout](test_split.images[:N])
    status, body = post_images(served.url, images.tolist())
    assert status == 200, body
    assert body["predictions"] == expected["label"].tolist()  # one class name per image
    status, body = post_images(served.url, images.tolist(), output="full")
    assert status == 200, body
    rows = body["predictions"]
    assert [r["class_index"] for r in rows] == expected["class_index"].tolist()
    assert [r["label"] for r in rows] == expected["label"].tolist()
    served_probabilities = np.array([r["probabilities"] for r in rows])
    np.testing.assert_allclose(served_probabilities, np.stack(expected["probabilities"]),
                               atol=1e-5)
    np.testing.assert_allclose(served_probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_predictions_match_true_labels_at_about_the_logged_test_accuracy(
        served, client, test_split):
    status, body = post_images(served.url, test_split.images[:1000, 0].tolist(),
                               output="class_index")
    assert status == 200, body
    predicted = np.array(body["predictions"])
    accuracy = float((predicted == test_split.labels[:1000]).mean())
    version = client.get_model_version(MODEL, served.version)
    assert accuracy == pytest.approx(float(version.tags["test_accuracy"]), abs=0.05)
    assert json.loads(version.tags["class_names"])[9] == "Ankle boot"
    assert "integer pixels 0..255" in version.description


def test_output_parameter_chooses_names_indices_or_everything(served, local_model,
                                                               test_split, expected):
    images = test_split.images[:3, 0]
    names = expected["label"][:3].tolist()
    indices = expected["class_index"][:3].tolist()
    assert post_images(served.url, images.tolist()) == (200, {"predictions": names})
    assert post_images(served.url, images.tolist(), output="label") == (
        200, {"predictions": names})
    assert post_images(served.url, images.tolist(), output="class_index") == (
        200, {"predictions": indices})
    status, body = post_images(served.url, images.tolist(), output="full")
    assert status == 200
    assert [(r["class_index"], r["label"]) for r in body["predictions"]] == list(
        zip(indices, names))
    status, body = post_images(served.url, images.tolist(), output="logits")
    assert status == 400 and "output 'logits' is not one of label, class_index, full" in body
    # In Python: a 1-D answer by default, as MLflow's classifiers give.
    out = local_model.predict({"images": images})
    assert isinstance(out, np.ndarray) and out.shape == (3,) and out.tolist() == names
    out = local_model.predict({"images": images}, params={"output": "class_index"})
    assert out.dtype == np.int64 and out.tolist() == indices


N_EVALUATED = 200


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An MNIST-format IDX file (gzip) of uint8 ``array``: magic 0x08 (ubyte), ndim, sizes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I",
                                                                    *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def small_test_study(tmp_path_factory, test_split):
    """A one-trial study whose test split is the first 200 Fashion-MNIST test images (a
    data folder with the real training files and a 200-image test file)."""
    if not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("needs Debian's dataset-fashion-mnist (.ci/run installs it)")
    cwd = tmp_path_factory.mktemp("evaluate")
    data = cwd / "data"
    data.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (data / f"{stem}.gz").symlink_to(DEBIAN_FASHION_MNIST_DIR / f"{stem}.gz")
    _write_idx(data / "t10k-images-idx3-ubyte.gz", test_split.images[:N_EVALUATED, 0])
    _write_idx(data / "t10k-labels-idx1-ubyte.gz", test_split.labels[:N_EVALUATED])
    (cwd / "spec.yaml").write_text(tiny_mlp_spec(1))
    result = hpsearch(cwd, "run", "--spec", "spec.yaml", "--study-name", "evaluated",
                      "--trials", "1", "--train-subset", "2000", "--device", "cpu",
                      "--data-dir", str(data))
    assert result.returncode == 0, result.stdout + result.stderr
    return cwd, result.stdout


def test_mlflow_evaluate_on_the_champion_gives_the_test_accuracy_hpsearch_reports(
        small_test_study, test_split):
    cwd, stdout = small_test_study
    class_names = get_dataset_info("fashion_mnist").class_names
    df = pd.DataFrame({"images": [img[0].tolist() for img in test_split.images[:N_EVALUATED]],
                       "label": [class_names[i] for i in test_split.labels[:N_EVALUATED]]})
    tracking_uri = f"sqlite:///{cwd / 'mlflow.db'}"
    with using_tracking_uri(tracking_uri):
        result = mlflow.models.evaluate("models:/hpsearch-evaluated@champion", data=df,
                                        targets="label", model_type="classifier")
    assert result.metrics["example_count"] == N_EVALUATED
    accuracy = result.metrics["accuracy_score"]
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    version = client.get_model_version_by_alias("hpsearch-evaluated", "champion")
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("evaluated").experiment_id],
        filter_string="tags.`hpsearch.role` = 'study'")
    # Exactly equal, not approximately: hpsearch reports the test accuracy of the model as
    # it is served (its own code, float32 on the CPU), the model evaluate() runs. The
    # autocast figure, comparable with validation, is kept beside it.
    assert accuracy == parent.data.metrics["test_accuracy"]
    assert version.tags["test_accuracy"] == f"{accuracy:.4f}"
    assert f"\ntest accuracy {accuracy:.4f} (as served: float32 on the CPU" in stdout
    amp = autocast_dtype(torch.device("cpu"))
    assert ("test_accuracy_autocast" in parent.data.metrics) == (amp is not None)


def image(value=0, shape=(28, 28)):
    return np.full(shape, value).tolist()


BAD_REQUESTS = {
    "wrong shape": ([image(shape=(27, 28))], "shape (27, 28)"),
    "colour image for a grayscale model": ([image(shape=(28, 28, 3))], "shape (28, 28, 3)"),
    "strings": (["not an image"], "must be numbers"),
    "ragged rows": ([[[0] * 28] * 27 + [[0] * 27]], "unequal length"),
    "nan": ([image(float("nan"))], "NaN or infinite"),
    "inf": ([image(float("inf"))], "NaN or infinite"),
    "integers above 255": ([image(300)], "0..255"),
    "negative": ([image(-1)], "0..255"),
    "floats above 1": ([image(1.5)], "[0, 1]"),
    "empty batch": ([], "empty batch"),
    "batch over the maximum": ([image()] * (MAX_BATCH + 1), f"maximum of {MAX_BATCH}"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_gets_400_naming_what_was_expected_and_server_goes_on(
        served, test_split, case):
    images, message = BAD_REQUESTS[case]
    status, body = post_images(served.url, images)
    assert status == 400, body[:2000]
    assert message in body
    assert len(body) < 2000  # the model's message, not an echo of the request
    assert "Expected: 1 to" in body or case == "empty batch"
    good_status, good = post_images(served.url, test_split.images[:2, 0].tolist())
    assert good_status == 200 and len(good["predictions"]) == 2


def test_malformed_json_gets_400(served):
    status, _ = post_images(served.url, raw="{not json")
    assert status == 400


def test_predict_command_labels_png_and_npy_files(served, tracking_uri, test_split, expected,
                                                  tmp_path):
    paths = []
    for i in range(5):
        path = tmp_path / f"test_{i}.png"
        Image.fromarray(test_split.images[i, 0]).save(path)
        paths.append(str(path))
    np.save(tmp_path / "batch.npy", test_split.images[5:8, 0])
    result = cli(tmp_path, "predict", *paths, "batch.npy", "--model", served.model_uri,
                 "--tracking-uri", tracking_uri)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 8
    assert [line.split()[0] for line in lines] == paths + [f"batch.npy[{i}]" for i in range(3)]
    for line, label in zip(lines, expected["label"][:8]):
        assert f"  {label}  " in line


def test_predict_command_resizes_an_image_file_and_refuses_a_wrong_pixel_array(
        tracking_uri, served, tmp_path):
    # An image file of any size is preprocessed by the model; a pixel array is not.
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "small.png")
    np.save(tmp_path / "small.npy", np.zeros((20, 20), np.uint8))
    result = cli(tmp_path, "predict", "small.png", "small.npy", "--model",
                 served.model_uri, "--tracking-uri", tracking_uri)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("small.png  ")
    assert "hpsearch: error: small.npy: shape (20, 20) is not (28, 28)" in result.stderr
    assert "Traceback" not in result.stderr
    alone = cli(tmp_path, "predict", "small.npy", "--model", served.model_uri,
                "--tracking-uri", tracking_uri)
    assert alone.returncode == 2 and alone.stdout == ""


def test_serve_command_starts_the_champion_on_loopback(study_dir, tracking_uri, test_split):
    port = free_port()
    exe = Path(sys.executable).with_name("hpsearch")
    server = subprocess.Popen(
        [str(exe), "serve", "--model", MODEL, "--port", str(port), "--tracking-uri",
         tracking_uri], cwd=study_dir, env=clean_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        wait_until_ready(port, server)
        status, body = post_images(f"http://127.0.0.1:{port}", test_split.images[:3].tolist())
        assert status == 200 and len(body["predictions"]) == 3
    finally:
        server.terminate()
        server.wait(timeout=30)
    # SIGTERM reached MLflow's server itself (hpsearch execs it): nothing left listening.
    assert port_closes(port)


def test_the_documented_python_forms_give_the_same_predictions(local_model, test_split,
                                                               expected):
    batch = test_split.images[:N, 0]
    for form in (pd.DataFrame({"images": list(batch)}), {"images": batch},
                 {"images": list(batch)}):
        out = local_model.predict(form)
        assert out.tolist() == expected["label"].tolist()
    with pytest.raises(MlflowException):  # documented: wrap a bare array in {"images": ...}
        local_model.predict(batch)


def test_predict_and_serve_default_to_the_champion_registered_last(study_dir, tracking_uri,
                                                                   test_split, tmp_path):
    np.save(tmp_path / "one.npy", test_split.images[0, 0])
    env = clean_env(MLFLOW_TRACKING_URI=tracking_uri)
    result = cli(tmp_path, "predict", "one.npy", env=env)
    named = cli(tmp_path, "predict", "one.npy", "--model", MODEL, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == named.stdout and result.stdout.startswith("one.npy")
    missing = cli(tmp_path, "serve", "--model", "nope", env=env)
    assert missing.returncode == 2
    assert "no registered model 'nope' with alias 'champion'" in missing.stderr
    assert f"registered models: {MODEL} (@champion)" in missing.stderr


def file_request(images: np.ndarray, form: str = "records") -> str:
    """A request of ``images`` (uint8 (N, 28, 28)) as base64-encoded PNG files."""
    files = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        files.append(buffer.getvalue())
    if form == "split":  # MLflow's flower-classifier example: base64 with line breaks
        return json.dumps({"dataframe_split": {"columns": ["image"], "data": [
            [base64.encodebytes(f).decode()] for f in files]}})
    encoded = [base64.b64encode(f).decode() for f in files]
    if form == "inputs":
        return json.dumps({"inputs": {"image": encoded}})
    return json.dumps({"dataframe_records": [{"image": e} for e in encoded]})


@pytest.mark.parametrize("form", ["records", "split", "inputs"])
def test_png_files_of_the_test_images_get_the_answers_of_their_pixels(
        served, test_split, expected, form):
    status, body = post_images(served.url, raw=file_request(test_split.images[:N, 0], form))
    assert status == 200, body
    assert body["predictions"] == expected["label"].tolist()


def test_the_documented_curl_command_classifies_a_photo(served, tmp_path):
    photo = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    # As docs/guides/serving.md and the README write it (with the server's port).
    command = (f"printf '{{\"dataframe_records\": [{{\"image\": \"%s\"}}]}}' "
               f"\"$(base64 -w0 photo.jpg)\" | curl -s {served.url}/invocations "
               f"-H 'Content-Type: application/json' --data-binary @-")
    root = Path(__file__).parents[1]
    for documented in (root / "docs" / "guides" / "serving.md", root / "README.md"):
        assert command.replace(served.url, "http://127.0.0.1:5001") in documented.read_text()
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    answer = json.loads(result.stdout)
    assert len(answer["predictions"]) == 1
    assert answer["predictions"][0] in get_dataset_info("fashion_mnist").class_names
