"""A registered champion without a study's training: a one-trial Optuna study whose trial
holds an untrained network's weights, registered by hpsearch's own
:func:`~hpsearch.serving.registration.register_champion` (test evaluation, the logged pyfunc
model with its signature and input example, the version, its alias). For serving tests that
need a registered model of a given image shape in seconds."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch

from hpsearch.data_utils import ArraySplit, DatasetInfo
from hpsearch.models import build_network
from hpsearch.params import TrialParams
from hpsearch.serving.registration import Registration, register_champion
from hpsearch.tracking.runs import StudyTracker, TrialRun

# A one-layer MLP of width 16: the smallest network of every image shape.
PARAMS = TrialParams(lr=1e-3, batch_size=32, dropout=0.0, arch="mlp", depth=1, width=2)


@dataclass(frozen=True)
class Champion:
    tracking_uri: str
    name: str
    registration: Registration
    info: DatasetInfo
    run_id: str  # the parent run holding the logged model

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.registration.version}"


def register_untrained_champion(folder: Path, info: DatasetInfo, test: ArraySplit, *,
                                name: str, seed: int = 0) -> Champion:
    """Register an untrained network for ``info`` as the champion ``name`` in a sqlite
    store under ``folder`` (its artifacts too), evaluated on ``test``."""
    folder.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    with contextlib.chdir(folder):  # MLflow puts a sqlite store's artifacts in ./mlruns
        return _register(tracking_uri, info, test, name, seed)


def _register(tracking_uri: str, info: DatasetInfo, test: ArraySplit, name: str,
              seed: int) -> Champion:
    tracker = StudyTracker(tracking_uri=tracking_uri, study_name=name, system_metrics=False)
    tracker.start_parent(params={}, spec_yaml=None)
    torch.manual_seed(seed)
    network = build_network(PARAMS, info)
    trial_run = tracker.client.create_run(tracker.experiment_id, run_name="trial-0")
    TrialRun(tracker.client, trial_run.info.run_id).log_checkpoint(network)
    tracker.client.set_terminated(trial_run.info.run_id)
    study = optuna.create_study(direction="maximize", study_name=name)
    trial = study.ask()
    trial.set_user_attr("checkpoint", True)
    trial.set_user_attr("mlflow_run_id", trial_run.info.run_id)
    trial.set_user_attr("hyperparameters", PARAMS.to_dict())
    study.tell(trial, 0.5)
    registration = register_champion(study=study, info=info, test=test, tracker=tracker,
                                     register_name=name, device=torch.device("cpu"))
    tracker.end_parent()
    return Champion(tracking_uri, name, registration, info, tracker.parent_run_id)


def random_split(info: DatasetInfo, n: int = 8, seed: int = 0) -> ArraySplit:
    """``n`` random uint8 images of ``info``'s shape with labels cycling through its
    classes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *info.shape.as_tuple()), dtype=np.uint8)
    return ArraySplit(images, np.arange(n, dtype=np.int64) % info.num_classes)
