"""Multilayer-perceptron baseline: the images are flattened, so spatial structure is ignored."""

from torch import nn

from hpsearch.models.registry import check_builder_args, register_model


def _hidden_layer(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    # No Linear bias: the BatchNorm shift that follows makes it redundant.
    return nn.Sequential(
        nn.Linear(in_features, out_features, bias=False),
        nn.BatchNorm1d(out_features),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
    )


@register_model("mlp")
def mlp(
    *,
    in_channels: int = 1,
    image_size: int = 28,
    num_classes: int = 10,
    depth: int = 2,
    width: int = 32,
    dropout: float = 0.0,
) -> nn.Module:
    """Builds a fully connected classifier, the baseline the convolutional families must beat.

    Layout: flatten -> ``depth`` x (Linear -> BatchNorm1d -> ReLU -> Dropout) with ``8 * width``
    hidden units each -> Linear to ``num_classes``. BatchNorm: Ioffe & Szegedy 2015,
    arXiv:1502.03167; dropout: Srivastava et al. 2014, JMLR 15(56).

    Args:
        in_channels: Channels C of the input images.
        image_size: Height and width H = W of the (square) input images; fixes the input size
            of the first Linear layer.
        num_classes: Number of output logits.
        depth: Number of hidden layers.
        width: Hidden layers have ``8 * width`` units, so that ``width`` spans a parameter range
            comparable to the channel counts of the convolutional families.
        dropout: Drop probability after every hidden layer.

    Returns:
        A module mapping float32 images (N, C, H, W) to float32 logits (N, num_classes). In
        training mode N must be at least 2 (BatchNorm1d needs a batch statistic).

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
    hidden = 8 * width
    in_sizes = [in_channels * image_size * image_size] + [hidden] * (depth - 1)
    return nn.Sequential(
        nn.Flatten(),
        *(_hidden_layer(size, hidden, dropout) for size in in_sizes),
        nn.Linear(hidden, num_classes),
    )
