"""Plain convolutional network: stacked conv3x3-BN-ReLU blocks with early max-pooling."""

from torch import nn

from hpsearch.models.families._layers import conv_bn_relu, pooled_head
from hpsearch.models.registry import register_model

_MAX_POOLS = 3
_MIN_POOLED_SIZE = 4


def _block_channels(i: int, width: int) -> int:
    # Capped at 4x so that depth-6 stacks stay small enough to search over on a CPU.
    return width * 2 ** min(i, 2)


def _features(in_channels: int, image_size: int, depth: int, width: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    size = image_size
    for i in range(depth):
        out_channels = _block_channels(i, width)
        layers += conv_bn_relu(in_channels, out_channels)
        # Pool early to save compute, but never below 4x4 so deep stacks still see structure.
        if i < _MAX_POOLS and size // 2 >= _MIN_POOLED_SIZE:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        in_channels = out_channels
    return nn.Sequential(*layers)


@register_model("cnn")
def cnn(*, in_channels: int, image_size: int, num_classes: int, depth: int, width: int,
        dropout: float) -> nn.Module:
    """Builds a plain (non-residual) convolutional classifier.

    Layout: ``depth`` blocks of conv3x3 -> BatchNorm2d -> ReLU, block i having
    ``width * 2**min(i, 2)`` channels; a 2x2 max-pool follows each of the first 3 blocks while
    the pooled map stays at least 4x4; then global average pool -> Dropout -> Linear. The
    conv3x3-BN-ReLU block follows the VGG design (Simonyan & Zisserman 2014, arXiv:1409.1556)
    with BatchNorm (Ioffe & Szegedy 2015, arXiv:1502.03167). Arguments: see
    :func:`hpsearch.models.build_model`.
    """
    return nn.Sequential(
        _features(in_channels, image_size, depth, width),
        *pooled_head(_block_channels(depth - 1, width), num_classes, dropout),
    )
