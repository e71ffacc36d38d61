"""Predictions from a registered or logged champion, through the same pyfunc model code that
``mlflow models serve`` runs (``pyfunc_model.py``): image files of any size are sent as they
are (base64, column ``image``) and preprocessed by the model, ``.npy`` pixel arrays as pixel
arrays (column ``images``). A file that cannot be read, or that the model refuses, is
reported on its own while the others are predicted."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from hpsearch.data_utils.own_images.records import IMAGE_EXTENSIONS
from hpsearch.errors import HpsearchError, first_line
from hpsearch.redact import redact_url
from hpsearch.serving.image_files import IMAGE_COLUMN, MAX_IMAGE_BYTES, MAX_REQUEST_BYTES
from hpsearch.serving.images import MAX_BATCH, PIXELS_COLUMN
from hpsearch.tracking.provenance import resolve_tracking_uri, using_tracking_uri

__all__ = ["Prediction", "Predictions", "Refusal", "describe_model", "load_serving_model",
           "predict_files"]


@dataclass(frozen=True)
class Prediction:
    """One image's answer: where it came from, its class and that class's probability."""

    source: str
    class_index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Refusal:
    """A file (or an image of a ``.npy`` batch) that got no answer, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class Predictions:
    """What ``hpsearch predict`` prints.

    Attributes:
        model: which model answered, e.g. ``hpsearch-photos version 3 (alias champion,
            run 0f1e...)``.
        results: one entry per image, in the order of the files given, produced as the
            files are read and sent, a request's worth at a time (a folder of thousands of
            photos is never held in memory at once).
    """

    model: str
    results: Iterator[Prediction | Refusal]
    width: int = 0  # characters of the longest file name, to align the answers

@dataclass
class _Item:
    """One image to send: its source and either a file's base64 text or a pixel array."""

    source: str
    column: str
    value: Any
    size: int = 0  # bytes of a file


def load_serving_model(uri: str, tracking_uri: str | None = None):
    """Load the pyfunc model at ``uri``. Raises HpsearchError if it cannot be found."""
    tracking_uri = resolve_tracking_uri(tracking_uri)
    try:
        with using_tracking_uri(tracking_uri):
            return mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:
        raise HpsearchError(f"cannot load model {uri} from {redact_url(tracking_uri)}: "
                            f"{first_line(exc.message)}") from None


def describe_model(uri: str, tracking_uri: str) -> str:
    """Which model ``uri`` is: registered name, version, alias and run, or the run it was
    logged in."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    if uri.startswith("runs:/"):
        return f"the model logged in run {uri[len('runs:/'):].split('/', 1)[0]}"
    if not uri.startswith("models:/"):
        return uri
    name, at, alias = uri[len("models:/"):].partition("@")
    try:
        if at:
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = name.rpartition("/")
            version = client.get_model_version(name, number)
    except MlflowException:
        return uri  # a model id (models:/m-...) or a form this does not name better
    extra = ([f"alias {alias}"] if at else []) + ([f"run {version.run_id}"]
                                                  if version.run_id else [])
    return f"{name} version {version.version}" + (f" ({', '.join(extra)})" if extra else "")


def predict_files(paths: Sequence[str], uri: str,
                  tracking_uri: str | None = None) -> Predictions:
    """Classify the files in ``paths`` with the model at ``uri``; a folder stands for the
    image files (and ``.npy`` files) below it, in sorted order, hidden ones left out.

    Image files (any name but ``.npy``) are sent as base64-encoded files in column
    ``image``, as a client of the server sends them, and preprocessed by the model; a
    ``.npy`` file holds one pixel array or a batch (N, ...), sent in column ``images``. A
    model registered before image files were served gets them preprocessed here by the same
    function, as pixel arrays.

    Returns:
        The model's description and, per image in order, its :class:`Prediction` or the
        :class:`Refusal` saying why it got none (unreadable, over the model's size limit, not
        an image, a wrong pixel array).

    Raises:
        HpsearchError: the model cannot be loaded.
    """
    tracking_uri = resolve_tracking_uri(tracking_uri)
    model = load_serving_model(uri, tracking_uri)
    files = list(_files(paths))
    width = max((len(f) for f in files if isinstance(f, str)), default=0)
    return Predictions(describe_model(uri, tracking_uri), _results(model, files), width)


def _results(model, files: list[str | Refusal]) -> Iterator[Prediction | Refusal]:
    """Each image's answer in order; the files are read a request's worth at a time."""
    meta = model.metadata.metadata or {}
    schema = model.metadata.get_input_schema()
    takes_files = schema is not None and IMAGE_COLUMN in schema.input_names()
    limit = int(meta.get("max_image_bytes", MAX_IMAGE_BYTES))
    shapes = [tuple(s) for s in meta.get("accepted_image_shapes", [])]
    max_batch = int(meta.get("max_batch", MAX_BATCH))
    max_bytes = int(meta.get("max_request_bytes", MAX_REQUEST_BYTES))
    pending: list[_Item | Refusal] = []  # in order; the items are the next request
    sent: list[_Item] = []
    size = 0
    for path in files:
        if isinstance(path, Refusal):
            items: list[_Item | Refusal] = [path]
        elif Path(path).suffix.lower() == ".npy":
            items = _npy_items(path, shapes)
        elif takes_files:
            items = [_file_item(path, limit)]
        else:
            items = [_preprocessed_item(path, meta)]
        for item in items:
            if isinstance(item, _Item) and sent and (
                    item.column != sent[0].column or len(sent) == max_batch
                    or size + item.size > max_bytes):
                yield from _answered(model, pending, sent)
                pending, sent, size = [], [], 0
            pending.append(item)
            if isinstance(item, _Item):
                sent.append(item)
                size += item.size
    yield from _answered(model, pending, sent)


def _answered(model, pending: list[_Item | Refusal], sent: list[_Item]
              ) -> list[Prediction | Refusal]:
    """``pending`` with its items (``sent``, one request) answered by ``model``."""
    answers = _predict_chunk(model, list(enumerate(sent))) if sent else {}
    in_order = (answers[i] for i in range(len(sent)))
    return [next(in_order) if isinstance(item, _Item) else item for item in pending]


def _files(paths: Sequence[str]) -> Iterator[str | Refusal]:
    """``paths`` with each folder replaced by the image and ``.npy`` files below it."""
    for path in paths:
        if not os.path.isdir(path):
            yield path
            continue
        found = []
        for folder, folders, names in os.walk(path):
            folders[:] = [f for f in folders if not f.startswith(".")]  # .git is not walked
            found += [os.path.join(folder, name) for name in names if not name.startswith(".")
                      and name.lower().endswith((*IMAGE_EXTENSIONS, ".npy"))]
        found.sort()
        if not found:
            yield Refusal(path, "a folder holding no image file (looked for "
                                f"{', '.join(IMAGE_EXTENSIONS)}, .npy)")
        yield from found


def _file_item(path: str, limit: int) -> _Item | Refusal:
    try:
        size = os.stat(path).st_size
        if size > limit:
            return Refusal(path, f"a file of {size:,} bytes, more than the model's limit of "
                                 f"{limit:,} bytes per image file")
        with open(path, "rb") as f:
            content = f.read()
    except OSError as exc:
        return Refusal(path, f"cannot be read: {exc.strerror or exc}")
    return _Item(path, IMAGE_COLUMN, base64.b64encode(content).decode("ascii"), len(content))


def _preprocessed_item(path: str, meta: dict) -> _Item | Refusal:
    """A file as pixels, preprocessed here, for a model that takes no image files."""
    from hpsearch.data_utils.own_images import ImageFileError, preprocess_image

    try:
        pixels = preprocess_image(path, image_size=int(meta["image_size"]),
                                  channels=int(meta.get("in_channels", 1)))
    except ImageFileError as exc:
        return Refusal(path, exc.reason)
    return _Item(path, PIXELS_COLUMN, pixels)


def _npy_items(path: str, image_shapes: list[tuple[int, ...]]) -> list[_Item | Refusal]:
    """A ``.npy`` file's image (its shape is one of ``image_shapes``, or it has at most two
    dimensions) or batch (N, ...); each
    image keeps its layout and dtype, so the model checks it exactly as the server would;
    ``file.npy[i]`` names batch entries."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        return [Refusal(path, f"not a readable .npy array ({exc})")]
    if array.ndim == 0:
        return [Refusal(path, "a .npy file holding a single number, not an image")]
    # One image when its shape is one the model takes, or too flat for a batch.
    batch = array[None] if array.shape in image_shapes or array.ndim <= 2 else array
    if len(batch) == 1:
        return [_Item(path, PIXELS_COLUMN, batch[0])]
    return [_Item(f"{path}[{i}]", PIXELS_COLUMN, image) for i, image in enumerate(batch)]


def _predict_chunk(model, chunk: list[tuple[int, _Item]]) -> dict[int, Prediction | Refusal]:
    """Answers for one request; when the model refuses it, each image is sent alone, so
    only the images it refuses go without an answer."""
    column = chunk[0][1].column
    frame = pd.DataFrame({column: [item.value for _, item in chunk]})
    try:
        out = model.predict(frame, params=_full_output(model))
    except MlflowException as exc:
        if len(chunk) == 1:
            return {chunk[0][0]: Refusal(chunk[0][1].source, _reason(exc.message))}
        answers: dict[int, Prediction | Refusal] = {}
        for entry in chunk:
            answers.update(_predict_chunk(model, [entry]))
        return answers
    return {i: Prediction(item.source, int(row.class_index), row.label,
                          float(row.probabilities[row.class_index]))
            for (i, item), row in zip(chunk, out.itertuples(index=False))}


def _reason(message: str) -> str:
    """The model's refusal of one image, without the image's row (the file is named) and
    the account of everything it takes."""
    reason = message.split(". Expected: ", 1)[0]
    return re.sub(r"^images?( \d+)?: ", "", reason)


def _full_output(model) -> dict[str, str] | None:
    """The inference parameter asking for class index, name and probabilities per image.
    Champions registered before the parameter existed answer that by default (and MLflow
    warns about parameters a model does not declare): None for them."""
    schema = model.metadata.get_params_schema()
    declared = schema is not None and any(p.name == "output" for p in schema.params)
    return {"output": "full"} if declared else None
