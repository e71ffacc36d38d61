"""Plain convolutional network: stacked conv3x3-BN-ReLU blocks with early max-pooling."""

from torch import nn

from hpsearch.models.registry import check_builder_args, register_model

_MAX_POOLS = 3
_MIN_POOLED_SIZE = 4


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    # No conv bias: the BatchNorm shift that follows makes it redundant.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _block_channels(i: int, width: int) -> int:
    # Capped at 4x so that depth-6 stacks stay small enough to search over on a CPU.
    return width * 2 ** min(i, 2)


def _features(in_channels: int, image_size: int, depth: int, width: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    size = image_size
    for i in range(depth):
        out_channels = _block_channels(i, width)
        layers.append(_conv_bn_relu(in_channels, out_channels))
        # Pool early to save compute, but never below 4x4 so deep stacks still see structure.
        if i < _MAX_POOLS and size // 2 >= _MIN_POOLED_SIZE:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        in_channels = out_channels
    return nn.Sequential(*layers)


@register_model("cnn")
def cnn(
    *,
    in_channels: int = 1,
    image_size: int = 28,
    num_classes: int = 10,
    depth: int = 2,
    width: int = 32,
    dropout: float = 0.0,
) -> nn.Module:
    """Builds a plain (non-residual) convolutional classifier.

    Layout: ``depth`` blocks of conv3x3 -> BatchNorm2d -> ReLU, block i having
    ``width * 2**min(i, 2)`` channels; a 2x2 max-pool follows each of the first 3 blocks while
    the pooled map stays at least 4x4; then global average pool -> Dropout -> Linear. The
    conv3x3-BN-ReLU block follows the VGG design (Simonyan & Zisserman 2014, arXiv:1409.1556)
    with BatchNorm (Ioffe & Szegedy 2015, arXiv:1502.03167).

    Args:
        in_channels: Channels C of the input images.
        image_size: Height and width H = W of the (square) input images; decides where pooling
            stops.
        num_classes: Number of output logits.
        depth: Number of conv blocks.
        width: Channels of the first block; later blocks have 2x, then 4x as many.
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
