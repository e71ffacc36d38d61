"""Predictions from a registered or logged champion, through the same pyfunc model code that
``mlflow models serve`` runs (``pyfunc_model.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from hpsearch.errors import HpsearchError, first_line
from hpsearch.redact import redact_url
from hpsearch.tracking.provenance import resolve_tracking_uri, using_tracking_uri

__all__ = ["Prediction", "load_serving_model", "predict_files", "read_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Prediction:
    """One image's answer: where it came from, its class and that class's probability."""

    source: str
    class_index: int
    label: str
    probability: float


def load_serving_model(uri: str, tracking_uri: str | None = None):
    """Load the pyfunc model at ``uri``. Raises HpsearchError if it cannot be found."""
    tracking_uri = resolve_tracking_uri(tracking_uri)
    try:
        with using_tracking_uri(tracking_uri):
            return mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:
        raise HpsearchError(f"cannot load model {uri} from {redact_url(tracking_uri)}: "
                            f"{first_line(exc.message)}") from None


def read_images(paths: list[str], *, channels: int,
                image_shapes: list[tuple[int, ...]]) -> tuple[list[str], list[np.ndarray]]:
    """Read PNG/JPEG files (converted to ``channels`` channels) and ``.npy`` arrays.

    A ``.npy`` file holds one image (its shape is one of ``image_shapes``) or a batch
    (N, ...); each image keeps its layout and dtype, so the model checks it exactly as the
    server would.

    Returns:
        (source names, per-image arrays), in order; ``file.npy[i]`` names batch entries.

    Raises:
        HpsearchError: a file that is neither an image nor a readable ``.npy`` array.
    """
    from PIL import Image, UnidentifiedImageError

    sources, images = [], []
    for path in paths:
        suffix = Path(path).suffix.lower()
        if suffix == ".npy":
            array = _load_npy(path)
            batch = array[None] if array.shape in image_shapes else array
            sources += [f"{path}[{i}]" for i in range(len(batch))] if len(batch) > 1 else [path]
            images += list(batch)
        elif suffix in IMAGE_SUFFIXES:
            try:
                with Image.open(path) as img:
                    pixels = np.asarray(img.convert("L" if channels == 1 else "RGB"))
            except (OSError, UnidentifiedImageError) as exc:
                raise HpsearchError(f"{path}: not a readable image ({exc})") from None
            sources.append(path)
            images.append(pixels)
        else:
            raise HpsearchError(f"{path}: expected a .png, .jpg, .jpeg or .npy file")
    return sources, images


def _load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise HpsearchError(f"{path}: not a readable .npy array ({exc})") from None


def predict_files(paths: list[str], uri: str, tracking_uri: str | None = None) -> list[Prediction]:
    """Classify the images in ``paths`` with the model at ``uri``.

    Raises:
        HpsearchError: the model cannot be loaded, a file cannot be read, or the model
            rejects an image (its message says what was expected).
    """
    model = load_serving_model(uri, tracking_uri)
    meta = model.metadata.metadata or {}
    shapes = [tuple(s) for s in meta.get("accepted_image_shapes", [])]
    sources, images = read_images(paths, channels=int(meta.get("in_channels", 1)),
                                  image_shapes=shapes)
    try:
        out = model.predict(pd.DataFrame({"images": images}), params=_full_output(model))
    except MlflowException as exc:
        raise HpsearchError(exc.message) from None
    return [Prediction(src, int(row.class_index), row.label,
                       float(row.probabilities[row.class_index]))
            for src, row in zip(sources, out.itertuples(index=False))]


def _full_output(model) -> dict[str, str] | None:
    """The inference parameter asking for class index, name and probabilities per image.
    Champions registered before the parameter existed answer that by default (and MLflow
    warns about parameters a model does not declare): None for them."""
    schema = model.metadata.get_params_schema()
    declared = schema is not None and any(p.name == "output" for p in schema.params)
    return {"output": "full"} if declared else None
