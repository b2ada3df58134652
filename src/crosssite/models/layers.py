"""Layers that compute exactly what their torch counterparts compute, faster or in less memory on a CPU.

COVID-Net is built from them (crosssite.models.covidnet); they have the parameters and state_dict
keys of the torch layers they stand for, so checkpoints do not depend on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: feature maps of at most this many pixels run their 1x1 convs as one matrix product
MATMUL_MAX_PIXELS = 14 * 14


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution that runs as one matrix product on small channels_last feature maps.

    A 1x1 conv over an (N, C, H, W) map in channels_last layout is the product of the (N*H*W, C)
    pixel matrix with the (C_out, C) weight, and the permutes below are views, not copies. On a
    CPU, MKL's matrix product beats oneDNN's 1x1 convolution (forward and backward) where the maps
    are small (the last stages: measured 1.35x at 7x7, even at 14x14, slower at 28x28 and above);
    elsewhere, and in NCHW layout, it is the ordinary convolution.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        small = x.dim() == 4 and x.shape[2] * x.shape[3] <= MATMUL_MAX_PIXELS
        if small and x.is_contiguous(memory_format=torch.channels_last):
            return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)
        return super().forward(x)


class _MaxPool2x2(torch.autograd.Function):
    """2x2 max pooling, optionally ReLU'd, that keeps 2-5 bytes per output value for the backward pass.

    A ReLU before a max pool keeps its whole full-size output for the backward pass, and torch's
    max pool an int64 index per output value. Here ReLU comes after pooling (the two commute
    exactly: ReLU is monotone) and keeps a bool per output value, and the indices are kept in the
    smallest integer type that holds them (int16 for feature maps up to 181 x 181). The gradients
    are torch's.
    """

    @staticmethod
    def forward(ctx, x: Tensor, relu: bool) -> Tensor:
        pooled, indices = F.max_pool2d_with_indices(x, 2)
        small = torch.int16 if x.shape[-2] * x.shape[-1] <= torch.iinfo(torch.int16).max else torch.int32
        ctx.save_for_backward(indices.to(small), pooled > 0 if relu else None)
        ctx.input_shape = x.shape
        ctx.channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return pooled.clamp_min_(0) if relu else pooled

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        indices, positive = ctx.saved_tensors
        if positive is not None:
            grad = grad * positive
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        # torch's backward reads only the shape and layout of its input: an empty tensor stands in for it
        geometry = torch.empty(ctx.input_shape, dtype=grad.dtype, device=grad.device, memory_format=layout)
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad, geometry, [2, 2], [2, 2], [0, 0], [1, 1], False, indices.long()
        ), None


def _training(x: Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def max_pool_2x2(x: Tensor) -> Tensor:
    """F.max_pool2d(x, 2), in less memory when it is trained."""
    return _MaxPool2x2.apply(x, False) if _training(x) else F.max_pool2d(x, 2)


def relu_max_pool_2x2(x: Tensor) -> Tensor:
    """F.max_pool2d(F.relu(x), 2), in less memory when it is trained."""
    return _MaxPool2x2.apply(x, True) if _training(x) else F.max_pool2d(x, 2).clamp_min_(0)


class MaxPool2x2(nn.Module):
    """nn.MaxPool2d(2), as `max_pool_2x2`."""

    def forward(self, x: Tensor) -> Tensor:
        return max_pool_2x2(x)


class ReLUMaxPool2x2(nn.Module):
    """nn.ReLU() followed by nn.MaxPool2d(2), as `relu_max_pool_2x2`."""

    def forward(self, x: Tensor) -> Tensor:
        return relu_max_pool_2x2(x)


def as_torch_layers(module: nn.Module) -> nn.Module:
    """Put torch's own layers in place of this module's layers (in place; parameters stay the same objects).

    The result computes the same function the plain way: what a straightforward implementation of
    the network runs (benchmarks/throughput.py's baseline), and what tools that know only torch's
    layer types (exporters, other libraries) expect.
    """
    for name, child in module.named_children():
        if isinstance(child, PointwiseConv):
            conv = nn.Conv2d(child.in_channels, child.out_channels, kernel_size=1)
            conv.weight, conv.bias = child.weight, child.bias
            replacement: nn.Module = conv
        elif isinstance(child, ReLUMaxPool2x2):
            replacement = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))
        elif isinstance(child, MaxPool2x2):
            replacement = nn.MaxPool2d(2)
        else:
            as_torch_layers(child)
            continue
        setattr(module, name, replacement)
    return module
