"""Registering a study's champion: the best trial's own weights (never retrained), evaluated
once on the test set, logged as an MLflow model and registered under the alias ``champion``.

Two models are logged on the parent run:

- ``model`` (registered): a pyfunc "model from code" (``pyfunc_model.py``) that takes raw
  images (integer 0..255 or float 0..1, several layouts) and answers class index, class name
  and probabilities; its weights are a state dict read with ``weights_only=True``;
- ``network``: the :class:`NormalizingClassifier` (normalisation + network), through
  ``mlflow.pytorch.log_model`` in MLflow's ``pt2`` format (a ``torch.export`` program), for
  users who want a torch module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import AnyType, Array
from torch import nn

import hpsearch
from hpsearch.data_utils import ArraySplit, DatasetInfo
from hpsearch.errors import HpsearchError
from hpsearch.params import TrialParams
from hpsearch.serving.classifier import NormalizingClassifier
from hpsearch.serving.images import MAX_BATCH, accepted_shapes
from hpsearch.serving.uris import CHAMPION_ALIAS
from hpsearch.tracking.provenance import using_tracking_uri
from hpsearch.tracking.report import log_prediction_grid
from hpsearch.tracking.runs import CHECKPOINT_PATH, StudyTracker
from hpsearch.training.device import autocast_dtype
from hpsearch.training.loader import make_loader
from hpsearch.training.loop import EvalResult, evaluate

__all__ = ["Registration", "register_champion"]
# The pyfunc model from code; MLflow runs this file when the model is loaded.
SERVING_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")


@dataclass(frozen=True)
class Registration:
    """A registered model version.

    Attributes:
        name: registered model name.
        version: its version number, as MLflow returns it (a string).
        trial_number: the Optuna trial whose weights it holds.
        test_accuracy: accuracy on the data set's test split, in [0, 1].
        newly_registered: False when this version was already the champion of this trial.
    """

    name: str
    version: str
    trial_number: int
    test_accuracy: float
    newly_registered: bool = True


def register_champion(*, study: optuna.Study, info: DatasetInfo, test: ArraySplit,
                      tracker: StudyTracker, register_name: str, device: torch.device,
                      force: bool = False) -> Registration:
    """Evaluate the best trial's model on the test set, log it and register it as champion.

    If the alias already points at a version holding this study's best trial, nothing new
    is registered and that version is returned, unless ``force`` (``hpsearch register``).

    Raises:
        HpsearchError: the study has no complete trial, or its best trial kept no weights.
    """
    try:
        best = study.best_trial
    except ValueError:
        raise HpsearchError(
            f"study {study.study_name!r} has no complete trial to register") from None
    existing = _current_champion(tracker, register_name, study.study_name, best.number)
    if existing is not None and not force:
        return existing
    if not best.user_attrs.get("checkpoint"):
        raise HpsearchError(f"trial {best.number} of study {study.study_name!r} kept no weights")
    classifier = _load_trial_classifier(best, info, tracker)
    # Measured as the trials' validation was: under the device's autocast (bf16 on CUDA
    # and on CPUs with native bf16), so test and validation figures compare.
    amp_dtype = autocast_dtype(device)
    result = evaluate(classifier.network.to(device), make_loader(test, info, device),
                      num_classes=info.num_classes, device=device, amp_dtype=amp_dtype)
    tracker.log_test_evaluation(result, info.class_names, trial_number=best.number)
    _log_test_grids(tracker, result, test, info)
    classifier = classifier.cpu().eval()
    with using_tracking_uri(tracker.tracking_uri), _mlflow_prints_kept(), \
            mlflow.start_run(run_id=tracker.parent_run_id):
        _log_network(classifier, test)
        version = _log_serving_model(classifier.network, best, info, test, register_name)
    _describe_version(tracker, register_name, version, best, info, study.study_name,
                      result.accuracy, precision=_precision(amp_dtype))
    tracker.client.set_registered_model_alias(register_name, CHAMPION_ALIAS, version)
    return Registration(register_name, version, best.number, result.accuracy)


@contextlib.contextmanager
def _mlflow_prints_kept() -> Iterator[None]:
    """Keep MLflow's prints on stderr ("Successfully registered model ...", "Created
    version ...") out of the progress display; the summary says what was registered. They
    are shown after all if the block fails."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise


def _log_test_grids(tracker: StudyTracker, result: EvalResult, test: ArraySplit,
                    info: DatasetInfo) -> None:
    """The champion's prediction grids on the test set, from its test evaluation."""
    for artifact_file, title, mistakes_only in (
            ("test_sample_predictions.png", "test set: first images", False),
            ("test_worst_mistakes.png", "test set: most confident mistakes", True)):
        log_prediction_grid(tracker.client, tracker.parent_run_id, test.images, test.labels,
                            result.predicted, result.confidence, info.class_names,
                            artifact_file=artifact_file, title=title,
                            mistakes_only=mistakes_only)


def _load_trial_classifier(trial: optuna.trial.FrozenTrial, info: DatasetInfo,
                           tracker: StudyTracker) -> NormalizingClassifier:
    path = mlflow.artifacts.download_artifacts(
        run_id=trial.user_attrs["mlflow_run_id"], artifact_path=CHECKPOINT_PATH,
        tracking_uri=tracker.tracking_uri)
    return NormalizingClassifier.from_weights(
        TrialParams.from_dict(trial.user_attrs["hyperparameters"]), info,
        torch.load(path, map_location="cpu", weights_only=True))


def _requirements() -> list[str]:
    # Pinned, so MLflow need not load the model in a subprocess to infer them.
    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
            f"pandas=={pd.__version__}", f"mlflow=={mlflow.__version__}"]


def _log_network(classifier: NormalizingClassifier, test: ArraySplit) -> None:
    """The classifier (float pixels in [0, 1], (N, C, H, W) -> logits) in pt2 format."""
    # Batch > 1 so MLflow's export marks the batch dimension dynamic.
    example = test.images[:4].astype(np.float32) / 255.0
    with torch.no_grad():
        logits = classifier(torch.from_numpy(example)).numpy()
    mlflow.pytorch.log_model(classifier, name="network", input_example=example,
                             signature=infer_signature(example, logits),
                             serialization_format="pt2", pip_requirements=_requirements())


def _log_serving_model(network: nn.Module, trial: optuna.trial.FrozenTrial, info: DatasetInfo,
                       test: ArraySplit, name: str) -> str:
    """Log the pyfunc model from code with its weights and config; register it."""
    with tempfile.TemporaryDirectory() as tmp:
        weights, config = Path(tmp, "weights.pt"), Path(tmp, "config.json")
        torch.save(network.state_dict(), weights)
        config.write_text(json.dumps({
            "dataset": dataclasses.asdict(info),
            "hyperparameters": trial.user_attrs["hyperparameters"],
        }, indent=2))
        model_info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVING_MODEL_FILE),
            artifacts={"weights": str(weights), "config": str(config)},
            # Ship hpsearch's code with the model, so it loads where hpsearch is not installed.
            code_paths=[str(Path(hpsearch.__file__).parent)],
            signature=serving_signature(),
            # Two test images as nested integer lists: exactly what a client posts.
            input_example=pd.DataFrame({"images": [img[0].tolist() for img in test.images[:2]]}),
            metadata=serving_metadata(info),
            registered_model_name=name,
            pip_requirements=_requirements(),
        )
    return str(model_info.registered_model_version)


def serving_signature() -> ModelSignature:
    """One image per row in column ``images`` (any accepted layout, checked by the model);
    per row: class index, class name and the probabilities of all classes."""
    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), "images")]),
        outputs=Schema([ColSpec(DataType.long, "class_index"), ColSpec(DataType.string, "label"),
                        ColSpec(Array(DataType.double), "probabilities")]),
    )


def serving_metadata(info: DatasetInfo) -> dict:
    """What the logged model's MLmodel file says of its inputs."""
    return {
        "dataset": info.name,
        "class_names": list(info.class_names),
        "in_channels": info.in_channels,
        "accepted_image_shapes": [list(s) for s in accepted_shapes(info)],
        "pixel_values": "integers 0..255 or floats 0..1",
        "max_batch": MAX_BATCH,
    }


def _precision(amp_dtype: torch.dtype | None) -> str:
    """``bfloat16 autocast`` or ``float32``: how the test evaluation computed."""
    return f"{str(amp_dtype).removeprefix('torch.')} autocast" if amp_dtype else "float32"


def _describe_version(tracker: StudyTracker, name: str, version: str,
                      trial: optuna.trial.FrozenTrial, info: DatasetInfo, study_name: str,
                      test_accuracy: float, *, precision: str) -> None:
    tags = {
        "study": study_name,
        "trial": str(trial.number),
        "trial_run_id": trial.user_attrs["mlflow_run_id"],
        "dataset": info.name,
        "class_names": json.dumps(list(info.class_names)),
        "test_accuracy": f"{test_accuracy:.4f}",
        "test_precision": precision,
        "val_value": repr(trial.value),
    }
    for key, value in tags.items():
        tracker.client.set_model_version_tag(name, version, key, value)
    tracker.client.update_model_version(
        name, version,
        description=(
            f"{info.name} classifier from trial {trial.number} of study {study_name}; test "
            f"accuracy {test_accuracy:.4f}. Input: {{\"inputs\": [image, ...]}}, 1 to "
            f"{MAX_BATCH} images, each "
            f"{' or '.join(str(s) for s in accepted_shapes(info))}, integer pixels 0..255 or "
            f"float pixels 0..1. From Python: mlflow.pyfunc.load_model(uri).predict("
            f"{{\"images\": batch}}) with an array batch (N, ...), or a DataFrame with a column "
            f"images. Output per image: class_index, label (one of "
            f"{', '.join(info.class_names)}) and probabilities of all classes."))


def _current_champion(tracker: StudyTracker, name: str, study_name: str,
                      trial_number: int) -> Registration | None:
    try:
        version = tracker.client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:  # no such model or alias yet
        return None
    tags = version.tags
    if tags.get("study") != study_name or tags.get("trial") != str(trial_number):
        return None
    return Registration(name, str(version.version), trial_number,
                        float(tags.get("test_accuracy", "nan")), newly_registered=False)
