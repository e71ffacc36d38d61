"""ImageNet backbones from torchvision's weights API, prepared for fine-tuning.

Each is torchvision's own model (``torchvision.models.get_model(name)``) with, in order:
its pretrained weights (``pretrained``; the default weights of ``get_model_weights(name)``,
read from torchvision's cache, see :mod:`hpsearch.models.weights`), its first convolution
adapted to the data set's channels (:func:`~hpsearch.models.finetune.adapt_input_conv`), its
depthwise convolutions kept in float32 under CPU autocast
(:class:`~hpsearch.models.finetune.Float32DepthwiseConv2d`: oneDNN's bf16 depthwise backward
halved MobileNet's training throughput), its final Linear layer replaced by a new one for the
data set's classes with ``dropout`` before it, and its stages frozen as ``freeze`` says
(:class:`~hpsearch.models.finetune.FineTunedNetwork`).

The stages ``freeze: N`` counts, input to output (N final stages train with the head):

=====================  ======  =====================================================
family                 stages  what a stage is
=====================  ======  =====================================================
resnet18, resnet50     4       layer1 (with the stem conv1, bn1), layer2, layer3, layer4
vgg16, vgg16_bn        6       the 5 conv blocks (each up to its max-pool), then fc6-fc7
mobilenet_v3_small     14      the 13 ``features`` blocks, then the 1024-unit Linear
mobilenet_v3_large     18      the 17 ``features`` blocks, then the 1280-unit Linear
efficientnet_b0        9       the 9 ``features`` blocks (stem, 7 MBConv stages, 1x1 conv)
convnext_tiny          8       the 8 ``features`` blocks (stem, 4 stages, 3 downsamplings);
                               the last with the classifier's LayerNorm
=====================  ======  =====================================================

The image size must be at least torchvision's ``min_size`` of the weights (32 px for VGG and
ConvNeXt, whose five halvings leave 1x1; 1 px for the others): below it the builder raises
ValueError naming the architecture and the size. The strides are ImageNet's, so a 32 px image
leaves a 1x1 map before the head (a resize to a larger ``image_size`` is the data's business).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from hpsearch.models.finetune import FineTunedNetwork, adapt_input_conv, float32_depthwise
from hpsearch.models.registry import register_model

BACKBONE_HYPERPARAMETERS = {"pretrained": False, "freeze": "none", "backbone_lr_mult": 1.0}
# Families whose torchvision builder takes ``dropout`` for the Dropout layers of its
# classifier (VGG's two, MobileNetV3's and EfficientNet's one, the last right before the
# final Linear); the others get a Dropout before the new Linear.
_BUILDER_DROPOUT = ("vgg", "mobilenet_v3", "efficientnet")

Stages = list[list[nn.Module]]


def _resnet(model: nn.Module, num_classes: int, dropout: float) -> tuple[Stages, list]:
    model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(model.fc.in_features, num_classes))
    stages = [[model.conv1, model.bn1, model.layer1], [model.layer2], [model.layer3],
              [model.layer4]]
    return stages, [model.fc]


def _vgg(model: nn.Module, num_classes: int, dropout: float) -> tuple[Stages, list]:
    classifier = model.classifier  # fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8
    classifier[6] = nn.Linear(classifier[6].in_features, num_classes)
    blocks: Stages = [[]]
    for layer in model.features:
        blocks[-1].append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append([])
    blocks = [block for block in blocks if block]
    return [*blocks, [classifier[i] for i in range(5)]], [classifier[5], classifier[6]]


def _mobilenet_v3(model: nn.Module, num_classes: int, dropout: float) -> tuple[Stages, list]:
    classifier = model.classifier  # Linear, Hardswish, Dropout, Linear
    classifier[3] = nn.Linear(classifier[3].in_features, num_classes)
    stages = [[block] for block in model.features] + [[classifier[0], classifier[1]]]
    return stages, [classifier[2], classifier[3]]


def _efficientnet(model: nn.Module, num_classes: int, dropout: float) -> tuple[Stages, list]:
    classifier = model.classifier  # Dropout, Linear
    classifier[1] = nn.Linear(classifier[1].in_features, num_classes)
    return [[block] for block in model.features], [classifier[0], classifier[1]]


def _convnext(model: nn.Module, num_classes: int, dropout: float) -> tuple[Stages, list]:
    classifier = model.classifier  # LayerNorm2d, Flatten, Linear
    classifier[2] = nn.Sequential(nn.Dropout(dropout),
                                  nn.Linear(classifier[2].in_features, num_classes))
    stages = [[block] for block in model.features]
    stages[-1].append(classifier[0])
    return stages, [classifier[2]]


_FAMILIES: dict[str, tuple[str, Callable[..., tuple[Stages, list]]]] = {
    "resnet18": ("resnet", _resnet),
    "resnet50": ("resnet", _resnet),
    "vgg16": ("vgg", _vgg),
    "vgg16_bn": ("vgg", _vgg),
    "mobilenet_v3_small": ("mobilenet_v3", _mobilenet_v3),
    "mobilenet_v3_large": ("mobilenet_v3", _mobilenet_v3),
    "efficientnet_b0": ("efficientnet", _efficientnet),
    "convnext_tiny": ("convnext", _convnext),
}


def min_image_size(arch: str) -> int:
    """The smallest square image, in pixels, backbone ``arch`` takes: torchvision's
    ``min_size`` of its weights."""
    from hpsearch.models.weights import weights_of

    return int(weights_of(arch).meta["min_size"][0])


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    # In each of these families the first Conv2d registered is the stem's, the one the
    # image enters.
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent_name, _, attribute = name.rpartition(".")
    return model.get_submodule(parent_name), attribute, conv


def build_backbone(arch: str, *, in_channels: int, image_size: int, num_classes: int,
                   dropout: float, pretrained: bool, freeze: str | int,
                   backbone_lr_mult: float) -> FineTunedNetwork:
    """Builds torchvision's ``arch`` for fine-tuning (see the module docstring).

    Args:
        arch: a key of this module's families (``resnet18``, ...).
        in_channels: channels C of the images (1: the first convolution's kernels summed
            over RGB; 3: unchanged).
        image_size: H = W of the images, pixels; at least :func:`min_image_size`.
        num_classes: logits of the new head.
        dropout: drop probability before the new head's Linear.
        pretrained: start from the ImageNet weights (read from torchvision's cache,
            downloaded if missing); False: torchvision's random initialisation.
        freeze: ``"none"``, ``"backbone"`` or the number of final stages that train.
        backbone_lr_mult: the backbone's learning rate as a fraction of the head's.

    Returns:
        A :class:`FineTunedNetwork`: float32 images (N, C, H, W), normalised with
        :func:`hpsearch.models.input_stats`, to logits (N, num_classes).

    Raises:
        ValueError: ``image_size`` is below the architecture's minimum, or ``freeze`` /
            ``backbone_lr_mult`` is invalid.
        hpsearch.models.weights.WeightsUnavailable: ``pretrained`` and the weights are
            neither cached nor downloadable.
    """
    import torchvision

    minimum = min_image_size(arch)
    if image_size < minimum:
        raise ValueError(f"{arch} needs images of at least {minimum}x{minimum} pixels "
                         f"(torchvision's min_size for its weights), got {image_size}x"
                         f"{image_size}")
    family, prepare = _FAMILIES[arch]
    options: dict[str, Any] = {"dropout": dropout} if family in _BUILDER_DROPOUT else {}
    model = torchvision.models.get_model(arch, weights=None, **options)
    if pretrained:
        from hpsearch.models.weights import load_pretrained_state_dict

        model.load_state_dict(load_pretrained_state_dict(arch))
    parent, attribute, conv = _first_conv(model)
    setattr(parent, attribute, adapt_input_conv(conv, in_channels, pretrained=pretrained))
    float32_depthwise(model)  # before the stages are listed: it replaces modules
    stages, head = prepare(model, num_classes, dropout)
    return FineTunedNetwork(model, stages=stages, head=head, freeze=freeze,
                            backbone_lr_mult=backbone_lr_mult)


def pretrained_input_stats(arch: str, *, in_channels: int, pretrained: bool, **_: Any
                           ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) per channel that backbone ``arch`` expects: its weights'
    (``weights.transforms()``: ImageNet's) when ``pretrained``, else None (the data set's).

    One channel: the mean of the three means and of the three standard deviations (0.449,
    0.226 for ImageNet). With the kernels summed over RGB, the network then computes on a
    grey image exactly what the RGB network computes on that image replicated into three
    channels and normalised with these two numbers; ImageNet's per-channel values differ
    from them by at most 0.036 (mean) and 0.003 (std).
    """
    if not pretrained:
        return None
    from hpsearch.models.weights import weights_of

    transform = weights_of(arch).transforms()
    mean, std = tuple(transform.mean), tuple(transform.std)
    if in_channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return (tuple(mean[c % len(mean)] for c in range(in_channels)),
            tuple(std[c % len(std)] for c in range(in_channels)))


def _register(arch: str) -> None:
    def builder(**config: Any) -> FineTunedNetwork:
        return build_backbone(arch, **config)

    def stats(**config: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        return pretrained_input_stats(arch, **config)

    builder.__doc__ = f"torchvision's {arch} for fine-tuning: see :func:`build_backbone`."
    register_model(arch, hyperparameters=BACKBONE_HYPERPARAMETERS, input_stats=stats)(builder)


for _arch in _FAMILIES:
    _register(_arch)
