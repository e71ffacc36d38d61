"""The faster weight gradients of convolutions on small maps (training/small_conv.py): the
im2col product of dense bf16 convolutions and the batched product of float32 depthwise ones
equal ``aten.convolution_backward``'s, are used only where their rules say, and leave the
model as they found it."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hpsearch.training.small_conv as small_conv
from hpsearch.models.finetune import Float32DepthwiseConv2d
from hpsearch.training.small_conv import MAX_OUTPUT_POSITIONS, small_conv_grads

CPU = torch.device("cpu")


def _grads(conv: nn.Conv2d, x: torch.Tensor, *, patched: bool, amp=torch.bfloat16):
    conv.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    with small_conv_grads(conv, CPU, amp) if patched else contextlib.nullcontext():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
            out = conv(x)
        (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
    return out.detach(), x.grad, conv.weight.grad, None if conv.bias is None else conv.bias.grad


CASES = [  # (nn.Conv2d's arguments, input side): each within the rule
    (dict(in_channels=16, out_channels=8, kernel_size=3, padding=1), 2),
    (dict(in_channels=16, out_channels=8, kernel_size=3, padding=1, bias=False), 4),
    (dict(in_channels=8, out_channels=12, kernel_size=3, stride=2, padding=1), 7),
    (dict(in_channels=8, out_channels=4, kernel_size=(3, 2), dilation=2, padding=(2, 1)), 3),
    (dict(in_channels=3, out_channels=5, kernel_size=5, padding=0), 6),
]


@pytest.mark.parametrize("kwargs, side", CASES)
def test_gradients_match_atens_under_bf16_autocast(kwargs, side) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs)
    x = torch.randn(6, kwargs["in_channels"], side, side)
    with small_conv_grads(conv, CPU, torch.bfloat16):
        assert "forward" in vars(conv)  # the case is one the rule takes
    ours = _grads(conv, x, patched=True)
    reference = _grads(conv, x, patched=False)
    assert torch.equal(ours[0], reference[0])  # the forward is F.conv2d's, bit for bit
    for mine, theirs in zip(ours[1:], reference[1:]):
        if theirs is None:
            assert mine is None
            continue
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
        # both are bf16 products accumulated in fp32: equal up to bf16's rounding
        torch.testing.assert_close(mine, theirs, rtol=2e-2, atol=2e-2 * theirs.abs().max())


class _Spy:
    """Records the output mask of each call of ``aten.convolution_backward`` made by the
    faster forms."""

    def __init__(self, monkeypatch) -> None:
        self.masks: list[tuple[bool, ...]] = []
        self.real = small_conv._aten_grads
        monkeypatch.setattr(small_conv, "_aten_grads", self)

    def __call__(self, *args):
        self.masks.append(tuple(args[-1]))
        return self.real(*args)


def test_the_faster_forms_compute_what_they_replace_and_nothing_else(monkeypatch) -> None:
    """Where the rule holds aten is asked for the input gradient only; at a larger output,
    in fp32, for a 1x1, grouped or depthwise conv, or a subclass of Conv2d, it is aten's own
    autograd (never called from Python)."""
    spy = _Spy(monkeypatch)
    torch.manual_seed(0)
    dense = nn.Conv2d(4, 4, 3, padding=1)
    _grads(dense, torch.randn(2, 4, 4, 4), patched=True)  # 16 positions
    assert spy.masks == [(True, False, False)]
    spy.masks.clear()

    class Subclass(nn.Conv2d):
        pass

    side = int(MAX_OUTPUT_POSITIONS ** 0.5) + 1
    patched_forwards = []
    for module, x, amp in ((dense, torch.randn(2, 4, side, side), torch.bfloat16),
                           (dense, torch.randn(2, 4, 2, 2), None),
                           (Subclass(4, 4, 3, padding=1), torch.randn(2, 4, 2, 2),
                            torch.bfloat16),
                           (nn.Conv2d(4, 4, 1), torch.randn(2, 4, 2, 2), torch.bfloat16),
                           (nn.Conv2d(4, 4, 3, padding=1, groups=2), torch.randn(2, 4, 2, 2),
                            torch.bfloat16),
                           (nn.Conv2d(4, 4, 3, padding=1, groups=4), torch.randn(2, 4, 2, 2),
                            torch.bfloat16)):
        with small_conv_grads(module, CPU, amp):
            patched_forwards.append("forward" in vars(module))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
                module(x.requires_grad_(True)).float().sum().backward()
    assert spy.masks == []
    assert patched_forwards == [True, False, False, False, False, False]


def test_the_model_is_left_as_found_and_only_a_cpu_bf16_eager_model_is_touched() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))
    convs = [model[0], model[2]]
    with small_conv_grads(model, CPU, torch.bfloat16):
        assert all("forward" in vars(conv) for conv in convs)
    assert not any("forward" in vars(conv) for conv in convs)
    for device, amp in ((CPU, None), (CPU, torch.float16), (torch.device("meta"),
                                                             torch.bfloat16)):
        with small_conv_grads(model, device, amp):
            assert not any("forward" in vars(conv) for conv in convs)
    with pytest.raises(RuntimeError), small_conv_grads(model, CPU, torch.bfloat16):
        raise RuntimeError("a failed epoch")
    assert not any("forward" in vars(conv) for conv in convs)


def test_without_gradients_or_with_a_frozen_weight_the_forward_is_the_modules(
        monkeypatch) -> None:
    spy = _Spy(monkeypatch)
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 2, 2)
    with small_conv_grads(conv, CPU, torch.bfloat16), torch.autocast("cpu"):
        with torch.no_grad():
            assert torch.equal(conv(x), F.conv2d(x.bfloat16(), conv.weight.bfloat16(),
                                                 conv.bias.bfloat16(), padding=1))
        conv.requires_grad_(False)
        y = x.clone().requires_grad_(True)
        conv(y).float().sum().backward()
    assert conv.weight.grad is None and y.grad is not None
    assert spy.masks == []  # the input gradient alone: aten's autograd


DEPTHWISE_CASES = [  # (channels, kernel, input side, Conv2d's other arguments): within the rule
    (6, 5, 2, dict(padding=2)),
    (4, 5, 4, dict(padding=2, bias=True)),
    (5, 5, 4, dict(stride=2, padding=2)),
    (3, 3, 3, dict(padding=1)),
    (4, (3, 5), 2, dict(padding=(1, 4), dilation=(1, 2))),
    (2, 7, 1, dict(padding=3)),
    (3, 3, 3, dict(padding=0, bias=True)),
]


@pytest.mark.parametrize("amp", [torch.bfloat16, None])
@pytest.mark.parametrize("channels, kernel, side, kwargs", DEPTHWISE_CASES)
def test_depthwise_gradients_match_atens_in_float32(channels, kernel, side, kwargs, amp) -> None:
    """A backbone's Float32DepthwiseConv2d under bf16 autocast, or a depthwise Conv2d in
    float32: every gradient is aten's up to float32 summation order."""
    torch.manual_seed(0)
    kwargs = {"bias": False} | kwargs
    cls = Float32DepthwiseConv2d if amp is not None else nn.Conv2d
    conv = cls(channels, channels, kernel, groups=channels, **kwargs)
    x = torch.randn(5, channels, side, side)
    with small_conv_grads(conv, CPU, amp):
        assert "forward" in vars(conv)  # the case is one the rule takes
    ours = _grads(conv, x, patched=True, amp=amp)
    reference = _grads(conv, x, patched=False, amp=amp)
    assert torch.equal(ours[0], reference[0])  # the forward is F.conv2d's, bit for bit
    for mine, theirs in zip(ours[1:], reference[1:]):
        if theirs is None:
            assert mine is None
            continue
        assert mine.dtype == theirs.dtype == torch.float32 and mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_depthwise_rule_takes_only_kernels_with_as_many_taps_as_input_positions(
        monkeypatch) -> None:
    """3x3 on 4 x 4 (9 taps, 16 positions), a depthwise Conv2d computing in bf16 under
    autocast, a channel multiplier, a bf16 model: aten's autograd. 3x3 on 3 x 3: ours."""
    spy = _Spy(monkeypatch)
    torch.manual_seed(0)
    cases = [(Float32DepthwiseConv2d(4, 4, 3, padding=1, groups=4), torch.randn(2, 4, 4, 4),
              torch.bfloat16, False),
             (nn.Conv2d(4, 4, 3, padding=1, groups=4), torch.randn(2, 4, 2, 2),
              torch.bfloat16, False),
             (nn.Conv2d(4, 8, 3, padding=1, groups=4), torch.randn(2, 4, 2, 2), None, False),
             (nn.Conv2d(4, 4, 3, padding=1, groups=4).bfloat16(),
              torch.randn(2, 4, 2, 2).bfloat16(), None, False),
             (Float32DepthwiseConv2d(4, 4, 3, padding=1, groups=4), torch.randn(2, 4, 3, 3),
              torch.bfloat16, True)]
    for module, x, amp, ours in cases:
        spy.masks.clear()
        with small_conv_grads(module, CPU, amp):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
                module(x.requires_grad_(True)).float().sum().backward()
        assert spy.masks == ([(True, False, False)] if ours else []), module


def test_tap_matrix_links_each_output_input_pair_to_its_tap() -> None:
    """1-D along the width: a 3-tap kernel, padding 1, on 2 positions."""
    taps = small_conv._tap_matrix((1, 2), (1, 2), (1, 3), (1, 1), (0, 1), (1, 1))
    # rows (out, in): (0,0) tap 1, (0,1) tap 2, (1,0) tap 0, (1,1) tap 1
    assert taps.tolist() == [[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]]
