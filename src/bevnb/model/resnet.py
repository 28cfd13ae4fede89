"""mmdet's ResNet50 (style "pytorch", eval-mode BatchNorm), with torchvision's parameter names.

BEVFusion-R50 uses ``out_indices=(1, 2, 3)``: the outputs of layer2, layer3 and layer4. For one camera image
``[3, 256, 704]``: stem ``[64, 128, 352]`` → maxpool ``[64, 64, 176]`` → layer1 ``[256, 64, 176]`` →
layer2 ``[512, 32, 88]`` → layer3 ``[1024, 16, 44]`` → layer4 ``[2048, 8, 22]``.
"""

from __future__ import annotations

from torch import Tensor, nn


class Bottleneck(nn.Module):
    """1×1 → 3×3 (carries the stride, "pytorch" style) → 1×1 ×4, plus the identity or a 1×1 downsample.

    ``residual_quantizer`` is an identity in the float model. The int8 recipe (``bevnb.quant``) replaces it with a
    quantizer so that only the identity input of the Add carries Q/DQ, as CUDA-BEVFusion does: TensorRT can then
    fuse conv3 + add + relu.
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.residual_quantizer: nn.Module = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + self.residual_quantizer(identity))


class ResNet50(nn.Module):
    """``forward(x [B·N, 3, H, W])`` → ``(layer2 [B·N, 512, H/8, W/8], layer3 [.., 1024, H/16, W/16],
    layer4 [.., 2048, H/32, W/32])``. No fc layer, as in the BEVFusion checkpoint."""

    blocks = (3, 4, 6, 3)
    out_indices = (1, 2, 3)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for i, (n, width) in enumerate(zip(self.blocks, (64, 128, 256, 512), strict=True)):
            stride = 1 if i == 0 else 2
            layer = []
            for k in range(n):
                layer.append(Bottleneck(in_channels, width, stride if k == 0 else 1))
                in_channels = width * Bottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def train(self, mode: bool = True) -> ResNet50:
        """mmdet's ``norm_eval=True``: BatchNorm always uses its running statistics."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self
