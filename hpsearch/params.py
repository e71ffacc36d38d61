"""A trial's hyperparameters, typed: what a study samples and what the model builders, the
objective, registration and serving read. Imports nothing but the standard library."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CLASS_WEIGHTS", "DATA_DEFAULT_HYPERPARAMETERS", "FAMILY_HYPERPARAMETERS",
           "FREEZE_WORDS", "HYPERPARAMETERS", "OPT_IN_HYPERPARAMETERS", "OPTIMIZERS",
           "TrialParams"]

OPTIMIZERS = ("adamw", "sgd")  # see hpsearch.training.optim.build_optimizer
# How the loss weighs the classes: "none" (every image alike) or "balanced" (inverse class
# frequency of the training split, scikit-learn's class_weight="balanced").
CLASS_WEIGHTS = ("none", "balanced")
# `freeze` takes one of these words or a number of final stages left trainable (an int >= 0).
FREEZE_WORDS = ("none", "backbone")


@dataclass(frozen=True)
class TrialParams:
    """The hyperparameters of one trial.

    Attributes:
        lr: peak learning rate of the one-cycle schedule (the head's, for a backbone).
        batch_size: training images per optimizer step.
        depth: blocks (cnn, vgg), blocks per stage (resnet), hidden layers (mlp); None for
            an architecture without depth (the pretrained backbones).
        dropout: dropout probability before the classifier, in [0, 1).
        arch: a name from :func:`hpsearch.models.list_models`.
        width: channels of the first stage (conv nets); mlp hidden units / 8; None for an
            architecture without width.
        optimizer: ``adamw`` or ``sgd`` (Nesterov momentum 0.9).
        weight_decay: decoupled (adamw) or L2 (sgd) weight decay.
        label_smoothing: cross-entropy label smoothing (Szegedy et al. 2016), in [0, 1).
        pretrained: a backbone starts from its ImageNet weights (True) or from a random
            initialisation (False); None for a from-scratch family.
        freeze: a backbone's parts that do not train: ``"none"``, ``"backbone"`` (only the
            new head trains) or an int N, the number of final stages left trainable (see
            ``hpsearch.models.families.torchvision_backbones``); None for a from-scratch
            family.
        backbone_lr_mult: a backbone's learning rate as a fraction of the head's, in (0, 1];
            None for a from-scratch family.
        class_weights: ``"balanced"``: the cross-entropy weighs each class by the inverse of
            its frequency in the training split; ``"none"``: every image alike. None where
            the spec names it nowhere (the same as ``"none"``, and not logged).
        image_size: the side, in pixels, the trial's images are downsampled to on the
            device (antialiased) before the network sees them, at most the data set's
            size; None: the data set's size, as stored.
    """

    lr: float
    batch_size: int
    dropout: float
    arch: str
    depth: int | None = None
    width: int | None = None
    optimizer: str = "adamw"
    weight_decay: float = 5.0e-4
    label_smoothing: float = 0.0
    pretrained: bool | None = None
    freeze: str | int | None = None
    backbone_lr_mult: float | None = None
    class_weights: str | None = None
    image_size: int | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrialParams:
        """The parameters of a mapping holding at least ``lr``, ``batch_size``, ``dropout``
        and ``arch``; other keys (for example Optuna's names of conditional parameters) are
        ignored, so a trial recorded before a hyperparameter existed still reads.

        Raises:
            KeyError: a required hyperparameter is missing; the message names it.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        missing = [n for n, f in fields.items()
                   if f.default is dataclasses.MISSING and n not in values]
        if missing:
            raise KeyError(f"missing hyperparameters: {', '.join(missing)}")
        return cls(**{n: values[n] for n in fields if n in values})

    def to_dict(self) -> dict[str, Any]:
        """``{name: value}`` in the order of :data:`HYPERPARAMETERS`, without the
        hyperparameters the architecture does not have (None): what MLflow logs as the
        trial's params. A from-scratch trial logs the same names, in the same order, as
        before backbones existed."""
        values = dataclasses.asdict(self)
        return {n: values[n] for n in HYPERPARAMETERS if values[n] is not None}


# Each hyperparameter with the value a study fixes when its spec names it nowhere; None
# marks the ones a spec must name (lr, batch_size, dropout and arch everywhere; depth wherever
# an architecture that takes it can be drawn), except those of DATA_DEFAULT_HYPERPARAMETERS,
# which the data set's value stands for. The order is the order of a spec's resolved search
# space: the hyperparameters added later come last, so that the definition a study recorded
# before they existed stays the same.
HYPERPARAMETERS: dict[str, Any] = {
    "lr": None,
    "batch_size": None,
    "depth": None,
    "dropout": None,
    "arch": None,
    "width": 32,
    "optimizer": "adamw",
    "weight_decay": 5.0e-4,
    "label_smoothing": 0.0,
    "pretrained": True,  # the point of a backbone; the weights must be cached or reachable
    "freeze": "none",  # fine-tune everything, as torchvision's reference recipes do
    "backbone_lr_mult": 1.0,  # one learning rate for the whole network unless searched
    "class_weights": "none",  # every image alike unless the spec asks for balanced weights
    "image_size": None,  # the data set's own size unless searched (see below)
}

# The hyperparameters a spec opts into: where it names them nowhere, they are not fixed in
# its resolved space (their default applies without being recorded), so that the definition
# of a study recorded before they existed stays the same.
OPT_IN_HYPERPARAMETERS = ("class_weights",)

# The hyperparameters only some architectures take: each family declares which
# (``register_model(name, hyperparameters=...)``); a spec may give one only to an
# architecture that takes it, and its default is fixed only where one can be drawn.
FAMILY_HYPERPARAMETERS = ("depth", "width", "pretrained", "freeze", "backbone_lr_mult")

# The hyperparameters a spec may name but need not, and that are not fixed where it does not:
# left out, the trial takes the data set's own value (``image_size``: the stored images'
# side). So a study defined before one existed keeps its definition.
DATA_DEFAULT_HYPERPARAMETERS = ("image_size",)
