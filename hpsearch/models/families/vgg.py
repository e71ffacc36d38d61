"""VGG-style network: blocks of two conv3x3-BN-ReLU layers, each block followed by max-pooling."""

from torch import nn

from hpsearch.models.families._layers import conv_bn_relu, pooled_head
from hpsearch.models.registry import register_model

_MIN_POOLED_SIZE = 2


def _block_channels(i: int, width: int) -> int:
    # VGG doubles the channels per block up to 8x the first block (64 -> 512).
    return width * 2 ** min(i, 3)


def _make_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers = conv_bn_relu(in_channels, out_channels) + conv_bn_relu(out_channels, out_channels)
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _features(in_channels: int, image_size: int, depth: int, width: int) -> nn.Sequential:
    blocks: list[nn.Module] = []
    size = image_size
    for i in range(depth):
        # Unlike the original (224x224 inputs), small images would pool down to nothing, so
        # pooling stops before the map gets smaller than 2x2.
        pool = size // 2 >= _MIN_POOLED_SIZE
        out_channels = _block_channels(i, width)
        blocks.append(_make_block(in_channels, out_channels, pool))
        size = size // 2 if pool else size
        in_channels = out_channels
    return nn.Sequential(*blocks)


@register_model("vgg")
def vgg(*, in_channels: int, image_size: int, num_classes: int, depth: int, width: int,
        dropout: float) -> nn.Module:
    """Builds a VGG-style classifier (Simonyan & Zisserman 2014, arXiv:1409.1556) with BatchNorm.

    Layout: ``depth`` blocks of 2 x (conv3x3 -> BatchNorm2d -> ReLU) -> 2x2 max-pool, block i
    having ``width * 2**min(i, 3)`` channels; the pool is skipped once the map would shrink
    below 2x2; then global average pool -> Dropout -> Linear. The global pool and single Linear
    replace VGG's three 4096-unit layers, which would dominate the parameter count on 28x28 and
    32x32 images. Arguments: see :func:`hpsearch.models.build_model`.
    """
    return nn.Sequential(
        _features(in_channels, image_size, depth, width),
        *pooled_head(_block_channels(depth - 1, width), num_classes, dropout),
    )
