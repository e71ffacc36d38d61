"""Faster weight gradients for convolutions on small feature maps, on a CPU.

oneDNN (torch 2.15, on this project's 2-core CPU with AMX) picks slow kernels for the weight
gradient of two kinds of convolution where a backbone's last stages run on small images:

- A dense convolution whose output has few positions, under bf16 autocast: resnet18 at 64 px
  computes its 512 -> 512 3x3 convolutions at 2 x 2, and there ``brgconv_bwd_w`` took 22.6 ms
  per call (batch 64) where one matrix product of the output gradient and the unfolded input
  (im2col) took 3.7 ms. A resnet18 training step at 64 px went from about 180 to about 235
  images/s. The product is used only where it was measured faster: not in fp32 (oneDNN's own
  kernel was as fast), not at outputs of 8 x 8 or more (slower), not for 1 x 1 or grouped
  convolutions.
- A depthwise convolution (in float32: the backbones run them so under autocast, see
  ``hpsearch.models.finetune.Float32DepthwiseConv2d``) whose kernel has at least as many taps
  as its input has positions: mobilenet_v3_small at 64 px runs 5x5 depthwise layers on 2 x 2
  and 4 x 4 maps, where the weight gradient took 2.8 ms per call (576 channels at 2 x 2,
  batch 64) against 0.16 ms as a batched product: per channel, the output gradient's
  positions against the input's (``torch.bmm``, (C, out positions, N) x (C, N, in
  positions)), then each (out, in) pair added to the kernel tap that links them (a fixed 0/1
  matrix). 1.7 -> 0.24 ms for 240 channels at 4 x 4, 16.4 -> 0.28 ms for a 7x7 kernel at
  2 x 2; where the kernel has fewer taps than the input has positions (3x3 at 4 x 4, 5x5 at
  8 x 8) oneDNN was as fast or faster, and keeps it.

:func:`small_conv_grads` swaps, for the duration of a ``with`` block (a training epoch), the
forward of each eligible convolution for one whose backward computes the weight gradient
that way; the forward's result is the same ``F.conv2d`` and the input gradient is still
``aten.convolution_backward``'s. Outside the block the modules are untouched (nothing of it
is saved, compiled or exported).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from hpsearch.models.finetune import Float32DepthwiseConv2d

__all__ = ["MAX_OUTPUT_POSITIONS", "small_conv_grads"]

MAX_OUTPUT_POSITIONS = 16  # output height x width up to which the product is used (4 x 4)
MAX_UNFOLDED_BYTES = 256 << 20  # the unfolded input of one call; larger: aten's kernel


def _aten_grads(grad_out, x, weight, stride, padding, dilation, groups, mask):
    return torch.ops.aten.convolution_backward(grad_out, x, weight, None, stride, padding,
                                               dilation, False, [0, 0], groups, mask)


class _SmallConv(torch.autograd.Function):
    """``F.conv2d`` keeping what :func:`_backward` needs; the groups follow from the shapes
    (input channels over the weight's input channels: 1 dense, C depthwise)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, dilation, x.shape[1] // weight.shape[1])


def _backward(ctx, grad_out, weight_grad):
    """The gradients of a :class:`_SmallConv`: the input's from aten, the weight's from
    ``weight_grad(grad_out, x, weight, stride, padding, dilation)``."""
    x, weight = ctx.saved_tensors
    stride, padding, dilation, has_bias = ctx.conv
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = _aten_grads(grad_out, x, weight, stride, padding, dilation,
                             x.shape[1] // weight.shape[1], [True, False, False])[0]
    if ctx.needs_input_grad[1]:
        grad_w = weight_grad(grad_out, x, weight, stride, padding, dilation)
    if has_bias and ctx.needs_input_grad[2]:
        grad_b = grad_out.sum((0, 2, 3), dtype=torch.float32).to(grad_out.dtype)
    return grad_x, grad_w, grad_b, None, None, None


def _dense_weight_grad(grad_out, x, weight, stride, padding, dilation):
    """``grad_out^T @ unfold(x)``: one matrix product (im2col)."""
    n, out_channels, height, width = grad_out.shape
    columns = F.unfold(x, weight.shape[2:], dilation, padding, stride)  # (N, C*k*k, L)
    columns = columns.transpose(1, 2).reshape(n * height * width, -1)
    rows = grad_out.permute(0, 2, 3, 1).reshape(n * height * width, out_channels)
    return (rows.t() @ columns).view(weight.shape).to(weight.dtype)


def _depthwise_weight_grad(grad_out, x, weight, stride, padding, dilation):
    """Per channel, output positions against input positions (a batched product), each pair
    then added to the kernel tap linking them (:func:`_tap_matrix`)."""
    n, channels, height, width = x.shape
    out_h, out_w = grad_out.shape[2:]
    inputs = x.permute(1, 0, 2, 3).reshape(channels, n, height * width).contiguous()
    grads = grad_out.permute(1, 2, 3, 0).reshape(channels, out_h * out_w, n).contiguous()
    pairs = torch.bmm(grads, inputs)  # (C, out positions, in positions)
    taps = _tap_matrix((height, width), (out_h, out_w), tuple(weight.shape[2:]), stride,
                       padding, dilation)
    return (pairs.view(channels, -1) @ taps).view(weight.shape)


class _DenseSmallOutput(_SmallConv):
    """``F.conv2d`` (groups 1) whose weight gradient is ``grad_out^T @ unfold(x)``."""

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return _backward(ctx, grad_out, _dense_weight_grad)


class _DepthwiseSmallInput(_SmallConv):
    """A depthwise ``F.conv2d`` whose weight gradient is a batched product per channel."""

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return _backward(ctx, grad_out, _depthwise_weight_grad)


@functools.lru_cache(maxsize=64)
def _tap_matrix(size: tuple[int, int], out_size: tuple[int, int], kernel: tuple[int, int],
                stride: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int]) -> torch.Tensor:
    """float32 (out positions x in positions, kh * kw): 1 where output position o reads input
    position i through kernel tap t (row o * in positions + i, column t), else 0."""
    per_axis = []
    for axis in (0, 1):  # hit[o, i, t]: output o reads input i through tap t on this axis
        o = np.arange(out_size[axis])[:, None, None]
        i = np.arange(size[axis])[None, :, None]
        t = np.arange(kernel[axis])[None, None, :]
        per_axis.append(o * stride[axis] + t * dilation[axis] - padding[axis] == i)
    rows, cols = per_axis
    # (oh, ih, th) x (ow, iw, tw) -> (oh, ow, ih, iw, th, tw)
    hit = rows[:, None, :, None, :, None] & cols[None, :, None, :, None, :]
    positions = out_size[0] * out_size[1] * size[0] * size[1]
    return torch.from_numpy(hit.reshape(positions, kernel[0] * kernel[1]).astype(np.float32))


def _depthwise_forward(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    weight = conv.weight
    if torch.is_autocast_enabled("cpu"):  # float32 only where the class casts to it
        float32 = type(conv) is Float32DepthwiseConv2d
    else:
        float32 = x.dtype == torch.float32
    if (not float32 or not _weight_grad_recorded(weight, x)
            or x.shape[2] * x.shape[3] > weight.shape[2] * weight.shape[3]):
        return type(conv).forward(conv, x)
    with torch.autocast("cpu", enabled=False):  # Float32DepthwiseConv2d's rule, kept
        return _DepthwiseSmallInput.apply(x.float(), weight, conv.bias, conv.stride,
                                          conv.padding, conv.dilation)


def _output_positions(conv: nn.Conv2d, x: torch.Tensor) -> int:
    positions = 1
    for axis in (0, 1):
        size = x.shape[2 + axis] + 2 * conv.padding[axis]
        size -= conv.dilation[axis] * (conv.kernel_size[axis] - 1) + 1
        positions *= size // conv.stride[axis] + 1
    return positions


def _dense_forward(conv: nn.Conv2d, dtype: torch.dtype, x: torch.Tensor) -> torch.Tensor:
    weight = conv.weight
    if not _recording(weight, x, dtype):
        return conv._conv_forward(x, weight, conv.bias)
    positions = _output_positions(conv, x)
    unfolded_bytes = x.shape[0] * positions * weight[0].numel() * dtype.itemsize
    if positions > MAX_OUTPUT_POSITIONS or unfolded_bytes > MAX_UNFOLDED_BYTES:
        return conv._conv_forward(x, weight, conv.bias)
    bias = None if conv.bias is None else conv.bias.to(dtype)
    with torch.autocast("cpu", enabled=False):  # the casts autocast would make, made here
        return _DenseSmallOutput.apply(x.to(dtype), weight.to(dtype), bias, conv.stride,
                                       conv.padding, conv.dilation)


def _weight_grad_recorded(weight: torch.Tensor, x: torch.Tensor) -> bool:
    """The weight's gradient is recorded, for a batch of images."""
    return torch.is_grad_enabled() and weight.requires_grad and x.dim() == 4


def _recording(weight: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> bool:
    """The weight's gradient is recorded, under ``dtype`` autocast, for a batch of images."""
    return (_weight_grad_recorded(weight, x) and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == dtype)


def _forward_for(module: nn.Module, amp_dtype: torch.dtype | None):
    """The replacement forward for ``module``, or None where it keeps its own."""
    if (type(module) not in (nn.Conv2d, Float32DepthwiseConv2d) or module.padding_mode != "zeros"
            or isinstance(module.padding, str) or "forward" in vars(module)):
        return None
    kernel = module.kernel_size
    if (type(module) is nn.Conv2d and amp_dtype == torch.bfloat16 and module.groups == 1
            and kernel[0] * kernel[1] > 1):
        return functools.partial(_dense_forward, module, amp_dtype)
    float32 = type(module) is Float32DepthwiseConv2d or amp_dtype is None  # when it runs
    if (float32 and module.groups > 1 and module.groups == module.in_channels
            == module.out_channels and module.weight.dtype == torch.float32):
        return functools.partial(_depthwise_forward, module)
    return None


@contextlib.contextmanager
def small_conv_grads(model: nn.Module, device: torch.device,
                     amp_dtype: torch.dtype | None) -> Iterator[None]:
    """Within the block, train ``model``'s convolutions on small maps with the faster weight
    gradients (see the module docstring).

    Applies only on a CPU, to an eager model (a ``torch.compile`` wrapper is left alone),
    while the weight's gradient is recorded, to an ``nn.Conv2d`` itself (or a
    ``Float32DepthwiseConv2d``; no other subclass) with zero padding given in pixels, and:

    - dense (groups 1, a kernel larger than 1 x 1), under bf16 autocast (``amp_dtype``
      ``torch.bfloat16``), where the output of that call has at most
      :data:`MAX_OUTPUT_POSITIONS` positions;
    - depthwise (groups = in = out channels), computed in float32 (a
      ``Float32DepthwiseConv2d``, or any depthwise ``nn.Conv2d`` outside autocast), where the
      kernel has at least as many taps as that call's input has positions.

    Elsewhere nothing changes.

    Args:
        model: the network being trained.
        device: where it trains.
        amp_dtype: the autocast dtype of its training step, or None.
    """
    if device.type != "cpu" or hasattr(model, "_orig_mod"):
        yield  # elsewhere, or a torch.compile wrapper
        return
    patched = []
    try:
        for module in model.modules():
            forward = _forward_for(module, amp_dtype)
            if forward is not None:
                module.forward = forward
                patched.append(module)
        yield
    finally:
        for module in patched:
            vars(module).pop("forward", None)
