"""Registering a study's champion: the best trial's own weights (never retrained), evaluated
once on the test set, logged as an MLflow model and registered under the alias ``champion``.

The model is logged with ``mlflow.pytorch.log_model`` in MLflow's ``pt2`` format: a
``torch.export`` program whose loading reads tensors and a graph, not pickled Python objects,
so serving it needs neither hpsearch's code nor unpickling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import mlflow
import numpy as np
import optuna
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from torch import nn

from hpsearch.data_utils import ArraySplit, DatasetInfo
from hpsearch.errors import HpsearchError
from hpsearch.search.objective import build_network, make_loader
from hpsearch.search.tracking import CHECKPOINT_PATH, StudyTracker
from hpsearch.search.train import evaluate

__all__ = ["CHAMPION_ALIAS", "ImageClassifier", "Registration", "register_champion"]

CHAMPION_ALIAS = "champion"


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


class ImageClassifier(nn.Module):
    """A trained network with its input normalisation built in.

    Input: float32 pixel values in [0, 1], shape (N, C, H, W). Output: logits (N, classes).
    """

    def __init__(self, network: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network((x - self.mean) / self.std)


def register_champion(*, study: optuna.Study, info: DatasetInfo, test: ArraySplit,
                      tracker: StudyTracker, register_name: str,
                      device: torch.device) -> Registration:
    """Evaluate the best trial's model on the test set, log it and register it as champion.

    If the alias already points at a version holding this study's best trial, nothing new
    is registered and that version is returned.

    Raises:
        HpsearchError: the study has no complete trial, or its best trial kept no weights.
    """
    try:
        best = study.best_trial
    except ValueError:
        raise HpsearchError(f"study {study.study_name!r} has no complete trial to register")
    existing = _current_champion(tracker, register_name, study.study_name, best.number)
    if existing is not None:
        return existing
    if not best.user_attrs.get("checkpoint"):
        raise HpsearchError(f"trial {best.number} of study {study.study_name!r} kept no weights")
    network = _load_trial_network(best, info, tracker)
    result = evaluate(network.to(device), make_loader(test, info, device),
                      num_classes=info.num_classes, device=device)
    tracker.log_test_evaluation(result, info.class_names, trial_number=best.number)
    classifier = ImageClassifier(network.cpu(), info.mean, info.std).eval()
    version = _log_and_register(classifier, test, tracker, register_name)
    _describe_version(tracker, register_name, version, best, info, study.study_name,
                      result.accuracy)
    tracker.client.set_registered_model_alias(register_name, CHAMPION_ALIAS, version)
    return Registration(register_name, version, best.number, result.accuracy)


def _load_trial_network(trial: optuna.trial.FrozenTrial, info: DatasetInfo,
                        tracker: StudyTracker) -> nn.Module:
    path = mlflow.artifacts.download_artifacts(
        run_id=trial.user_attrs["mlflow_run_id"], artifact_path=CHECKPOINT_PATH,
        tracking_uri=tracker.tracking_uri)
    network = build_network(trial.user_attrs["hyperparameters"], info)
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return network.eval()


def _log_and_register(classifier: ImageClassifier, test: ArraySplit, tracker: StudyTracker,
                      name: str) -> str:
    # Batch > 1 so MLflow's export marks the batch dimension dynamic.
    example = test.images[:4].astype(np.float32) / 255.0
    with torch.no_grad():
        logits = classifier(torch.from_numpy(example)).numpy()
    mlflow.set_tracking_uri(tracker.tracking_uri)
    with mlflow.start_run(run_id=tracker.parent_run_id):
        info = mlflow.pytorch.log_model(
            classifier,
            name="model",
            input_example=example,
            signature=infer_signature(example, logits),
            registered_model_name=name,
            serialization_format="pt2",
            # Pinned, so MLflow need not load the model in a subprocess to infer them.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"],
        )
    return str(info.registered_model_version)


def _describe_version(tracker: StudyTracker, name: str, version: str,
                      trial: optuna.trial.FrozenTrial, info: DatasetInfo, study_name: str,
                      test_accuracy: float) -> None:
    tags = {
        "study": study_name,
        "trial": str(trial.number),
        "trial_run_id": trial.user_attrs["mlflow_run_id"],
        "dataset": info.name,
        "test_accuracy": f"{test_accuracy:.4f}",
        "val_value": repr(trial.value),
    }
    for key, value in tags.items():
        tracker.client.set_model_version_tag(name, version, key, value)
    tracker.client.update_model_version(
        name, version,
        description=(f"{info.name} classifier from trial {trial.number} of study {study_name}; "
                     f"test accuracy {test_accuracy:.4f}. Input: float32 pixels in [0, 1], "
                     f"(N, {info.in_channels}, {info.image_size}, {info.image_size}); "
                     f"output: logits over {', '.join(info.class_names)}."))


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
