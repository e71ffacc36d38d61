"""LeNet-style network: convolution blocks that halve the image, then a dense classifier on
the flattened feature map (after LeCun et al. 1998, "Gradient-based learning applied to
document recognition"), with BatchNorm and ReLU."""

from torch import nn

from hpsearch.models.families._layers import conv_bn_relu
from hpsearch.models.registry import register_model

_POOLED_SIZE = 7  # max-pool while the map stays at least this big: 28 -> 14 -> 7
_HEAD_SIZE = 7  # the dense head sees a 7x7 map of each channel


@register_model("lenet")
def lenet(*, in_channels: int, image_size: int, num_classes: int, depth: int, width: int,
          dropout: float) -> nn.Module:
    """Builds a LeNet-style classifier.

    Layout: ``depth`` blocks of conv3x3 -> BatchNorm2d -> ReLU, block i having
    ``width * 2**min(i, 2)`` channels, a 2x2 max-pool after each while the map stays at least
    7x7 (28 -> 14 -> 7); then average pooling to 7x7, flatten -> Dropout -> Linear. Unlike
    ``cnn``'s global average pooling, the dense head sees where each feature is, and on
    28x28 images learns much faster in a short budget (see ``docs/benchmarks.md``).
    Arguments: see :func:`hpsearch.models.build_model`.
    """
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for i in range(depth):
        out = width * 2 ** min(i, 2)
        layers += conv_bn_relu(channels, out)
        if size // 2 >= _POOLED_SIZE:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(_HEAD_SIZE), nn.Flatten(),
                         nn.Dropout(dropout),
                         nn.Linear(channels * _HEAD_SIZE * _HEAD_SIZE, num_classes))
