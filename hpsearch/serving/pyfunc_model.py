"""The served champion, as an MLflow "model from code".

MLflow copies this file into the logged model and runs it when the model is loaded (by
``mlflow models serve``, ``mlflow.pyfunc.load_model`` or ``hpsearch predict``). Loading then:

1. imports hpsearch's model, data set and image-checking code (shipped inside the model
   through ``code_paths``, so hpsearch need not be installed where it is served);
2. reads ``config.json`` (architecture, hyperparameters, data set facts) as JSON;
3. reads the weights with ``torch.load(weights_only=True)``, which only admits tensors and
   plain containers: no pickled Python objects are executed.

Input: a DataFrame with a column ``images``, one image per row, or a dict
``{"images": batch}`` whose batch is an array (N, ...) or a list of images (a bare array or
list fails MLflow's check against the logged signature, before the model sees it; the
scoring server's ``{"inputs": [image, ...]}`` becomes such a DataFrame). Integer pixels
0..255 or float pixels 0..1, in the layouts of :func:`hpsearch.serving.images.accepted_shapes`.

Output, chosen by the inference parameter ``output`` (declared in the signature's params;
``params={"output": ...}`` in Python, ``{"inputs": [...], "params": {"output": ...}}`` when
served):

- ``label`` (default): a 1-D array of class names, one per image, as MLflow's classifiers
  answer (the sklearn flavour's ``predict``); served as ``{"predictions": ["Ankle boot",
  ...]}``. So ``mlflow.models.evaluate(uri, data=df, targets="label",
  model_type="classifier")`` works with a column ``label`` of class names;
- ``class_index``: a 1-D int64 array of class indices;
- ``full``: a DataFrame, per row ``class_index`` (int), ``label`` (class name) and
  ``probabilities`` (softmax over all classes, in class-index order).

A bad request raises an MlflowException with INVALID_PARAMETER_VALUE, which the scoring
server answers with HTTP 400.
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
from hpsearch.serving.images import MAX_BATCH, InvalidImages, accepted_shapes, to_unit_batch

INPUT_COLUMN = "images"


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
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.classifier = NormalizingClassifier.from_weights(
            TrialParams.from_dict(config["hyperparameters"]), self.info, state)

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> np.ndarray | pd.DataFrame:
        """Classify the images of ``model_input`` (see the module docstring).

        The type hints are what MLflow reads: a DataFrame input is checked against the
        logged signature (column ``images``), not inferred from the hint.

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
        images = _images_of(model_input)
        try:
            batch = to_unit_batch(images, self.info.shape)
        except InvalidImages as exc:
            raise BadRequest(f"{exc}. {self.expected()}") from None
        probabilities = class_probabilities(self.classifier, batch)
        index = probabilities.argmax(axis=1).astype(np.int64)
        labels = np.array([self.info.class_names[i] for i in index], dtype=object)
        if output == "label":
            return labels
        if output == "class_index":
            return index
        return pd.DataFrame({"class_index": index, "label": labels,
                             "probabilities": list(probabilities.astype(np.float64))})

    def expected(self) -> str:
        shapes = " or ".join(str(s) for s in accepted_shapes(self.info.shape))
        return (f"Expected: 1 to {MAX_BATCH} {self.info.name} images, each {shapes}, integer "
                f"pixels 0..255 or float pixels 0..1, sent as {{\"inputs\": [image, ...]}}")


def _images_of(model_input):
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN not in model_input.columns:
            raise BadRequest(f"expected a column {INPUT_COLUMN!r}, got "
                             f"{list(model_input.columns)}")
        images = list(model_input[INPUT_COLUMN])
        # MLflow parses {"inputs": []} into one row holding an empty list.
        empty_row = len(images) == 1 and hasattr(images[0], "__len__") and not len(images[0])
        return [] if empty_row else images
    if isinstance(model_input, dict) and INPUT_COLUMN in model_input:
        return model_input[INPUT_COLUMN]
    return model_input


mlflow.models.set_model(ChampionModel())
