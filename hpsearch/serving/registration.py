"""Registering a study's champion: the best trial's own weights (never retrained), evaluated
on the test set, logged as an MLflow model and registered under the alias ``champion``.

Two models are logged on the parent run:

- ``model`` (registered): a pyfunc "model from code" (``pyfunc_model.py``) that takes pixel
  arrays (integer 0..255 or float 0..1, several layouts) or base64-encoded image files of any
  size (preprocessed as the training cache of a folder of images is) and answers each image's
  class name
  (or, with the inference parameter ``output``, class indices, or class index, name and
  probabilities); its weights are a state dict read with ``weights_only=True``;
- ``network``: the :class:`NormalizingClassifier` (normalisation + network), through
  ``mlflow.pytorch.log_model`` in MLflow's ``pt2`` format (a ``torch.export`` program), for
  users who want a torch module; left out when ``$HPSEARCH_EXPORT_NETWORK`` is ``0``
  (:mod:`hpsearch.defaults`).

Registration is idempotent per champion trial: the model version is created with the tags
that identify it (study, trial) and ``hpsearch.registration`` = ``incomplete``, and marked
``complete`` only after its description and alias are set. A process killed in between leaves
an incomplete version, which the next registration of the same trial finishes instead of
adding another.
"""

from __future__ import annotations

import contextlib
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
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from torch import nn

import hpsearch
from hpsearch import defaults
from hpsearch._testhooks import pause
from hpsearch.data_utils import ArraySplit, DatasetInfo
from hpsearch.errors import HpsearchError
from hpsearch.params import TrialParams
from hpsearch.serving.classifier import (
    NormalizingClassifier,
    class_probabilities,
)
from hpsearch.serving.image_files import (
    MAX_IMAGE_BYTES,
    MAX_REQUEST_BYTES,
    Preprocessing,
)
from hpsearch.serving.images import MAX_BATCH, accepted_shapes, to_unit_batch
from hpsearch.serving.signature import serving_input_example, serving_metadata, serving_signature
from hpsearch.serving.uris import CHAMPION_ALIAS
from hpsearch.tracking.provenance import using_tracking_uri
from hpsearch.tracking.report import log_prediction_grid
from hpsearch.tracking.runs import CHECKPOINT_PATH, StudyTracker
from hpsearch.training.device import autocast_dtype
from hpsearch.training.loader import DeviceSplit, make_loader
from hpsearch.training.loop import EvalResult, evaluate
from hpsearch.training.resize import downsample

__all__ = ["Registration", "register_champion"]
# The pyfunc model from code; MLflow runs this file when the model is loaded.
SERVING_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
# Model version tag: "incomplete" from the version's creation until its description and
# alias are set, then "complete".
REGISTRATION_TAG = "hpsearch.registration"
# The version tag test_precision: how test_accuracy was computed.
SERVED_PRECISION = "float32 on the CPU, as served"


@dataclass(frozen=True)
class Registration:
    """A registered model version.

    Attributes:
        name: registered model name.
        version: its version number, as MLflow returns it (a string).
        trial_number: the Optuna trial whose weights it holds.
        test_accuracy: accuracy on the data set's test split, in [0, 1], of the model as it
            is served (float32 on the CPU).
        test_accuracy_autocast: the same under the training device's autocast (bf16), as
            the trials were validated; None where the device computes in float32.
        newly_registered: False when this version was already the champion of this trial.
        resumed: True when this run finished a version that an interrupted registration
            had created, instead of creating another.
    """

    name: str
    version: str
    trial_number: int
    test_accuracy: float
    test_accuracy_autocast: float | None = None
    newly_registered: bool = True
    resumed: bool = False


def register_champion(*, study: optuna.Study, info: DatasetInfo, test: ArraySplit,
                      tracker: StudyTracker, register_name: str, device: torch.device,
                      force: bool = False) -> Registration:
    """Evaluate the best trial's model on the test set, log it and register it as champion.

    If the alias already points at a complete version holding this study's best trial,
    nothing new is registered and that version is returned, unless ``force`` (``hpsearch
    register``). An incomplete version of the best trial (its registration was killed) is
    finished, also with ``force``, rather than registered again.

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
    result, autocast_accuracy = _test_evaluation(classifier, test, info, device)
    tracker.log_test_evaluation(result, info.class_names, trial_number=best.number,
                                autocast_accuracy=autocast_accuracy)
    _log_test_grids(tracker, result, test, info)
    version = _incomplete_version(tracker, register_name, study.study_name, best.number)
    resumed = version is not None
    if version is None:
        with _parent_as_active_run(tracker), _mlflow_prints_kept():
            if defaults.export_network():  # seconds of torch.export; serving needs none
                _log_network(classifier, test)
            model_info = _log_serving_model(classifier.network, best, info, test)
        pause("registration.models_logged")
        version = _create_version(tracker, register_name, model_info, best, study.study_name)
        pause("registration.version_created")
    _describe_version(tracker, register_name, version, best, info, study.study_name,
                      result.accuracy, autocast=(autocast_accuracy, autocast_dtype(device)))
    tracker.client.set_registered_model_alias(register_name, CHAMPION_ALIAS, version)
    tracker.client.set_model_version_tag(register_name, version, REGISTRATION_TAG, "complete")
    return Registration(register_name, version, best.number, result.accuracy,
                        test_accuracy_autocast=autocast_accuracy, resumed=resumed)


def _test_evaluation(classifier: NormalizingClassifier, test: ArraySplit, info: DatasetInfo,
                     device: torch.device) -> tuple[EvalResult, float | None]:
    """The test evaluation of the model as it is served, and its accuracy under the
    device's autocast where the device has one.

    The reported test accuracy (and loss, confusion matrix, prediction grids) is the served
    model's, computed by the served model's own code (float32 on the CPU): what a user gets
    from the registered model, so ``mlflow.models.evaluate`` on the same images gives the
    same figure. Trials were validated under the device's autocast (bf16 on CUDA and on
    CPUs with native bf16), whose predictions differ from float32's on near ties; that
    figure, the one comparable with the validation accuracy, is kept beside it.
    """
    amp_dtype = autocast_dtype(device)
    autocast_accuracy = None
    if amp_dtype is not None:
        split = DeviceSplit.of(test, device)
        if classifier.input_size is not None:  # as the trial's images were
            split = DeviceSplit(downsample(split.images, classifier.input_size), split.labels)
        autocast_accuracy = evaluate(
            classifier.network.to(device),
            make_loader(split, device, normalization=classifier.normalization),
            num_classes=info.num_classes, device=device, amp_dtype=amp_dtype).accuracy
    return _evaluate_as_served(classifier.cpu().eval(), test, info), autocast_accuracy


def _evaluate_as_served(classifier: NormalizingClassifier, test: ArraySplit,
                        info: DatasetInfo) -> EvalResult:
    """``test`` through :func:`class_probabilities` in requests of at most ``MAX_BATCH``
    images, checked and scaled as the served model does (:func:`to_unit_batch`).

    Returns:
        Accuracy, cross-entropy (nats, from the served probabilities), confusion matrix,
        and each image's predicted class and its probability.
    """
    probabilities = np.concatenate([
        class_probabilities(classifier, to_unit_batch(test.images[start:start + MAX_BATCH],
                                                      info.shape))
        for start in range(0, len(test.labels), MAX_BATCH)])
    predicted = probabilities.argmax(axis=1)
    labels, n = test.labels, info.num_classes
    true_class = probabilities[np.arange(len(labels)), labels].astype(np.float64)
    return EvalResult(
        loss=float(-np.log(np.maximum(true_class, np.finfo(np.float32).tiny)).mean()),
        accuracy=float((predicted == labels).mean()),
        confusion=np.bincount(labels * n + predicted, minlength=n * n).reshape(n, n),
        predicted=predicted, confidence=probabilities.max(axis=1))


@contextlib.contextmanager
def _parent_as_active_run(tracker: StudyTracker) -> Iterator[None]:
    """The parent run as MLflow's active run, for the fluent ``log_model`` (it logs to the
    active run only). Leaving ``mlflow.start_run`` ends the run FINISHED, but the parent run
    is this process's until :meth:`StudyTracker.end_parent`: it is set RUNNING again, so a
    process killed later leaves it RUNNING, and the next run closes it as a dead process's
    (:func:`~hpsearch.tracking.orphans.close_orphaned_runs`)."""
    with using_tracking_uri(tracker.tracking_uri), \
            mlflow.start_run(run_id=tracker.parent_run_id):
        yield
    tracker.client.update_run(tracker.parent_run_id, status="RUNNING")


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
    # Pinned, so MLflow need not load the model in a subprocess to infer them. Pillow decodes
    # the image files the model is sent.
    import PIL

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
            f"pandas=={pd.__version__}", f"mlflow=={mlflow.__version__}",
            f"pillow=={PIL.__version__}"]


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
                       test: ArraySplit) -> ModelInfo:
    """Log the pyfunc model from code with its weights and config (not registered yet)."""
    with tempfile.TemporaryDirectory() as tmp:
        weights, config = Path(tmp, "weights.pt"), Path(tmp, "config.json")
        torch.save(network.state_dict(), weights)
        config.write_text(json.dumps({
            "dataset": info.to_dict(),
            "hyperparameters": trial.user_attrs["hyperparameters"],
            # What hpsearch.data_utils.own_images.preprocess_image needs for image files.
            "preprocessing": Preprocessing.for_shape(info.shape).to_dict(),
        }, indent=2))
        model_info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVING_MODEL_FILE),
            artifacts={"weights": str(weights), "config": str(config)},
            # Ship hpsearch's code with the model, so it loads where hpsearch is not installed.
            code_paths=[str(Path(hpsearch.__file__).parent)],
            signature=serving_signature(),
            # Two test images as base64-encoded PNG files, as a client sends photos (MLflow
            # writes serving_input_example.json from it and checks that the model takes it).
            input_example=serving_input_example(test.images[:2]),
            metadata=serving_metadata(info),
            pip_requirements=_requirements(),
        )
    return model_info


def _create_version(tracker: StudyTracker, name: str, model_info: ModelInfo,
                    trial: optuna.trial.FrozenTrial, study_name: str) -> str:
    """Register the logged model as a new version of ``name``, created with the tags that
    identify it (study, trial) and marked incomplete; returns its version number."""
    try:
        tracker.client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    # MLflow's registry looks the logged model up through the global tracking URI.
    with using_tracking_uri(tracker.tracking_uri):
        version = tracker.client.create_model_version(
            name, source=model_info.model_uri, run_id=tracker.parent_run_id,
            model_id=model_info.model_id,
            tags={"study": study_name, "trial": str(trial.number),
                  "trial_run_id": trial.user_attrs["mlflow_run_id"],
                  REGISTRATION_TAG: "incomplete"})
    return str(version.version)


def _incomplete_version(tracker: StudyTracker, name: str, study_name: str,
                        trial_number: int) -> str | None:
    """The newest version of ``name`` holding this study's trial whose registration did not
    finish (tag :data:`REGISTRATION_TAG` = ``incomplete``), or None."""
    if "'" in name and '"' in name:  # no quoting MLflow's filter accepts: look at all
        versions = tracker.client.search_model_versions()
    else:
        quote = '"' if "'" in name else "'"
        versions = tracker.client.search_model_versions(f"name = {quote}{name}{quote}")
    found = [int(v.version) for v in versions
             if v.name == name and v.tags.get("study") == study_name
             and v.tags.get("trial") == str(trial_number)
             and v.tags.get(REGISTRATION_TAG) == "incomplete"]
    return str(max(found)) if found else None


def _describe_version(tracker: StudyTracker, name: str, version: str,
                      trial: optuna.trial.FrozenTrial, info: DatasetInfo, study_name: str,
                      test_accuracy: float, *,
                      autocast: tuple[float | None, torch.dtype | None]) -> None:
    """The version's tags and description. ``autocast``: the test accuracy under the
    training device's autocast and that dtype, or Nones."""
    tags = {
        "study": study_name,
        "trial": str(trial.number),
        "trial_run_id": trial.user_attrs["mlflow_run_id"],
        "dataset": info.name,
        "class_names": json.dumps(list(info.class_names)),
        "test_accuracy": f"{test_accuracy:.4f}",
        "test_precision": SERVED_PRECISION,
        "val_value": repr(trial.value),
    }
    autocast_accuracy, amp_dtype = autocast
    if autocast_accuracy is not None:
        tags["test_accuracy_autocast"] = f"{autocast_accuracy:.4f}"
        tags["test_autocast_dtype"] = str(amp_dtype).removeprefix("torch.")
    for key, value in tags.items():
        tracker.client.set_model_version_tag(name, version, key, value)
    tracker.client.update_model_version(
        name, version,
        description=(
            f"{info.name} classifier from trial {trial.number} of study {study_name}; test "
            f"accuracy {test_accuracy:.4f} ({SERVED_PRECISION}). Input: 1 to {MAX_BATCH} "
            f"images per request, either image files of any size (PNG, JPEG, WEBP, BMP, GIF), "
            f"base64-encoded, in column image ({{\"dataframe_records\": [{{\"image\": "
            f"\"<base64>\"}}, ...]}}; at most {MAX_IMAGE_BYTES // 2**20} MiB each and "
            f"{MAX_REQUEST_BYTES // 2**20} MiB together), resized to "
            f"{info.shape.size} px as the training images were; or pixel arrays in column "
            f"images ({{\"inputs\": {{\"images\": [image, ...]}}}}), each "
            f"{' or '.join(str(s) for s in accepted_shapes(info.shape))}, integer pixels "
            f"0..255 or float pixels 0..1. From Python: mlflow.pyfunc.load_model(uri).predict("
            f"{{\"images\": batch}}) with an array batch (N, ...), or a DataFrame with a column "
            f"images or image. Output: one class name per image (one of "
            f"{', '.join(info.class_names)}), so mlflow.models.evaluate(uri, data=df, "
            f"targets=\"label\", model_type=\"classifier\") takes a column label of class "
            f"names. The inference parameter output chooses another answer: "
            f"{{\"params\": {{\"output\": \"class_index\"}}}} the class indices, "
            f"{{\"output\": \"full\"}} per image class_index, label and the probabilities "
            f"of all classes."))


def _current_champion(tracker: StudyTracker, name: str, study_name: str,
                      trial_number: int) -> Registration | None:
    try:
        version = tracker.client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:  # no such model or alias yet
        return None
    tags = version.tags
    if (tags.get("study") != study_name or tags.get("trial") != str(trial_number)
            or tags.get(REGISTRATION_TAG) == "incomplete"):
        return None
    autocast = tags.get("test_accuracy_autocast")
    return Registration(name, str(version.version), trial_number,
                        float(tags.get("test_accuracy", "nan")),
                        test_accuracy_autocast=float(autocast) if autocast else None,
                        newly_registered=False)
