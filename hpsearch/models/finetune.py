"""A pretrained network prepared for fine-tuning: its stages, its new head, what is frozen.

:class:`FineTunedNetwork` wraps a torchvision backbone whose classifier was replaced. It knows
the backbone's stages (in order, input to output) and the head, freezes the stages that do
not train (``requires_grad`` False, and eval mode even when the network is put in training
mode, so their batch-norm statistics stay the pretrained ones), and tells the optimizer which
parameters are the head's and which the backbone's (:func:`split_parameters`), so that the
backbone can train at a fraction of the head's learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hpsearch.params import FREEZE_WORDS

__all__ = ["FineTunedNetwork", "Float32DepthwiseConv2d", "adapt_input_conv",
           "check_backbone_lr_mult", "check_freeze", "float32_depthwise", "split_parameters"]


def check_freeze(freeze: object) -> str | int:
    """``freeze`` if it is ``"none"``, ``"backbone"`` or an int >= 0 (the number of final
    stages left trainable).

    Raises:
        ValueError: anything else; the message names the value.
    """
    if freeze in FREEZE_WORDS or (isinstance(freeze, int) and not isinstance(freeze, bool)
                                  and freeze >= 0):
        return freeze
    raise ValueError(f"freeze must be 'none', 'backbone' or a number of stages >= 0, "
                     f"got {freeze!r}")


def check_backbone_lr_mult(mult: object) -> float:
    """``mult`` as a float if it lies in (0, 1].

    Raises:
        ValueError: anything else (NaN included); the message names the value.
    """
    if (isinstance(mult, (int, float)) and not isinstance(mult, bool)
            and math.isfinite(mult) and 0.0 < mult <= 1.0):
        return float(mult)
    raise ValueError(f"backbone_lr_mult must be in (0, 1], got {mult!r}")


class FineTunedNetwork(nn.Module):
    """A backbone with a new head, some of its final stages trainable.

    Args:
        network: the torchvision model, head already replaced; ``forward`` is its.
        stages: the backbone's modules grouped into stages, input to output; together with
            ``head`` they hold every parameter of ``network``.
        head: the modules of the new classifier head (dropout and the final Linear).
        freeze: ``"none"`` (everything trains), ``"backbone"`` (only the head trains) or
            N >= 0, the number of final stages that train with the head (N at least the
            number of stages: as ``"none"``; 0: as ``"backbone"``).
        backbone_lr_mult: the backbone's learning rate as a fraction of the head's, read by
            ``hpsearch.training.optim.build_optimizer``.

    Attributes:
        frozen: the stages' modules that do not train.

    Raises:
        ValueError: ``freeze`` or ``backbone_lr_mult`` is invalid, or ``stages`` and
            ``head`` do not cover the network's parameters.
    """

    def __init__(self, network: nn.Module, *, stages: Sequence[Sequence[nn.Module]],
                 head: Sequence[nn.Module], freeze: str | int = "none",
                 backbone_lr_mult: float = 1.0) -> None:
        super().__init__()
        self.network = network
        self.freeze = check_freeze(freeze)
        self.backbone_lr_mult = check_backbone_lr_mult(backbone_lr_mult)
        self.num_stages = len(stages)
        # Plain lists, not submodules: the modules are registered once, under ``network``.
        self._head = list(head)
        self.frozen: list[nn.Module] = [m for stage in stages[:self._frozen_stages()]
                                        for m in stage]
        _check_cover(network, stages, head)
        for module in self.frozen:
            module.requires_grad_(False)
        self.train(self.training)

    def _frozen_stages(self) -> int:
        if self.freeze == "none":
            return 0
        if self.freeze == "backbone":
            return self.num_stages
        return max(self.num_stages - self.freeze, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    def train(self, mode: bool = True) -> FineTunedNetwork:
        """Training or eval mode, except for the frozen stages: always eval (their dropout
        off, their batch norm using and keeping the pretrained running statistics)."""
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        """The new head's parameters (all trainable)."""
        return [p for module in self._head for p in module.parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The backbone's trainable parameters (the frozen stages' are left out)."""
        head = {id(p) for p in self.head_parameters()}
        return [p for p in self.network.parameters() if p.requires_grad and id(p) not in head]


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(head, backbone): the trainable parameters of ``model`` that train at the head's
    learning rate, and those at the backbone's. A network that is no
    :class:`FineTunedNetwork` (a from-scratch family) is all head."""
    if isinstance(model, FineTunedNetwork):
        return model.head_parameters(), model.backbone_parameters()
    return [p for p in model.parameters() if p.requires_grad], []


def adapt_input_conv(conv: nn.Conv2d, in_channels: int, *, pretrained: bool = True
                     ) -> nn.Conv2d:
    """``conv`` (an RGB network's first convolution) taking ``in_channels`` channels instead.

    The kernels follow timm's ``adapt_input_conv`` (``timm/models/_manipulate.py``): for one
    channel they are summed over R, G and B, so a grey image gives the response the RGB
    network gives to that image replicated into three channels; for C > 3 channels they are
    repeated over the channels and scaled by 3 / C. For a randomly initialised ``conv``
    (``pretrained`` False) the first C channels are kept instead, repeated where C > 3:
    torchvision initialises these kernels by their fan-out, which does not depend on C, and
    a sum of 3 draws would triple their variance.

    Args:
        conv: a Conv2d with 3 input channels, groups 1.
        in_channels: the channels C of the images.
        pretrained: ``conv`` holds pretrained kernels.

    Returns:
        ``conv`` itself when ``in_channels`` is 3, else a new Conv2d with the same geometry.
    """
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode, device=conv.weight.device,
                    dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(_adapted_kernels(conv.weight, in_channels) if pretrained
                         else _first_channels(conv.weight, in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _adapted_kernels(weight: Tensor, in_channels: int) -> Tensor:
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def _first_channels(weight: Tensor, in_channels: int) -> Tensor:
    repeats = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels]


def _check_cover(network: nn.Module, stages: Sequence[Sequence[nn.Module]],
                 head: Sequence[nn.Module]) -> None:
    covered = {id(p) for group in [*stages, head] for m in group for p in m.parameters()}
    left = [name for name, p in network.named_parameters() if id(p) not in covered]
    if left:
        raise ValueError(f"parameters in no stage and not in the head: {', '.join(left[:5])}")


class Float32DepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution that runs in float32 under CPU autocast.

    oneDNN's bfloat16 depthwise convolution backward is slow: on a 2-core Xeon with AMX-BF16
    (torch 2.15, one thread, channels-last, batch 64), a 5x5 depthwise layer (96 channels,
    8x8 maps) took 51 ms forward + backward in bf16 against 15 ms in float32, a 7x7 one
    (96 channels, 16x16) 177 ms against 101 ms, while a 1x1 convolution took 3.8 ms in bf16
    against 8.2 ms in float32. MobileNet, EfficientNet and ConvNeXt are mostly such pairs: with
    their depthwise layers in float32, bf16 autocast trained MobileNetV3-small at 64 px at
    132 img/s instead of 68 (float32 throughout: 130). On CUDA (cuDNN) nothing changes.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def float32_depthwise(model: nn.Module) -> nn.Module:
    """Replace every depthwise Conv2d of ``model`` (groups == in_channels > 1) by a
    :class:`Float32DepthwiseConv2d` holding the same parameters (same state-dict keys)."""
    for name, module in list(model.named_modules()):
        if (type(module) is nn.Conv2d and module.groups > 1
                and module.groups == module.in_channels):
            parent_name, _, attribute = name.rpartition(".")
            replacement = Float32DepthwiseConv2d(
                module.in_channels, module.out_channels, module.kernel_size,
                stride=module.stride, padding=module.padding, dilation=module.dilation,
                groups=module.groups, bias=module.bias is not None,
                padding_mode=module.padding_mode, device=module.weight.device,
                dtype=module.weight.dtype)
            replacement.weight = module.weight
            replacement.bias = module.bias
            setattr(model.get_submodule(parent_name), attribute, replacement)
    return model
