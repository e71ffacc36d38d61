"""Layers the families share."""

from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """conv3x3 (padding 1) -> BatchNorm2d -> ReLU; no conv bias, since the BatchNorm shift
    that follows makes it redundant (Ioffe & Szegedy 2015, arXiv:1502.03167)."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def pooled_head(channels: int, num_classes: int, dropout: float) -> list[nn.Module]:
    """Global average pool -> Dropout -> Linear: (N, channels, H, W) -> (N, num_classes)."""
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(channels, num_classes)]
