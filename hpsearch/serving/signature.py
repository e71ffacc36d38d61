"""What the registered champion declares about its inputs and outputs: the MLflow signature
(two optional columns, pixel arrays or base64 image files; the ``output`` parameter), the
input example logged with it, and the metadata its MLmodel file carries."""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType

from hpsearch.data_utils import DatasetInfo
from hpsearch.serving.classifier import DEFAULT_OUTPUT
from hpsearch.serving.image_files import (
    IMAGE_COLUMN,
    MAX_IMAGE_BYTES,
    MAX_REQUEST_BYTES,
    Preprocessing,
    encode_image_file,
)
from hpsearch.serving.images import MAX_BATCH, PIXELS_COLUMN, accepted_shapes

__all__ = ["serving_input_example", "serving_metadata", "serving_signature"]


def serving_input_example(images: np.ndarray) -> pd.DataFrame:
    """The logged input example: ``images`` (uint8 (N, C, S, S), a data set's own) as
    base64-encoded PNG files in column ``image``, one per row."""
    return pd.DataFrame({IMAGE_COLUMN: [encode_image_file(img) for img in images]})


def serving_signature() -> ModelSignature:
    """One image per row, in one of two optional columns: ``images``, a pixel array (any
    accepted layout, checked by the model), or ``image``, a base64-encoded image file; by
    default one class name per image. The inference parameter ``output`` (``label``,
    ``class_index`` or ``full``; see ``pyfunc_model.py``) chooses the answer."""
    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), PIXELS_COLUMN, required=False),
                       ColSpec(DataType.string, IMAGE_COLUMN, required=False)]),
        outputs=Schema([ColSpec(DataType.string)]),
        params=ParamSchema([ParamSpec("output", DataType.string, DEFAULT_OUTPUT)]),
    )


def serving_metadata(info: DatasetInfo) -> dict:
    """What the logged model's MLmodel file says of its inputs."""
    return {
        "dataset": info.name,
        "class_names": list(info.class_names),
        "in_channels": info.shape.channels,
        "image_size": info.shape.size,
        "accepted_image_shapes": [list(s) for s in accepted_shapes(info.shape)],
        "pixel_values": "integers 0..255 or floats 0..1",
        "max_batch": MAX_BATCH,
        "image_column": IMAGE_COLUMN,
        "image_files": "base64-encoded PNG, JPEG, WEBP, BMP, GIF (first frame), TIFF or "
                       "PPM/PGM files of any size and colour mode",
        "max_image_bytes": MAX_IMAGE_BYTES,
        "max_request_bytes": MAX_REQUEST_BYTES,
        "max_image_pixels": Preprocessing.for_shape(info.shape).max_pixels,
    }
