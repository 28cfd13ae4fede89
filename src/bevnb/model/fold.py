"""Fold BatchNorm into the convolution before it, as CUDA-BEVFusion's ``fuse_conv_bn`` does before calibration."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """In place: ``bn(conv(x)) == conv'(x)`` with ``w' = w·γ/σ`` and ``b' = (b - μ)·γ/σ + β``."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a convolution (float or QuantConv2d) among a module's children,
    recursively, and replace it with ``nn.Identity`` (its state_dict keys disappear and the conv gains a bias, as in
    the PTQ checkpoint).

    Pairs are found by attribute order, like upstream: ``conv1``/``bn1`` in a ResNet block, ``conv``/``bn`` in a
    ConvModule, ``0``/``1`` in a Sequential. Returns the number of folded BatchNorms.
    """
    folded = 0
    previous: tuple[str, nn.Module] | None = None
    for name, child in list(module.named_children()):
        if (
            isinstance(child, nn.BatchNorm2d)
            and previous is not None
            and isinstance(previous[1], nn.modules.conv._ConvNd)
        ):
            fold_conv_bn(previous[1], child)
            setattr(module, name, nn.Identity())
            folded += 1
        else:
            folded += fold_batchnorm(child)
        previous = (name, child)
    return folded
