"""The pretrained torchvision backbones: their weights (created here, saved under torchvision's
file name in a temporary TORCH_HOME: no test needs the network), the input adaptation, the
normalisation they expect, freezing, and the parameter groups that reach the optimizer, the
one-cycle schedule, the CUDA-graph update and the logged learning rates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torchvision
from pretrained_files import OFFLINE, offline_cache, save_weights
from torch import nn

from hpsearch.data_utils import ImageShape, Normalization, get_dataset_info
from hpsearch.errors import HpsearchError
from hpsearch.models import build_model, build_network, input_stats
from hpsearch.models.finetune import (
    FineTunedNetwork,
    Float32DepthwiseConv2d,
    adapt_input_conv,
    split_parameters,
)
from hpsearch.models.weights import (
    WeightsUnavailable,
    ensure_weights,
    list_backbones,
    missing_weights,
    weights_available,
    weights_file,
    weights_of,
)
from hpsearch.params import TrialParams
from hpsearch.training.cost import count_parameters, macs_per_image
from hpsearch.training.cuda_graphs import CudaGraphStep, build_train_step
from hpsearch.training.loop import fit
from hpsearch.training.optim import build_optimizer, one_cycle_values


def build(name: str, **config: object) -> nn.Module:
    """``build_model`` with a data set's shape filled in where the test leaves it out
    (grey 28 px, 10 classes): the builders take no silent defaults."""
    shape = {"in_channels": 1, "image_size": 28, "num_classes": 10}
    return build_model(name, **(shape | config))


CPU = torch.device("cpu")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torchvision cache, and a network that is never reached: every download
    attempt fails as it does on a machine without internet."""
    return offline_cache(monkeypatch, tmp_path / "torch")


def _params(arch: str, **changes: object) -> TrialParams:
    return TrialParams(lr=0.01, batch_size=8, dropout=0.0, arch=arch, **changes)


# ---------------------------------------------------------------------------------------------
# Weights: where they are, loading them bit for bit, no network
# ---------------------------------------------------------------------------------------------


def test_weights_live_in_torchvisions_cache_under_its_file_names(torch_home: Path) -> None:
    assert list_backbones() == ["convnext_tiny", "efficientnet_b0", "mobilenet_v3_large",
                                "mobilenet_v3_small", "resnet18", "resnet50", "vgg16",
                                "vgg16_bn"]
    assert weights_file("resnet18") == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert weights_file("mobilenet_v3_small").name == "mobilenet_v3_small-047dcff4.pth"


@pytest.mark.parametrize("arch, channels", [("resnet18", 3), ("resnet18", 1),
                                            ("mobilenet_v3_small", 1)])
def test_a_pretrained_backbone_holds_the_weights_file_bit_for_bit(arch: str,
                                                                  channels: int) -> None:
    saved = save_weights(arch)
    model = build(arch, in_channels=channels, image_size=32, pretrained=True)
    ours = model.state_dict()

    differing = set()
    for key, tensor in saved.items():
        mine = ours.get(f"network.{key}")
        if mine is None or mine.shape != tensor.shape:
            differing.add(key)
        else:
            assert torch.equal(mine, tensor), key
    head = {"resnet18": {"fc.weight", "fc.bias"},
            "mobilenet_v3_small": {"classifier.3.weight", "classifier.3.bias"}}[arch]
    first_conv = {"resnet18": "conv1.weight", "mobilenet_v3_small": "features.0.0.weight"}[arch]
    assert differing == head | ({first_conv} if channels == 1 else set())
    if channels == 1:  # timm's in_chans=1 rule: the kernels summed over R, G and B
        assert torch.equal(ours[f"network.{first_conv}"], saved[first_conv].sum(1, keepdim=True))


def test_without_the_file_and_without_a_network_the_error_names_file_and_folder() -> None:
    folder = weights_file("resnet18").parent

    with pytest.raises(WeightsUnavailable) as info:
        build("resnet18", image_size=32, pretrained=True)

    message = str(info.value)
    assert isinstance(info.value, HpsearchError)  # the CLI prints it in one line, exit 2
    assert "\n" not in message
    assert message.startswith(f"pretrained weights of resnet18 not available: "
                              f"resnet18-f37072fd.pth not in {folder} (could not be "
                              f"downloaded: URLError: <urlopen error {OFFLINE}>); download "
                              f"{weights_of('resnet18').url} on a machine with internet "
                              f"and put it in {folder}")
    assert info.value.paths == {"resnet18": weights_file("resnet18")}


def test_a_missing_file_is_downloaded_once_with_a_progress_bar_and_its_hash_checked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def download(url: str, dst: str, hash_prefix: str | None = None,
                 progress: bool = True) -> None:
        calls.append((url, Path(dst).name, hash_prefix, progress))
        torch.save(torchvision.models.get_model("mobilenet_v3_small").state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)

    paths = ensure_weights(["cnn", "mobilenet_v3_small", "mobilenet_v3_small"])
    build("mobilenet_v3_small", image_size=32, pretrained=True)  # reads the cached file

    assert paths == {"mobilenet_v3_small": weights_file("mobilenet_v3_small")}
    assert calls == [(weights_of("mobilenet_v3_small").url, "mobilenet_v3_small-047dcff4.pth",
                      "047dcff4", True)]


def test_which_architectures_train_offline_and_which_files_are_missing() -> None:
    save_weights("mobilenet_v3_small")
    archs = ["cnn", "resnet18", "mobilenet_v3_small", "cnn", "vgg16"]

    assert weights_available(archs) == ["cnn", "mobilenet_v3_small"]
    assert missing_weights(archs) == {"resnet18": weights_file("resnet18"),
                                      "vgg16": weights_file("vgg16")}
    with pytest.raises(WeightsUnavailable, match=r"resnet18-f37072fd\.pth, vgg16-397923af\.pth "
                                                 r"not in .* download them from "
                                                 r"https://download\.pytorch\.org/models/ "):
        ensure_weights(archs)


def test_a_file_that_is_no_state_dict_says_so_and_how_to_recover() -> None:
    path = weights_file("mobilenet_v3_small")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<html>captive portal</html>")

    with pytest.raises(WeightsUnavailable, match=r"exists but cannot be read.*delete it"):
        build("mobilenet_v3_small", image_size=32, pretrained=True)


def test_shapes_cost_and_a_trained_state_dict_never_need_the_weights() -> None:
    # Registration and serving build the network of a pretrained trial to load its
    # fine-tuned weights; the cost is counted on the meta device: none of it may download.
    cifar10 = get_dataset_info("cifar10")
    info = dataclasses.replace(cifar10, shape=ImageShape(3, 224),
                               class_names=tuple(f"class {i}" for i in range(1000)))
    params = _params("resnet18", pretrained=True, freeze="none", backbone_lr_mult=1.0)

    trained = build_network(params, info).state_dict()
    again = build_network(params, info)
    again.load_state_dict(trained)

    # torchvision's meta gives the MACs in billions, to 3 decimals.
    assert round(macs_per_image(params, info) / 1e9, 3) == weights_of("resnet18").meta["_ops"]
    assert count_parameters(again) == weights_of("resnet18").meta["num_params"]
    with pytest.raises(WeightsUnavailable):
        build_network(params, info, pretrained_weights=True)


# ---------------------------------------------------------------------------------------------
# Input: sizes, channels, normalisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, minimum", [("vgg16", 32), ("vgg16_bn", 32),
                                           ("convnext_tiny", 32)])
def test_an_image_below_the_minimum_size_is_refused_at_build_time(arch: str,
                                                                  minimum: int) -> None:
    with pytest.raises(ValueError, match=f"{arch} needs images of at least {minimum}x{minimum} "
                                         r"pixels .* got 28x28"):
        build(arch, image_size=28)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_backbones_without_a_minimum_take_tiny_images(arch: str) -> None:
    model = build(arch, image_size=8).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_a_pretrained_backbone_expects_its_weights_statistics_and_others_the_data_sets() -> None:
    grey, rgb = get_dataset_info("fashion_mnist"), get_dataset_info("cifar10")
    pretrained = _params("resnet18", pretrained=True)

    assert input_stats(pretrained, rgb) == Normalization(IMAGENET_MEAN, IMAGENET_STD)
    stats = input_stats(pretrained, grey)
    assert stats.mean == pytest.approx((0.449,), abs=1e-9)
    assert stats.std == pytest.approx((0.226,))
    assert input_stats(_params("resnet18", pretrained=False), rgb) == rgb.normalization
    assert input_stats(_params("cnn", depth=2), grey) == grey.normalization


def test_a_grey_image_gets_the_rgb_networks_answer_for_that_image_in_three_channels() -> None:
    # Why the channel-averaged statistics: with the kernels summed over RGB, the one-channel
    # network normalised with them computes what the RGB network computes on the grey image
    # replicated into three channels and normalised with the same numbers.
    save_weights("mobilenet_v3_small")
    rgb = build("mobilenet_v3_small", in_channels=3, image_size=32, pretrained=True)
    grey = build("mobilenet_v3_small", in_channels=1, image_size=32, pretrained=True)
    grey.network.classifier[3].load_state_dict(rgb.network.classifier[3].state_dict())
    stats = input_stats(_params("mobilenet_v3_small", pretrained=True),
                        get_dataset_info("fashion_mnist"))
    (mean,), (std,) = stats.mean, stats.std
    pixels = torch.rand(4, 1, 32, 32)

    with torch.no_grad():
        from_grey = grey.eval()((pixels - mean) / std)
        from_rgb = rgb.eval()((pixels.repeat(1, 3, 1, 1) - mean) / std)

    torch.testing.assert_close(from_grey, from_rgb, rtol=1e-4, atol=1e-5)


def test_a_randomly_initialised_first_convolution_keeps_torchvisions_scale() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    fresh = adapt_input_conv(conv, 1, pretrained=False)
    summed = adapt_input_conv(conv, 1, pretrained=True)

    assert torch.equal(fresh.weight, conv.weight[:, :1])
    ratio = float(summed.weight.detach().std() / fresh.weight.detach().std())
    assert ratio == pytest.approx(3 ** 0.5, rel=0.1)
    assert adapt_input_conv(conv, 3) is conv
    assert (fresh.stride, fresh.padding, fresh.bias) == ((2, 2), (3, 3), None)


def test_depthwise_convolutions_run_in_float32_under_cpu_autocast_and_keep_their_keys() -> None:
    model = build("mobilenet_v3_small", image_size=32).eval()
    depthwise = [m for m in model.modules() if isinstance(m, Float32DepthwiseConv2d)]
    outputs = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(
                lambda m, args, out, name=name: outputs.__setitem__(name, out.dtype))

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 1, 32, 32))

    assert len(depthwise) == 11  # one per inverted-residual block
    assert all(m.groups == m.in_channels > 1 for m in depthwise)
    by_kind = {name: isinstance(model.get_submodule(name), Float32DepthwiseConv2d)
               for name in outputs}
    assert {outputs[n] for n, dw in by_kind.items() if dw} == {torch.float32}
    assert {outputs[n] for n, dw in by_kind.items() if not dw} == {torch.bfloat16}
    assert "network.features.1.block.0.0.weight" in model.state_dict()  # torchvision's key


# ---------------------------------------------------------------------------------------------
# Freezing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, stages", [("resnet18", 4), ("resnet50", 4), ("vgg16", 6),
                                          ("vgg16_bn", 6), ("mobilenet_v3_small", 14),
                                          ("mobilenet_v3_large", 18), ("efficientnet_b0", 9),
                                          ("convnext_tiny", 8)])
def test_each_family_has_its_documented_number_of_stages(arch: str, stages: int) -> None:
    with torch.device("meta"):
        model = build(arch, image_size=32, freeze=1)
    head = {id(p) for p in model.head_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}

    assert model.num_stages == stages
    assert head < trainable  # the head and the last stage train
    with torch.device("meta"):
        assert not build(arch, image_size=32, freeze=stages).frozen  # all: as none
        only_head = build(arch, image_size=32, freeze=0)
    assert [p for p in only_head.parameters() if p.requires_grad] == (
        only_head.head_parameters())


def _batches(n: int, channels: int = 1, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, channels, size, size, generator=g),
             torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def _snapshot(modules) -> list[torch.Tensor]:
    return [t.detach().clone() for m in modules for t in (*m.parameters(), *m.buffers())]


@pytest.mark.parametrize("arch, freeze", [("resnet18", 1), ("mobilenet_v3_small", "backbone")])
def test_frozen_stages_and_their_batch_norm_statistics_do_not_change_in_an_epoch(
        arch: str, freeze: str | int) -> None:
    save_weights(arch)
    torch.manual_seed(0)
    model = build(arch, image_size=32, pretrained=True, freeze=freeze, dropout=0.2)
    trainable = [m for m in model.network.modules()
                 if not any(m is f or _contains(f, m) for f in model.frozen)]
    frozen_before = _snapshot(model.frozen)
    head_before = [p.detach().clone() for p in model.head_parameters()]
    optimizer = build_optimizer(model, name="sgd", lr=0.05, weight_decay=0.01)

    fit(model, _batches(3), _batches(1, seed=1), epochs=1, optimizer=optimizer,
        num_classes=10, device=CPU)
    model.train()

    assert all(not m.training for f in model.frozen for m in f.modules())
    assert any(m.training for m in trainable)
    assert all(not p.requires_grad for f in model.frozen for p in f.parameters())
    for before, after in zip(frozen_before, _snapshot(model.frozen)):
        assert torch.equal(before, after)  # parameters, running mean/var, batch counts
    for before, after in zip(head_before, model.head_parameters()):
        assert not torch.equal(before, after)  # the head trained
    if freeze == 1:  # and so did the last stage, batch-norm statistics included
        layer4 = model.network.layer4
        assert not torch.equal(layer4[1].bn2.running_var, torch.ones_like(
            layer4[1].bn2.running_var)) and layer4[1].bn2.num_batches_tracked == 3


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def test_freeze_none_trains_everything_and_backbone_only_the_head() -> None:
    everything = build("resnet18", image_size=32, freeze="none")
    head_only = build("resnet18", image_size=32, freeze="backbone")
    as_zero = build("resnet18", image_size=32, freeze=0)

    assert count_parameters(everything) == sum(p.numel() for p in everything.parameters())
    assert count_parameters(head_only) == 512 * 10 + 10
    assert count_parameters(as_zero) == count_parameters(head_only)
    assert split_parameters(head_only)[1] == []
    for bad in ("all", -1, True, 1.5):
        with pytest.raises(ValueError, match="freeze must be"):
            build("resnet18", image_size=32, freeze=bad)
    with pytest.raises(ValueError, match=r"backbone_lr_mult must be in \(0, 1\]"):
        build("resnet18", image_size=32, backbone_lr_mult=1.5)


# ---------------------------------------------------------------------------------------------
# Parameter groups: optimizer, one-cycle schedule per group, capturable update, logged lrs
# ---------------------------------------------------------------------------------------------


def _tiny_backbone(mult: float = 0.1, seed: int = 1,
                   freeze: str | int = "none") -> FineTunedNetwork:
    """conv + BatchNorm (the backbone's one stage) -> Linear head, on (B, 1, 8, 8)."""
    torch.manual_seed(seed)
    conv, bn, head = nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Linear(4 * 36, 3)
    network = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), head)
    return FineTunedNetwork(network, stages=[[conv, bn]], head=[head], freeze=freeze,
                            backbone_lr_mult=mult)


def _tiny_batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g))
            for _ in range(n)]


def test_head_and_backbone_groups_reach_the_optimizer_with_their_learning_rates() -> None:
    save_weights("resnet18")
    model = build("resnet18", image_size=32, pretrained=True, freeze=2,
                        backbone_lr_mult=0.1)

    optimizer = build_optimizer(model, name="adamw", lr=0.01, weight_decay=0.05)

    groups = optimizer.param_groups
    assert [g["name"] for g in groups] == ["head", "head.no_decay", "backbone",
                                           "backbone.no_decay"]
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0, 0.05, 0.0]
    in_groups = [id(p) for g in groups for p in g["params"]]
    assert len(in_groups) == len(set(in_groups))  # each parameter in one group
    assert set(in_groups) == {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in model.network.layer4.parameters()} <= set(in_groups)
    assert not {id(p) for p in model.network.layer2.parameters()} & set(in_groups)
    # A from-scratch network: the two groups it always had.
    scratch = build_optimizer(build("cnn"), name="sgd", lr=0.1, weight_decay=0.0)
    assert [g["name"] for g in scratch.param_groups] == ["head", "head.no_decay"]


@pytest.mark.parametrize("name", ["adamw", "sgd"])
@pytest.mark.parametrize("capturable", [False, True], ids=["eager", "capturable"])
def test_each_group_follows_its_own_one_cycle_curve_step_by_step(name: str,
                                                                 capturable: bool) -> None:
    from test_cuda_graphs import _FakeGraph

    model, total = _tiny_backbone(mult=0.1), 12
    optimizer = build_optimizer(model, name=name, lr=0.05, weight_decay=0.01)
    if capturable:
        graph = _FakeGraph(model)
        step = CudaGraphStep(model, optimizer, max_lr=0.05, total_steps=total, device=CPU,
                             amp_dtype=None, capture=graph)
        graph.step = step
    else:
        step = build_train_step(model, optimizer, max_lr=0.05, total_steps=total, device=CPU,
                                amp_dtype=None)
    head_curve = one_cycle_values(max_lr=0.05, total_steps=total)[0]
    backbone_curve = one_cycle_values(max_lr=0.005, total_steps=total)[0]

    model.train()
    seen = [(step.lr, step.lr_backbone)]
    for x, y in _tiny_batches(total):
        step(x, y)
        seen.append((step.lr, step.lr_backbone))

    assert [h for h, _ in seen] == pytest.approx(head_curve, rel=1e-6)
    assert [b for _, b in seen] == pytest.approx(backbone_curve, rel=1e-6)
    assert max(b for _, b in seen) == pytest.approx(0.005, rel=1e-6)


def test_the_capturable_update_trains_both_groups_as_torchs_optimizer() -> None:
    from test_cuda_graphs import _FakeGraph

    reference, graphed = _tiny_backbone(), _tiny_backbone()
    eager = build_train_step(reference, build_optimizer(reference, name="adamw", lr=0.05,
                                                        weight_decay=0.01),
                             max_lr=0.05, total_steps=10, device=CPU, amp_dtype=None)
    graph = _FakeGraph(graphed)
    step = CudaGraphStep(graphed, build_optimizer(graphed, name="adamw", lr=0.05,
                                                  weight_decay=0.01),
                         max_lr=0.05, total_steps=10, device=CPU, amp_dtype=None,
                         capture=graph)
    graph.step = step
    reference.train(), graphed.train()
    for x, y in _tiny_batches(10):
        eager(x, y)
        step(x, y)

    assert step.replays > 0
    for expected, got in zip(reference.parameters(), graphed.parameters()):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_an_epoch_logs_the_heads_and_the_backbones_learning_rate() -> None:
    model = _tiny_backbone(mult=0.25)
    optimizer = build_optimizer(model, name="sgd", lr=0.04, weight_decay=0.0)
    step = build_train_step(model, optimizer, max_lr=0.04, total_steps=8, device=CPU,
                            amp_dtype=None)

    history = fit(model, _tiny_batches(4), _tiny_batches(1, seed=1), epochs=2,
                  train_step=step, num_classes=3, device=CPU)

    head_curve = one_cycle_values(max_lr=0.04, total_steps=8)[0]
    backbone_curve = one_cycle_values(max_lr=0.01, total_steps=8)[0]
    assert [r.metrics()["lr"] for r in history] == pytest.approx([head_curve[4], head_curve[8]])
    assert [r.metrics()["lr_backbone"] for r in history] == pytest.approx(
        [backbone_curve[4], backbone_curve[8]])
    # A backbone frozen whole has no backbone group, and no backbone metric.
    frozen = _tiny_backbone(freeze="backbone")
    only_head = fit(frozen, _tiny_batches(2), _tiny_batches(1, seed=1), epochs=1,
                    optimizer=build_optimizer(frozen, name="sgd", lr=0.04, weight_decay=0.0),
                    num_classes=3, device=CPU)
    assert "lr_backbone" not in only_head[0].metrics() and only_head[0].lr == 0.04
