"""The served champion, as an MLflow "model from code".

MLflow copies this file into the logged model and runs it when the model is loaded (by
``mlflow models serve``, ``mlflow.pyfunc.load_model`` or ``hpsearch predict``). Loading then:

1. imports hpsearch's model, data set and image-checking code (shipped inside the model
   through ``code_paths``, so hpsearch need not be installed where it is served);
2. reads ``config.json`` (architecture, hyperparameters, data set facts, the preprocessing
   of image files) as JSON;
3. reads the weights with ``torch.load(weights_only=True)``, which only admits tensors and
   plain containers: no pickled Python objects are executed.

Input: a DataFrame (or a dict of columns) with one image per row, in one of two columns,
both optional in the signature; one request uses one of them:

- ``images``: pixel arrays, integer pixels 0..255 or float pixels 0..1, in the layouts of
  :func:`hpsearch.serving.images.accepted_shapes`; a dict ``{"images": batch}`` may hold an
  array (N, ...). Served: ``{"inputs": {"images": [image, ...]}}`` (MLflow reads a bare
  ``{"inputs": [image, ...]}`` list as a table whose columns are the images' rows, and drops
  them as undeclared columns, when the signature has more than one column);
- ``image``: image files (PNG, JPEG, WEBP, BMP, GIF's first frame, ...) of any size and
  colour mode, base64-encoded, preprocessed by the function that built the training cache
  (:mod:`hpsearch.serving.image_files`). Served: ``{"dataframe_records": [{"image":
  "<base64>"}, ...]}``, ``{"dataframe_split": {"columns": ["image"], "data": [[...]]}}`` (MLflow's
  flower-classifier example) or ``{"inputs": {"image": ["<base64>", ...]}}``.

Output, chosen by the inference parameter ``output`` (declared in the signature's params;
``params={"output": ...}`` in Python, ``"params": {"output": ...}`` beside the input when
served):

- ``label`` (default): a 1-D array of class names, one per image, as MLflow's classifiers
  answer (the sklearn flavour's ``predict``); served as ``{"predictions": ["Ankle boot",
  ...]}``. So ``mlflow.models.evaluate(uri, data=df, targets="label",
  model_type="classifier")`` works with a column ``label`` of class names;
- ``class_index``: a 1-D int64 array of class indices;
- ``full``: a DataFrame, per row ``class_index`` (int), ``label`` (class name) and
  ``probabilities`` (softmax over all classes, in class-index order).

A bad request (a wrong image, a file that is not an image, a limit of
:mod:`hpsearch.serving.image_files` exceeded) raises an MlflowException with
INVALID_PARAMETER_VALUE, which the scoring server answers with HTTP 400 naming the image.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from hpsearch.data_utils import DatasetInfo
from hpsearch.params import TrialParams
from hpsearch.serving.classifier import (
    DEFAULT_OUTPUT,
    OUTPUTS,
    NormalizingClassifier,
    class_probabilities,
)
from hpsearch.serving.image_files import (
    IMAGE_COLUMN,
    MAX_IMAGE_BYTES,
    MAX_REQUEST_BYTES,
    Preprocessing,
    files_to_unit_batch,
)
from hpsearch.serving.images import (
    MAX_BATCH,
    PIXELS_COLUMN,
    InvalidImages,
    accepted_shapes,
    to_unit_batch,
)


class BadRequest(MlflowException):
    """A request the model rejects: HTTP 400 with the model's own message.

    MLflow's scoring server rewrites a prediction error's message as
    ``Failed to predict data '<the whole request>'. Error: ...``, so a rejected batch of a
    thousand images came back as a 400 response of megabytes. This exception keeps the
    message it was created with: later assignments to ``message`` are ignored.
    """

    def __init__(self, message: str) -> None:
        self._fixed_message: str | None = None
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self._fixed_message = message

    @property
    def message(self) -> str:
        return self._fixed_message

    @message.setter
    def message(self, value: str) -> None:
        if self._fixed_message is None:
            self._fixed_message = value


class ChampionModel(PythonModel):
    """Pyfunc wrapper: checks the images, runs the :class:`NormalizingClassifier`, answers
    class names (or, as the parameter ``output`` asks, class indices, or class indices, names
    and softmax probabilities)."""

    def load_context(self, context) -> None:
        with open(context.artifacts["config"]) as f:
            config = json.load(f)
        self.info = DatasetInfo.from_dict(config["dataset"])
        # Champions registered before image files were served have no "preprocessing".
        self.preprocessing = (Preprocessing.from_dict(config["preprocessing"])
                              if "preprocessing" in config
                              else Preprocessing.for_shape(self.info.shape))
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.classifier = NormalizingClassifier.from_weights(
            TrialParams.from_dict(config["hyperparameters"]), self.info, state)

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> np.ndarray | pd.DataFrame:
        """Classify the images of ``model_input`` (see the module docstring).

        The type hints are what MLflow reads: a DataFrame input is checked against the
        logged signature (the optional columns ``images`` and ``image``), not inferred from
        the hint.

        Args:
            params: ``{"output": "label" | "class_index" | "full"}``; default ``label``.

        Returns:
            ``label``: object array (N,) of class names; ``class_index``: int64 array (N,);
            ``full``: DataFrame with columns class_index, label, probabilities.

        Raises:
            BadRequest: the images are not what the model takes, or ``output`` is none of
                the above (HTTP 400 when served).
        """
        output = (params or {}).get("output") or DEFAULT_OUTPUT
        if output not in OUTPUTS:
            raise BadRequest(f"params: output {output!r} is not one of {', '.join(OUTPUTS)}")
        batch = self.unit_batch(model_input)
        probabilities = class_probabilities(self.classifier, batch)
        index = probabilities.argmax(axis=1).astype(np.int64)
        labels = np.array([self.info.class_names[i] for i in index], dtype=object)
        if output == "label":
            return labels
        if output == "class_index":
            return index
        return pd.DataFrame({"class_index": index, "label": labels,
                             "probabilities": list(probabilities.astype(np.float64))})

    def unit_batch(self, model_input: pd.DataFrame | dict[str, Any]) -> np.ndarray:
        """The pixels the network is given for ``model_input``: float32 (N, C, S, S) in
        [0, 1], from pixel arrays (column ``images``) or image files (column ``image``).

        Raises:
            BadRequest: no image, both columns, or images the model cannot take.
        """
        column, values = _column_of(model_input)
        try:
            if column == IMAGE_COLUMN:
                return files_to_unit_batch(values, self.preprocessing)
            return to_unit_batch(values, self.info.shape)
        except InvalidImages as exc:
            raise BadRequest(f"{exc}. {self.expected()}") from None

    def expected(self) -> str:
        shapes = " or ".join(str(s) for s in accepted_shapes(self.info.shape))
        return (f"Expected: 1 to {MAX_BATCH} {self.info.name} images per request, either pixel "
                f"arrays in column {PIXELS_COLUMN!r} ({{\"inputs\": {{\"{PIXELS_COLUMN}\": "
                f"[image, ...]}}}}), each {shapes}, integer pixels 0..255 or float pixels "
                f"0..1; or image files of any size in column {IMAGE_COLUMN!r} "
                f"({{\"dataframe_records\": [{{\"{IMAGE_COLUMN}\": \"<base64>\"}}, ...]}}), "
                f"at most {MAX_IMAGE_BYTES // 2**20} MiB each and "
                f"{MAX_REQUEST_BYTES // 2**20} MiB together")


def _column_of(model_input: Any) -> tuple[str, Any]:
    """(column name, its values): the one image column ``model_input`` fills.

    Raises:
        BadRequest: neither column is there, or both hold images.
    """
    if not isinstance(model_input, (dict, pd.DataFrame)):
        raise BadRequest(f"expected a DataFrame or a dict with a column {PIXELS_COLUMN!r} "
                         f"(pixel arrays) or {IMAGE_COLUMN!r} (image files), got "
                         f"{type(model_input).__name__}")
    filled = [c for c in (PIXELS_COLUMN, IMAGE_COLUMN) if c in model_input]
    if len(filled) == 2 and isinstance(model_input, pd.DataFrame):
        # Records of both kinds make a table with both columns, each row filling one.
        filled = [c for c in filled if not model_input[c].isna().all()] or filled
    if not filled:
        raise BadRequest(
            f"no image in the request: send pixel arrays in column {PIXELS_COLUMN!r} "
            f"({{\"inputs\": {{\"{PIXELS_COLUMN}\": [image, ...]}}}}; a bare {{\"inputs\": "
            f"[image, ...]}} list is read by MLflow as a table and lost) or base64-encoded "
            f"image files in column {IMAGE_COLUMN!r} "
            f"({{\"dataframe_records\": [{{\"{IMAGE_COLUMN}\": \"<base64>\"}}, ...]}})")
    if len(filled) > 1:
        raise BadRequest(f"send pixel arrays (column {PIXELS_COLUMN!r}) and image files "
                         f"(column {IMAGE_COLUMN!r}) in separate requests, not both in one")
    column = filled[0]
    values = model_input[column]
    if isinstance(values, pd.Series):
        values = list(values)
        # MLflow turns {"inputs": {"images": []}} into one row holding an empty list, and a
        # Python {"image": [file, ...]} into one row holding the list.
        if len(values) == 1 and isinstance(values[0], (list, np.ndarray)) and (
                column == IMAGE_COLUMN or not len(values[0])):
            values = list(values[0])
    return column, values


mlflow.models.set_model(ChampionModel())
