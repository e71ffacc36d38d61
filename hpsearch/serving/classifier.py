"""The champion as one torch module: normalisation, network, logits. The pt2 export and the
served pyfunc model are both this module; :func:`class_probabilities` is how the served model
computes, and how the registered test accuracy is measured."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from hpsearch.data_utils import DatasetInfo, Normalization
from hpsearch.models import build_network, input_stats
from hpsearch.params import TrialParams
from hpsearch.training.loader import normalizing_affine
from hpsearch.training.resize import downsample_levels

__all__ = ["DEFAULT_OUTPUT", "OUTPUTS", "NormalizingClassifier", "class_probabilities"]

# What the served model answers per image, chosen by its inference parameter ``output``:
# ``label`` (the default, as MLflow's classifiers answer: one class name per image, so
# ``mlflow.models.evaluate(..., model_type="classifier")`` works), ``class_index`` or
# ``full`` (a DataFrame: class_index, label and the probabilities of all classes).
OUTPUTS = ("label", "class_index", "full")
DEFAULT_OUTPUT = "label"


class NormalizingClassifier(nn.Module):
    """A trained network with its input normalisation built in.

    Input: float32 pixel values in [0, 1], shape (N, C, H, W) (H = W the data set's image
    size). Output: float32 logits (N, num_classes). A network trained on downsampled images
    (the trial's ``image_size``) gets them downsampled first, as training did
    (:func:`hpsearch.training.resize.downsample_levels` of the pixels' 0..255 levels). The
    normalisation is the training loader's (:func:`hpsearch.training.loader
    .normalizing_affine` of the same statistics), so the network sees the same values.

    Args:
        network: maps normalised images (N, C, S, S) to logits.
        normalization: the statistics it was trained with
            (:func:`hpsearch.models.input_stats`: the data set's, or a pretrained
            backbone's).
        input_size: S, the side the network was trained at when it is below the data
            set's (its images downsampled on the device), else None.
    """

    def __init__(self, network: nn.Module, normalization: Normalization,
                 input_size: int | None = None) -> None:
        super().__init__()
        self.network = network
        self.normalization = normalization
        self.input_size = input_size
        scale, shift = normalizing_affine(normalization, pixel_scale=1.0)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None:
            # The whole levels training downsampled (served pixels are levels / 255).
            x = downsample_levels(torch.round(x * 255.0), self.input_size) / 255.0
        return self.network(torch.addcmul(self.shift, x, self.scale)).float()

    @classmethod
    def from_weights(cls, params: TrialParams, info: DatasetInfo,
                     state_dict: Mapping[str, torch.Tensor]) -> NormalizingClassifier:
        """The network ``params`` describe with the weights of ``state_dict`` (the bare
        network's, as a trial keeps them), in eval mode on the CPU."""
        network = build_network(params, info)  # shapes only: nothing is downloaded
        network.load_state_dict(state_dict)
        size = params.image_size if params.image_size != info.shape.size else None
        return cls(network, input_stats(params, info), input_size=size).eval()


def class_probabilities(classifier: NormalizingClassifier, unit_batch: np.ndarray) -> np.ndarray:
    """Softmax probabilities of ``classifier`` for one batch, as the served model computes
    them: float32 on the CPU, no autocast.

    Args:
        classifier: on the CPU, in eval mode.
        unit_batch: float32 pixel values in [0, 1], shape (N, C, H, W).

    Returns:
        float32 array (N, num_classes); each row sums to 1, in class-index order.
    """
    with torch.no_grad():
        return torch.softmax(classifier(torch.from_numpy(unit_batch)), dim=1).numpy()
