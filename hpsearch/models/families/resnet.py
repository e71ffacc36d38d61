"""ResNet built from basic blocks, in the 3-stage CIFAR layout of He et al. 2015."""

from torch import Tensor, nn

from hpsearch.models.families._layers import pooled_head
from hpsearch.models.registry import register_model

_STAGE_MULTIPLIERS = (1, 2, 4)
_STAGE_STRIDES = (1, 2, 2)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm always follows)."""
    return nn.Conv2d(
        in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
    )


class BasicBlock(nn.Module):
    """Residual block ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``.

    From He et al. 2015, "Deep Residual Learning for Image Recognition", arXiv:1512.03385. The
    shortcut is the identity, or a 1x1 conv + BatchNorm projection ("option B") when the stride
    or the channel count changes.

    Args:
        in_channels: Channels of the input map (N, in_channels, H, W).
        out_channels: Channels of the output map (N, out_channels, ceil(H / stride),
            ceil(W / stride)).
        stride: Stride of the first conv and of the projection.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _make_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    # Only the first block changes resolution and channels; the rest keep the identity shortcut.
    layers = [BasicBlock(in_channels, out_channels, stride)]
    layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module) -> None:
    # He et al. initialisation, as in the paper and in torchvision. The last BatchNorm of each
    # residual branch is deliberately NOT zero-initialised (Goyal et al. 2017, arXiv:1706.02677):
    # a zero gamma blocks the gradient to both convs of the branch on the first step.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


@register_model("resnet")
def resnet(*, in_channels: int, image_size: int, num_classes: int, depth: int, width: int,
           dropout: float) -> nn.Module:
    """Builds a residual network of basic blocks (He et al. 2015, arXiv:1512.03385).

    Layout: stem conv3x3 (``width`` channels) -> BatchNorm2d -> ReLU, then 3 stages of
    ``depth`` :class:`BasicBlock` each, with ``width``, ``2 * width`` and ``4 * width`` channels
    and strides 1, 2, 2 (the paper's CIFAR-10 layout, where depth = n gives ResNet-(6n + 2)),
    then global average pool -> Dropout -> Linear. ``image_size`` is only validated: global
    pooling makes the network independent of the input size. Arguments: see
    :func:`hpsearch.models.build_model`.
    """
    channels = [width * m for m in _STAGE_MULTIPLIERS]
    stages = [
        _make_stage(c_in, c_out, depth, stride)
        for c_in, c_out, stride in zip([width] + channels[:-1], channels, _STAGE_STRIDES)
    ]
    model = nn.Sequential(
        conv3x3(in_channels, width),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        *stages,
        *pooled_head(channels[-1], num_classes, dropout),
    )
    _init_weights(model)
    return model
