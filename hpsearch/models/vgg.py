"""VGG-style network: blocks of two conv3x3-BN-ReLU layers, each block followed by max-pooling."""

from torch import nn

from hpsearch.models.registry import check_builder_args, register_model

_MIN_POOLED_SIZE = 2


def _block_channels(i: int, width: int) -> int:
    # VGG doubles the channels per block up to 8x the first block (64 -> 512).
    return width * 2 ** min(i, 3)


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm shift that follows makes it redundant.
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _make_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers = _conv_bn_relu(in_channels, out_channels) + _conv_bn_relu(out_channels, out_channels)
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
def vgg(
    *,
    in_channels: int = 1,
    image_size: int = 28,
    num_classes: int = 10,
    depth: int = 2,
    width: int = 32,
    dropout: float = 0.0,
) -> nn.Module:
    """Builds a VGG-style classifier (Simonyan & Zisserman 2014, arXiv:1409.1556) with BatchNorm.

    Layout: ``depth`` blocks of 2 x (conv3x3 -> BatchNorm2d -> ReLU) -> 2x2 max-pool, block i
    having ``width * 2**min(i, 3)`` channels; the pool is skipped once the map would shrink
    below 2x2; then global average pool -> Dropout -> Linear. The global pool and single Linear
    replace VGG's three 4096-unit layers, which would dominate the parameter count on 28x28 and
    32x32 images. BatchNorm: Ioffe & Szegedy 2015, arXiv:1502.03167.

    Args:
        in_channels: Channels C of the input images.
        image_size: Height and width H = W of the (square) input images; decides where pooling
            stops.
        num_classes: Number of output logits.
        depth: Number of blocks (each has two conv layers).
        width: Channels of the first block; later blocks have 2x, 4x, then 8x as many.
        dropout: Drop probability before the final Linear layer.

    Returns:
        A module mapping float32 images (N, C, H, W) to float32 logits (N, num_classes).

    Raises:
        ValueError: If ``in_channels``, ``image_size``, ``num_classes``, ``depth`` or ``width`` is
            below 1, or ``dropout`` is outside [0, 1).
    """
    check_builder_args(
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        depth=depth,
        width=width,
        dropout=dropout,
    )
    return nn.Sequential(
        _features(in_channels, image_size, depth, width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(_block_channels(depth - 1, width), num_classes),
    )
