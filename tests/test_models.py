"""Behaviour of the model registry and of every registered classifier family."""

import math
import re

import pytest
import torch
from torch import nn

from hpsearch.models import build_model, list_models, model_hyperparameters, register_model
from hpsearch.models.families.torchvision_backbones import min_image_size
from hpsearch.models.weights import is_backbone


def build(name: str, **config: object) -> nn.Module:
    """``build_model`` with a data set's shape filled in where the test leaves it out
    (grey 28 px, 10 classes): the builders take no silent defaults."""
    shape = {"in_channels": 1, "image_size": 28, "num_classes": 10}
    return build_model(name, **(shape | config))


SHAPES = [(1, 28, 28), (3, 32, 32)]
BATCH = 4
NUM_CLASSES = 10
# The families with a depth and a width (the from-scratch ones).
SCRATCH = [name for name in list_models() if "depth" in model_hyperparameters(name)]
# Backbones that take seconds per build and step on a 2-core CPU: tested once, in
# test_big_backbone_runs_once_at_its_smallest_size, not in every test below (resnet18 and
# mobilenet_v3_small stand for their families there).
BIG = ("convnext_tiny", "efficientnet_b0", "mobilenet_v3_large", "resnet50", "vgg16",
       "vgg16_bn")
MODELS = [name for name in list_models() if name not in BIG]


def _shape(name: str, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """``shape``, or its channels at the backbone's smallest size where that is larger (32 px
    for VGG and ConvNeXt, which cannot take 28 px)."""
    channels, size, _ = shape
    size = max(size, min_image_size(name)) if is_backbone(name) else size
    return channels, size, size


def _build(name: str, shape: tuple[int, int, int], **config: object) -> nn.Module:
    channels, size, _ = _shape(name, shape)
    return build(name, in_channels=channels, image_size=size, **config)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_all_four_families_are_registered() -> None:
    assert list_models() == sorted(list_models())
    assert {"cnn", "mlp", "resnet", "vgg"} <= set(list_models())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", MODELS)
def test_output_is_finite_logits_per_class(name: str, shape: tuple[int, int, int]) -> None:
    model = _build(name, shape).eval()
    with torch.no_grad():
        logits = model(torch.randn(BATCH, *_shape(name, shape)))
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name: str, shape: tuple[int, int, int]) -> None:
    model = _build(name, shape).train()
    logits = model(torch.randn(BATCH, *_shape(name, shape)))
    nn.functional.cross_entropy(logits, torch.randint(0, NUM_CLASSES, (BATCH,))).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("name", BIG)
def test_big_backbone_runs_once_at_its_smallest_size(name: str) -> None:
    # One grey batch at the smallest size: the adapted first convolution, finite logits,
    # a gradient for every parameter, the dropout before the head.
    size = min_image_size(name)
    model = build(name, in_channels=1, image_size=size, dropout=0.3).train()
    logits = model(torch.randn(2, 1, size, size))
    nn.functional.cross_entropy(logits, torch.tensor([0, 9])).backward()

    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] in ([0.3], [0.3, 0.3])


@pytest.mark.parametrize("name", MODELS)
def test_runs_channels_last_under_bfloat16_autocast(name: str) -> None:
    shape = _shape(name, SHAPES[1])
    model = _build(name, shape, width=8).to(memory_format=torch.channels_last).eval()
    images = torch.randn(BATCH, *shape).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images)
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("depth, width", [(1, 8), (6, 8), (1, 128), (6, 128)])
@pytest.mark.parametrize("name", SCRATCH)
def test_accepts_extreme_depth_and_width(name: str, depth: int, width: int) -> None:
    model = _build(name, SHAPES[0], depth=depth, width=width).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *SHAPES[0])).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", SCRATCH)
def test_deeper_model_has_more_parameters(name: str) -> None:
    counts = [_num_params(_build(name, SHAPES[0], depth=d, width=8)) for d in range(1, 7)]
    assert all(a < b for a, b in zip(counts, counts[1:])), counts


@pytest.mark.parametrize("name", SCRATCH)
def test_wider_model_has_more_parameters(name: str) -> None:
    counts = [_num_params(_build(name, SHAPES[0], width=w)) for w in (8, 16, 32)]
    assert all(a < b for a, b in zip(counts, counts[1:])), counts


@pytest.mark.parametrize("name", MODELS)
def test_dropout_probability_is_used(name: str) -> None:
    model = _build(name, SHAPES[0], width=8, dropout=0.3)
    probabilities = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert probabilities
    assert all(math.isclose(p, 0.3) for p in probabilities)


@pytest.mark.parametrize("name", SCRATCH)
def test_none_config_values_fall_back_to_defaults(name: str) -> None:
    unset = build(name, depth=None, width=None, dropout=None)
    assert _num_params(unset) == _num_params(build(name))
    # A None next to a real value must not swallow the real one.
    assert _num_params(build(name, depth=None, width=8)) == _num_params(
        build(name, width=8)
    )


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'alexnet'") as excinfo:
        build("alexnet")
    assert f"choose one of: {', '.join(list_models())}" in str(excinfo.value)


def test_registering_a_taken_name_raises() -> None:
    before = list_models()
    with pytest.raises(ValueError, match="'cnn'"):
        register_model("cnn")(lambda **config: nn.Identity())
    assert list_models() == before
    assert not isinstance(build("cnn"), nn.Identity)


INVALID = [("depth", 0), ("width", 0), ("width", -8), ("dropout", -0.1), ("dropout", 1.0)]


# depth and width for the families that have them (test_a_family_ignores_another_familys_...).
@pytest.mark.parametrize("name, arg, value", [
    (name, arg, value) for name in list_models() for arg, value in INVALID
    if arg == "dropout" or arg in model_hyperparameters(name)])
def test_invalid_hyperparameter_raises(name: str, arg: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{arg} .*{re.escape(str(value))}"):
        build(name, **{arg: value})


def test_a_family_ignores_another_familys_setting_but_not_an_unknown_name() -> None:
    # A search space may draw depth for every architecture it draws: a backbone ignores it.
    backbone = build("mobilenet_v3_small", image_size=32, depth=0, width=-8)
    plain = build("mobilenet_v3_small", image_size=32)
    assert _num_params(backbone) == _num_params(plain)
    assert _num_params(build("cnn", pretrained=True, freeze=2)) == _num_params(
        build("cnn"))
    with pytest.raises(ValueError, match="unknown hyperparameter 'dropuot' of 'cnn'"):
        build("cnn", dropuot=0.3)


def test_nan_dropout_raises() -> None:
    with pytest.raises(ValueError, match="dropout"):
        build("cnn", dropout=float("nan"))
