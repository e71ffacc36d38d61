"""A faster weight gradient for dense convolutions with small outputs, under bf16 autocast
on a CPU.

oneDNN (torch 2.15, on this project's 2-core CPU with AMX) picks a slow bf16 kernel for the
weight gradient of a dense convolution whose output has few positions, which is where a
backbone's last stage runs on small images: resnet18 at 64 px computes its 512 -> 512 3x3
convolutions at 2 x 2, and there ``brgconv_bwd_w`` took 22.6 ms per call (batch 64) where
one matrix product of the output gradient and the unfolded input (im2col) took 3.7 ms. A
resnet18 training step at 64 px went from about 180 to about 235 images/s. The product is
used only where it was measured faster: not in fp32 (oneDNN's own kernel was as fast), not
at outputs of 8 x 8 or more (slower), not for 1 x 1 or grouped convolutions (no gain; the
backbones' depthwise convolutions run in float32 anyway, see
``hpsearch.models.finetune.Float32DepthwiseConv2d``, a class this rule leaves alone).

:func:`bf16_conv_grads` swaps, for the duration of a ``with`` block (a training epoch), the
forward of each eligible ``nn.Conv2d`` for one whose backward computes the weight gradient
that way; the forward's result is the same ``F.conv2d`` and the input gradient is still
``aten.convolution_backward``'s. Outside the block the modules are untouched (nothing of it
is saved, compiled or exported).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["MAX_OUTPUT_POSITIONS", "bf16_conv_grads"]

MAX_OUTPUT_POSITIONS = 16  # output height x width up to which the product is used (4 x 4)
MAX_UNFOLDED_BYTES = 256 << 20  # the unfolded input of one call; larger: aten's kernel


def _aten_grads(grad_out, x, weight, stride, padding, dilation, groups, mask):
    return torch.ops.aten.convolution_backward(grad_out, x, weight, None, stride, padding,
                                               dilation, False, [0, 0], groups, mask)


class _DenseSmallOutput(torch.autograd.Function):
    """``F.conv2d`` (groups 1) whose weight gradient is ``grad_out^T @ unfold(x)``."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, has_bias = ctx.conv
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _aten_grads(grad_out, x, weight, stride, padding, dilation, 1,
                                 [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            n, out_channels, height, width = grad_out.shape
            columns = F.unfold(x, weight.shape[2:], dilation, padding, stride)  # (N, C*k*k, L)
            columns = columns.transpose(1, 2).reshape(n * height * width, -1)
            rows = grad_out.permute(0, 2, 3, 1).reshape(n * height * width, out_channels)
            grad_w = (rows.t() @ columns).view(weight.shape).to(weight.dtype)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3), dtype=torch.float32).to(grad_out.dtype)
        return grad_x, grad_w, grad_b, None, None, None


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


def _recording(weight: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> bool:
    """The weight's gradient is recorded, under ``dtype`` autocast, for a batch of images."""
    return (torch.is_grad_enabled() and weight.requires_grad and x.dim() == 4
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype)


def _forward_for(module: nn.Module):
    """The replacement forward for ``module``, or None where it keeps its own."""
    if (type(module) is not nn.Conv2d or module.padding_mode != "zeros"
            or isinstance(module.padding, str) or "forward" in vars(module)):
        return None
    kernel = module.kernel_size
    if module.groups == 1 and kernel[0] * kernel[1] > 1:
        return _dense_forward
    return None


@contextlib.contextmanager
def bf16_conv_grads(model: nn.Module, device: torch.device,
                    amp_dtype: torch.dtype | None) -> Iterator[None]:
    """Within the block, train ``model``'s small convolutions with the im2col weight gradient.

    Applies only on a CPU under bf16 autocast (``amp_dtype`` ``torch.bfloat16``), to an
    eager model (a ``torch.compile`` wrapper is left alone), while the weight's gradient is
    recorded, and to an ``nn.Conv2d`` itself (not a subclass) that is dense (groups 1, a
    kernel larger than 1 x 1, zero padding given in pixels) and whose output in that call
    has at most :data:`MAX_OUTPUT_POSITIONS` positions. Elsewhere nothing changes.

    Args:
        model: the network being trained.
        device: where it trains.
        amp_dtype: the autocast dtype of its training step, or None.
    """
    if device.type != "cpu" or amp_dtype != torch.bfloat16 or hasattr(model, "_orig_mod"):
        yield  # elsewhere, or a torch.compile wrapper
        return
    patched = []
    try:
        for module in model.modules():
            forward = _forward_for(module)
            if forward is not None:
                module.forward = functools.partial(forward, module, amp_dtype)
                patched.append(module)
        yield
    finally:
        for module in patched:
            vars(module).pop("forward", None)
