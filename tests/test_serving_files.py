"""The champion takes image files: base64-encoded files of any size, format and colour mode in
a column ``image``, preprocessed by the function that built the training cache (a training
file gets its cached pixels bit for bit), within limits of bytes, images and pixels per
request; its signature declares both columns and its logged example (base64 PNGs of its test
images, all channels kept) validates; ``hpsearch predict`` sends files of any size and reports
each file it cannot use on its own line.

Everything runs in this process, on two champions registered by hpsearch's own
``register_champion`` from untrained networks (tests/champions.py): one trained on a folder
of photos (3 channels, 16 px), one of Fashion-MNIST's shape (1 channel, 28 px).
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from champions import random_split, register_untrained_champion
from click.testing import CliRunner
from image_files import bomb_png, exif_rotated_jpeg, image_bytes, noise, truncated, write
from mlflow.exceptions import MlflowException
from mlflow.types import DataType
from PIL import Image

from hpsearch.cli import main
from hpsearch.data_utils import DatasetInfo, get_dataset_info
from hpsearch.data_utils.own_images import (
    PREPROCESS_VERSION,
    ImageOptions,
    load_images,
    preprocess_image,
)
from hpsearch.serving.image_files import MAX_IMAGE_BYTES, MAX_REQUEST_BYTES, MAX_SERVED_PIXELS
from hpsearch.serving.images import MAX_BATCH
from hpsearch.tracking.provenance import using_tracking_uri

SIZE = 16  # the photos' image size


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def photo_tree(root: Path) -> Path:
    """Three classes of files in every format and colour mode the cache takes, of several
    sizes, none of them SIZE x SIZE: each is resized on the way into the cache."""
    for i in range(4):
        write(root / "cat" / f"{i}.png", noise("RGB", (40, 30)))
        write(root / "dog" / f"{i}.jpg", noise("RGB", (30, 50)), "JPEG")
        write(root / "owl" / f"{i}.webp", noise("RGB", (24, 24)), "WEBP")
    write(root / "cat" / "big.jpg", noise("RGB", (200, 150)), "JPEG")  # decoded at 1/8 scale
    write(root / "cat" / "grey.png", noise("L", (20, 33)))
    write(root / "dog" / "alpha.png", noise("RGB", (21, 19)).convert("RGBA"))
    write(root / "dog" / "palette.gif", noise("RGB", (18, 18)).convert("P"), "GIF")
    write(root / "owl" / "bitmap.bmp", noise("RGB", (17, 25)), "BMP")
    exif_rotated_jpeg(root / "owl" / "rotated.jpg", noise("RGB", (30, 20)))
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = photo_tree(tmp_path_factory.mktemp("files") / "photos")
    return load_images(root, ImageOptions(image_size=SIZE, val_fraction=0.2, test_fraction=0.2),
                       cache_dir=root.parent / "cache", progress=None)


@pytest.fixture(scope="module")
def rgb_champion(photos, tmp_path_factory):
    info = DatasetInfo.build(name=photos.name, class_names=photos.class_names, channels=3,
                             size=SIZE, mean=photos.mean, std=photos.std)
    return register_untrained_champion(tmp_path_factory.mktemp("rgb"), info, photos.test,
                                       name="hpsearch-photos")


@pytest.fixture(scope="module")
def grey_champion(tmp_path_factory):
    info = get_dataset_info("fashion_mnist")
    return register_untrained_champion(tmp_path_factory.mktemp("grey"), info,
                                       random_split(info), name="hpsearch-fm")


def load(champion):
    with using_tracking_uri(champion.tracking_uri):
        return mlflow.pyfunc.load_model(champion.model_uri)


@pytest.fixture(scope="module")
def rgb_model(rgb_champion):
    return load(rgb_champion)


@pytest.fixture(scope="module")
def grey_model(grey_champion):
    return load(grey_champion)


# --- the pixels: exactly the training cache's -------------------------------------------------

def test_a_training_file_sent_to_its_champion_gets_the_cached_pixels_bit_for_bit(
        photos, rgb_model):
    files = [encoded((photos.source / name).read_bytes()) for name in photos.files["train"]]
    cached = np.asarray(photos.train.images)  # (N, 3, 16, 16), from files of other sizes
    served = rgb_model.unwrap_python_model().unit_batch(pd.DataFrame({"image": files}))
    assert served.dtype == np.float32 and served.shape == cached.shape
    # What the network sees: the cached pixels, scaled as a pixel array request is scaled.
    assert np.array_equal(served, cached.astype(np.float32) / 255.0)
    assert np.array_equal(np.rint(served * 255).astype(np.uint8), cached)
    by_file = rgb_model.predict(pd.DataFrame({"image": files}), params={"output": "full"})
    by_pixels = rgb_model.predict({"images": cached}, params={"output": "full"})
    assert np.array_equal(np.stack(by_file["probabilities"]),
                          np.stack(by_pixels["probabilities"]))


def test_a_photo_of_any_size_sent_to_a_fashion_mnist_champion_is_made_grey_and_28_px(
        grey_model):
    photo = image_bytes(noise("RGB", (300, 200), seed=1), "JPEG")
    served = grey_model.unwrap_python_model().unit_batch({"image": [encoded(photo)]})
    expected = preprocess_image(photo, image_size=28, channels=1)  # (1, 28, 28) grey
    assert np.array_equal(served[0], expected.astype(np.float32) / 255.0)
    answer = grey_model.predict({"image": [encoded(photo), encoded(photo)]})
    assert len(answer) == 2 and answer[0] in get_dataset_info("fashion_mnist").class_names


def animated_gif() -> bytes:
    frames = [noise("RGB", (30, 30), seed=s).convert("P") for s in (2, 3, 4)]
    return image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])


FILES = {
    "PNG RGB": lambda: image_bytes(noise("RGB", (50, 40))),
    "PNG RGBA": lambda: image_bytes(noise("RGB", (31, 40)).convert("RGBA")),
    "PNG LA": lambda: image_bytes(noise("L", (31, 40)).convert("LA")),
    "PNG palette": lambda: image_bytes(noise("RGB", (31, 40)).convert("P")),
    "PNG 16-bit": lambda: image_bytes(Image.fromarray(
        np.arange(40 * 31, dtype=np.uint16).reshape(40, 31) * 50)),
    "JPEG": lambda: image_bytes(noise("RGB", (640, 480)), "JPEG"),
    "JPEG grey": lambda: image_bytes(noise("L", (64, 48)), "JPEG"),
    "JPEG CMYK": lambda: image_bytes(noise("RGB", (64, 48)).convert("CMYK"), "JPEG"),
    "WEBP": lambda: image_bytes(noise("RGB", (64, 48)), "WEBP"),
    "BMP": lambda: image_bytes(noise("RGB", (9, 70)), "BMP"),
    "GIF animated": animated_gif,
    "1x1": lambda: image_bytes(Image.new("RGB", (1, 1), (9, 8, 7))),
}


def test_every_format_and_colour_mode_is_preprocessed_as_the_cache_does_it(rgb_model):
    files = [FILES[name]() for name in FILES]
    served = rgb_model.unwrap_python_model().unit_batch({"image": [encoded(f) for f in files]})
    expected = np.stack([preprocess_image(f, image_size=SIZE, channels=3) for f in files])
    assert np.array_equal(np.rint(served * 255).astype(np.uint8), expected)
    first_frame = image_bytes(Image.open(io.BytesIO(animated_gif())), "GIF")
    assert np.array_equal(expected[list(FILES).index("GIF animated")],
                          preprocess_image(first_frame, image_size=SIZE, channels=3))
    assert len(rgb_model.predict({"image": [encoded(f) for f in files]})) == len(FILES)


def test_base64_with_line_breaks_or_a_data_url_prefix_is_the_same_file(rgb_model):
    png = FILES["PNG RGB"]()
    while b"+" not in base64.b64encode(png) or b"/" not in base64.b64encode(png) or len(
            png) % 3 == 0:  # a file whose base64 differs in either alphabet, and is padded
        png += b"\0"  # trailing bytes after IEND: still the same image
    url_safe = base64.urlsafe_b64encode(png).decode()
    forms = [encoded(png), base64.encodebytes(png).decode(),  # MLflow's example: 76-char lines
             "data:image/png;base64," + encoded(png), png,  # a browser's data URL; raw bytes
             url_safe, url_safe.rstrip("=")]  # base64url, with and without its padding
    assert "-" in url_safe and "_" in url_safe and url_safe.endswith("=")
    pixels = rgb_model.unwrap_python_model().unit_batch({"image": forms})
    assert all(np.array_equal(pixels[0], p) for p in pixels[1:])


# --- limits and refusals ----------------------------------------------------------------------

def random_bytes(n: int) -> bytes:
    return np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()


def bomb_bytes(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG declaring ``width`` x ``height`` pixels."""
    with tempfile.TemporaryDirectory() as tmp:
        return bomb_png(Path(tmp, "bomb.png"), width, height).read_bytes()


def small_png() -> str:
    return encoded(image_bytes(noise("RGB", (20, 20))))


REFUSED = {
    "more images than allowed": (
        lambda: [small_png()] * (MAX_BATCH + 1),
        f"batch of {MAX_BATCH + 1} images exceeds the maximum of {MAX_BATCH} per request"),
    "a file over the bytes per image": (
        lambda: [small_png(), encoded(random_bytes(MAX_IMAGE_BYTES + 1))],
        f"image 1: a file of {MAX_IMAGE_BYTES + 1:,} bytes, more than the limit of "
        f"{MAX_IMAGE_BYTES:,} bytes (32 MiB) per image file"),
    "files over the bytes per request": (
        lambda: [encoded(random_bytes(MAX_REQUEST_BYTES // 3 + 1))] * 3,
        f"image 2: the image files up to this one hold {3 * (MAX_REQUEST_BYTES // 3 + 1):,} "
        f"bytes, more than the limit of {MAX_REQUEST_BYTES:,} bytes (64 MiB) per request"),
    "a decompression bomb": (  # over Pillow's own refusal too: the same words, this limit
        lambda: [small_png(), encoded(bomb_bytes(30_000, 30_000))],
        "image 1: decompression bomb: declares 30,000 x 30,000 pixels, more than the limit "
        "of 24,000,000"),
    "a file declaring more pixels than a server decodes": (
        lambda: [encoded(bomb_bytes(6_000, 4_001))],
        "image 0: decompression bomb: declares 6,000 x 4,001 pixels, more than the limit "
        "of 24,000,000"),
    "not an image": (lambda: [small_png(), encoded(b"just some text")],
                     "image 1: not an image (Pillow cannot identify the file)"),
    "a truncated PNG": (
        lambda: [encoded(image_bytes(noise("RGB", (64, 64)))[:300])],
        "image 0: PNG truncated or corrupt"),
    "not base64": (lambda: ["abcde"], "image 0: not base64-encoded"),
    "characters outside base64": (lambda: ["!!!!"], "image 0: not base64-encoded"),
    "an empty string": (lambda: [small_png(), ""], "image 1: no base64 data"),
    "a number": (lambda: [small_png(), 7], "image 1: expected an image file as a base64 "
                                           "string, got int"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_request_over_a_limit_or_with_a_bad_file_is_refused_naming_the_image(
        rgb_model, case):
    files, message = REFUSED[case]
    with pytest.raises(MlflowException) as refused:
        rgb_model.predict({"image": files()})
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"  # HTTP 400 when served
    assert message in refused.value.message
    assert len(refused.value.message) < 1500  # the model's message, not the request
    assert len(rgb_model.predict({"image": [small_png()]})) == 1  # and it goes on answering


def serving(champion, body: dict):
    with using_tracking_uri(champion.tracking_uri), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated for mlflow.models.predict
        return mlflow.models.validate_serving_input(champion.model_uri, json.dumps(body))


def test_the_server_forms_of_a_request_and_the_requests_it_refuses(grey_champion):
    png = small_png()
    pixels = np.zeros((28, 28), dtype=np.uint8).tolist()
    for body in ({"dataframe_records": [{"image": png}, {"image": png}]},
                 {"dataframe_split": {"columns": ["image"], "data": [[png], [png]]}},
                 {"inputs": {"image": [png, png]}}, {"inputs": {"images": [pixels, pixels]}}):
        assert len(serving(grey_champion, body)) == 2, body
    with pytest.raises(MlflowException, match="in separate requests, not both in one"):
        serving(grey_champion, {"dataframe_records": [{"image": png}, {"images": pixels}]})
    # With two columns in the signature, MLflow no longer maps a bare list onto one of them.
    with pytest.raises(MlflowException, match=r"no image in the request: send pixel arrays "
                                              r"in column 'images' \(\{\"inputs\": \{\"images"):
        serving(grey_champion, {"inputs": [pixels]})


def model_folder(champion) -> Path:
    """The registered model's files (MLmodel, serving_input_example.json, artifacts/)."""
    with using_tracking_uri(champion.tracking_uri):
        return Path(mlflow.artifacts.download_artifacts(champion.model_uri))


# --- what registration logs -------------------------------------------------------------------

@pytest.mark.parametrize("which", ["rgb_champion", "grey_champion"])
def test_the_logged_example_is_base64_test_images_and_the_model_validates_it(request, which):
    champion = request.getfixturevalue(which)
    local = model_folder(champion)
    example = json.loads((local / "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"] == ["image"]
    predictions = serving(champion, example)
    assert len(predictions) == 2 and set(predictions) <= set(champion.info.class_names)
    shape = champion.info.shape
    config = json.loads((local / "artifacts" / "config.json").read_text())
    assert config["preprocessing"] == {"image_size": shape.size, "channels": shape.channels,
                                       "max_pixels": MAX_SERVED_PIXELS,
                                       "version": PREPROCESS_VERSION}
    inputs = mlflow.models.Model.load(str(local / "MLmodel")).signature.inputs.inputs
    assert [(c.name, c.required) for c in inputs] == [("images", False), ("image", False)]
    assert inputs[1].type == DataType.string


def test_a_three_channel_champions_example_keeps_its_test_images_colours(photos, rgb_champion):
    local = model_folder(rgb_champion)
    rows = json.loads((local / "serving_input_example.json").read_text())["dataframe_split"]
    decoded = [preprocess_image(base64.b64decode(row[0]), image_size=SIZE, channels=3)
               for row in rows["data"]]
    test_images = np.asarray(photos.test.images[:2])
    assert test_images.shape[1] == 3 and np.array_equal(np.stack(decoded), test_images)
    meta = load(rgb_champion).metadata.metadata
    assert meta["in_channels"] == 3 and meta["image_column"] == "image"
    assert (meta["max_image_bytes"], meta["max_request_bytes"]) == (
        MAX_IMAGE_BYTES, MAX_REQUEST_BYTES)


# --- hpsearch predict -------------------------------------------------------------------------

def predict(champion, *args: str):
    return CliRunner().invoke(main, ["predict", *args, "--tracking-uri",
                                     champion.tracking_uri])


def test_predict_sends_files_of_any_size_and_names_the_model_that_answered(
        grey_champion, grey_model, tmp_path):
    photo = write(tmp_path / "photo.jpg", noise("RGB", (300, 200), seed=5), "JPEG")
    small = write(tmp_path / "small.png", noise("L", (28, 28), seed=6))
    array = np.asarray(noise("L", (28, 28), seed=7))
    np.save(tmp_path / "pixels.npy", array)
    result = predict(grey_champion, str(photo), str(small), str(tmp_path / "pixels.npy"),
                     "--model", grey_champion.name)
    assert result.exit_code == 0, result.output
    registration = grey_champion.registration
    assert result.stderr.splitlines()[0] == (
        f"model: {grey_champion.name} version {registration.version} (alias champion, "
        f"run {grey_champion.run_id})")
    expected = list(grey_model.predict({"image": [encoded(photo.read_bytes()),
                                                  encoded(small.read_bytes())]}))
    expected += list(grey_model.predict({"images": array[None]}))
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [str(photo), str(small),
                                                   str(tmp_path / "pixels.npy")]
    assert all(f"  {label}  " in line for line, label in zip(lines, expected))


def test_predict_reports_each_file_it_cannot_use_on_its_own_line_and_predicts_the_others(
        grey_champion, tmp_path):
    good = write(tmp_path / "good.png", noise("RGB", (64, 64), seed=8))
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    bomb = bomb_png(tmp_path / "bomb.png")
    broken = truncated(tmp_path / "broken.png", image_bytes(noise("RGB", (64, 64))), 0.3)
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: nothing is written, nothing is read
    np.save(tmp_path / "wrong.npy", np.zeros((20, 20), dtype=np.uint8))
    names = ["missing.png", str(text), str(good), str(bomb), str(broken), str(huge),
             str(tmp_path / "wrong.npy")]
    result = predict(grey_champion, *names, "--model", grey_champion.name)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()] == [str(good)]
    errors = result.stderr.splitlines()[1:]
    assert errors == [
        "hpsearch: error: missing.png: cannot be read: No such file or directory",
        f"hpsearch: error: {text}: not an image (Pillow cannot identify the file)",
        f"hpsearch: error: {bomb}: decompression bomb: declares 30,000 x 30,000 pixels, more "
        "than the limit of 24,000,000",
        errors[3],
        f"hpsearch: error: {huge}: a file of {MAX_IMAGE_BYTES + 1:,} bytes, more than the "
        f"model's limit of {MAX_IMAGE_BYTES:,} bytes per image file",
        f"hpsearch: error: {tmp_path / 'wrong.npy'}: shape (20, 20) is not (28, 28), "
        "(1, 28, 28), (28, 28, 1)",
    ]
    assert errors[3].startswith(f"hpsearch: error: {broken}: PNG truncated or corrupt")


def test_predict_given_a_folder_classifies_the_images_below_it(grey_champion, tmp_path):
    photos = tmp_path / "photos"
    files = [write(photos / "b.png", noise("L", (30, 30), seed=1)),
             write(photos / "cats" / "a.JPG", noise("RGB", (50, 40), seed=2), "JPEG")]
    np.save(photos / "cats" / "c.npy", np.asarray(noise("L", (28, 28), seed=3)))
    files.append(photos / "cats" / "c.npy")
    (photos / "notes.txt").write_text("not an image")
    write(photos / ".hidden" / "x.png", noise("L", (30, 30)))
    write(photos / "._b.png", noise("L", (30, 30)))
    (tmp_path / "empty").mkdir()
    result = predict(grey_champion, str(photos), str(tmp_path / "empty"), "--model",
                     grey_champion.name)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()] == sorted(
        str(f) for f in files)
    assert result.stderr.splitlines()[1].startswith(
        f"hpsearch: error: {tmp_path / 'empty'}: a folder holding no image file (looked for")


def test_predict_reads_a_requests_worth_of_files_at_a_time(grey_model, tmp_path,
                                                          monkeypatch):
    """A folder of thousands of photos is never held in memory at once: the files of the
    next request are read only after the previous request was answered."""
    import hpsearch.serving.predict as predict_module

    files = [write(tmp_path / f"{i}.png", noise("L", (30, 30), seed=i)) for i in range(5)]
    events: list[str] = []
    read, answer = predict_module._file_item, predict_module._predict_chunk
    monkeypatch.setattr(predict_module, "_file_item", lambda path, limit: (
        events.append(f"read {Path(path).stem}"), read(path, limit))[1])
    monkeypatch.setattr(predict_module, "_predict_chunk", lambda model, chunk: (
        events.append(f"sent {len(chunk)}"), answer(model, chunk))[1])
    meta = grey_model.metadata.metadata
    monkeypatch.setitem(meta, "max_batch", 2)
    results = list(predict_module._results(grey_model, [str(f) for f in files]))
    assert events == ["read 0", "read 1", "read 2", "sent 2", "read 3", "read 4", "sent 2",
                      "sent 1"]
    assert [r.source for r in results] == [str(f) for f in files]
    assert [r.label for r in results] == list(grey_model.predict(
        {"image": [encoded(f.read_bytes()) for f in files]}))


def test_predict_exits_2_when_no_image_could_be_classified(grey_champion, tmp_path):
    text = tmp_path / "a.png"
    text.write_text("text")
    result = predict(grey_champion, str(text), str(tmp_path / "gone.jpg"), "--model",
                     grey_champion.name)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[1:] == [
        f"hpsearch: error: {text}: not an image (Pillow cannot identify the file)",
        f"hpsearch: error: {tmp_path / 'gone.jpg'}: cannot be read: No such file or directory"]


def test_predict_with_a_run_names_the_run(grey_champion, tmp_path):
    photo = write(tmp_path / "p.png", noise("L", (40, 40)))
    result = predict(grey_champion, str(photo), "--run", grey_champion.run_id)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == (
        f"model: the model logged in run {grey_champion.run_id}")
