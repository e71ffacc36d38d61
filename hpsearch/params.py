"""A trial's hyperparameters, typed: what a study samples and what the model builders, the
objective, registration and serving read. Imports nothing but the standard library."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["HYPERPARAMETERS", "OPTIMIZERS", "TrialParams"]

OPTIMIZERS = ("adamw", "sgd")  # see hpsearch.training.optim.build_optimizer


@dataclass(frozen=True)
class TrialParams:
    """The hyperparameters of one trial.

    Attributes:
        lr: peak learning rate of the one-cycle schedule.
        batch_size: training images per optimizer step.
        depth: blocks (cnn, vgg), blocks per stage (resnet), hidden layers (mlp).
        dropout: dropout probability before the classifier, in [0, 1).
        arch: a name from :func:`hpsearch.models.list_models`.
        width: channels of the first stage (conv nets); mlp hidden units / 8.
        optimizer: ``adamw`` or ``sgd`` (Nesterov momentum 0.9).
        weight_decay: decoupled (adamw) or L2 (sgd) weight decay.
        label_smoothing: cross-entropy label smoothing (Szegedy et al. 2016), in [0, 1).
    """

    lr: float
    batch_size: int
    depth: int
    dropout: float
    arch: str
    width: int = 32
    optimizer: str = "adamw"
    weight_decay: float = 5.0e-4
    label_smoothing: float = 0.0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrialParams:
        """The parameters of a mapping holding at least the required names; other keys
        (for example Optuna's names of conditional parameters) are ignored.

        Raises:
            KeyError: a required hyperparameter is missing; the message names it.
        """
        missing = [n for n, default in HYPERPARAMETERS.items()
                   if default is None and n not in values]
        if missing:
            raise KeyError(f"missing hyperparameters: {', '.join(missing)}")
        return cls(**{n: values[n] for n in HYPERPARAMETERS if n in values})

    def to_dict(self) -> dict[str, Any]:
        """``{name: value}`` in field order: what MLflow logs as the trial's params."""
        return dataclasses.asdict(self)


# Each hyperparameter with the value used when a spec leaves it out; None marks the ones
# every search space must name.
HYPERPARAMETERS: dict[str, Any] = {
    f.name: None if f.default is dataclasses.MISSING else f.default
    for f in dataclasses.fields(TrialParams)
}
