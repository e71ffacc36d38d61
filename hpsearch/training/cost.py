"""What a network costs: parameters, and multiply-accumulates per image counted by
``torch.utils.flop_counter.FlopCounterMode`` on a copy built on the meta device (no memory,
no compute: the count comes from the shapes)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hpsearch.data_utils import DatasetInfo
from hpsearch.models import build_network
from hpsearch.params import TrialParams

__all__ = ["count_parameters", "macs_per_image"]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (weights and biases; not BatchNorm's running stats)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def macs_per_image(params: TrialParams, info: DatasetInfo) -> int:
    """Multiply-accumulates of one forward pass of one image (N = 1, eval mode, at the
    trial's ``image_size``): half the FLOPs ``FlopCounterMode`` counts for matrix products
    and convolutions, which dominate these networks (normalisation, activations, pooling
    and the downsampling to ``image_size`` are not counted). A training step costs about
    three times this per image (forward, and backward to inputs and weights)."""
    size = params.image_size or info.shape.size  # the size the network sees
    with torch.device("meta"):
        network = build_network(params, info).eval()
        image = torch.empty(1, info.shape.channels, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(image)
    return counter.get_total_flops() // 2
