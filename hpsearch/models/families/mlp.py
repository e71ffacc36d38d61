"""Multilayer-perceptron baseline: the images are flattened, so spatial structure is ignored."""

from torch import nn

from hpsearch.models.registry import register_model


def _hidden_layer(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    # No Linear bias: the BatchNorm shift that follows makes it redundant.
    return nn.Sequential(
        nn.Linear(in_features, out_features, bias=False),
        nn.BatchNorm1d(out_features),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
    )


@register_model("mlp")
def mlp(*, in_channels: int, image_size: int, num_classes: int, depth: int, width: int,
        dropout: float) -> nn.Module:
    """Builds a fully connected classifier, the baseline the convolutional families must beat.

    Layout: flatten -> ``depth`` x (Linear -> BatchNorm1d -> ReLU -> Dropout) with ``8 * width``
    hidden units each (so that ``width`` spans a parameter range comparable to the channel
    counts of the convolutional families) -> Linear to ``num_classes``. BatchNorm: Ioffe &
    Szegedy 2015, arXiv:1502.03167; dropout: Srivastava et al. 2014, JMLR 15(56). In training
    mode N must be at least 2 (BatchNorm1d needs a batch statistic). Arguments: see
    :func:`hpsearch.models.build_model`.
    """
    hidden = 8 * width
    in_sizes = [in_channels * image_size * image_size] + [hidden] * (depth - 1)
    return nn.Sequential(
        nn.Flatten(),
        *(_hidden_layer(size, hidden, dropout) for size in in_sizes),
        nn.Linear(hidden, num_classes),
    )
