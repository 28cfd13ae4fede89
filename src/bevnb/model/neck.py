"""GeneralizedLSSFPN as BEVFusion-R50 configures it: in ``[512, 1024, 2048]``, out 256, BN + ReLU.

Only two levels come out (``num_outs=3`` in the config is ignored upstream) and BEVFusion keeps the first:
``[B·N, 256, 32, 88]``. Top-down pass, per camera:

* i=1: upsample layer4 ``[2048, 8, 22]`` to ``16×44``, concat with layer3 → ``[3072, 16, 44]`` → lateral 1 →
  fpn 1 → ``[256, 16, 44]``;
* i=0: upsample that to ``32×88``, concat with layer2 → ``[768, 32, 88]`` → lateral 0 → fpn 0 → ``[256, 32, 88]``.

The upsample sizes are Python ints, so the ONNX Resize gets constant sizes instead of a Shape-driven subgraph (the
same change CUDA-BEVFusion's quantized neck makes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvModule(nn.Module):
    """mmcv's ConvModule with BN2d and ReLU: the conv has no bias. Keys ``conv.*``, ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class Concat(nn.Module):
    """``cat(tensors, dim=1)`` as a module, so that the int8 recipe can give its inputs one shared quantizer."""

    def forward(self, tensors: list[Tensor]) -> Tensor:
        return torch.cat(tensors, dim=1)


class GeneralizedLSSFPN(nn.Module):
    """``forward((c3 [B·N, 512, 32, 88], c4 [.., 1024, 16, 44], c5 [.., 2048, 8, 22]))`` →
    ``(p3 [B·N, 256, 32, 88], p4 [B·N, 256, 16, 44])``.

    ``quant_concat0`` is the concat of the first top-down step (i=1) and ``quant_concat1`` that of the second (i=0):
    the names of CUDA-BEVFusion's quantized neck, so that their amax keys line up with an upstream PTQ checkpoint.
    """

    def __init__(self, in_channels: tuple[int, ...] = (512, 1024, 2048), out_channels: int = 256) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(len(in_channels) - 1):
            # Level i concatenates its own input with the upsampled level above (the raw input for the top one).
            above = in_channels[i + 1] if i == len(in_channels) - 2 else out_channels
            self.lateral_convs.append(ConvModule(in_channels[i] + above, out_channels, 1))
            self.fpn_convs.append(ConvModule(out_channels, out_channels, 3))
        self.quant_concat0 = Concat()
        self.quant_concat1 = Concat()

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        laterals = list(inputs)
        concats = (self.quant_concat1, self.quant_concat0)
        for i in range(len(laterals) - 2, -1, -1):
            size = [int(s) for s in laterals[i].shape[2:]]
            up = F.interpolate(laterals[i + 1], size=size, mode="bilinear", align_corners=False)
            x = concats[i]([laterals[i], up])
            laterals[i] = self.fpn_convs[i](self.lateral_convs[i](x))
        return tuple(laterals[:-1])
