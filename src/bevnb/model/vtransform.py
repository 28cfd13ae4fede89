"""DepthLSSTransform: the depth-assisted lift of BEVFusion's camera branch (MIT ``vtransforms/depth_lss.py``).

Three small networks and the grid constants, under the upstream names:

* ``dtransform`` lifts the sparse lidar depth map ``[B·N, 1, 256, 704]`` to ``[B·N, 64, 32, 88]``;
* ``depthnet`` reads ``cat(dtransform, neck)`` ``[B·N, 320, 32, 88]`` and predicts ``D + C = 198`` channels:
  118 depth logits (softmax over D) and 80 feature channels;
* ``downsample`` turns the pooled BEV ``[1, 80, 360, 360]`` into ``[1, 80, 180, 180]``.

``dx``, ``bx``, ``nx`` and ``frustum`` are persistent buffers, so they sit in ``state_dict()`` as in a BEVFusion
checkpoint (upstream stores them as frozen Parameters; the keys and shapes are the same). They are derived from the
configuration (grid and input size), not learned: loading a checkpoint made for another rig rebuilds them
(``DERIVED_BUFFERS``, see ``checkpoint.load_camera_state``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import R50, CameraConfig
from ..geometry import create_frustum


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = True
) -> list[nn.Module]:
    """``[Conv2d (padding k // 2), BatchNorm2d, ReLU]``, to be unpacked into an ``nn.Sequential``."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


DERIVED_BUFFERS = ("dx", "bx", "nx", "frustum")  # computed from the CameraConfig, never learned


class DepthLSSTransform(nn.Module):
    """The layers and grid constants of the lift; the pooling itself lives in ``bevnb.bevpool``."""

    def __init__(self, config: CameraConfig = R50) -> None:
        super().__init__()
        self.config = config
        D, C = config.depth_bins, config.out_channels
        self.register_buffer("dx", torch.tensor(config.cell_size, dtype=torch.float32))
        self.register_buffer("bx", torch.tensor(config.cell_center0, dtype=torch.float32))
        self.register_buffer("nx", torch.tensor(config.grid_size, dtype=torch.int64))
        self.register_buffer("frustum", create_frustum(config))
        self.dtransform = nn.Sequential(
            *conv_bn_relu(1, 8, 1), *conv_bn_relu(8, 32, 5, stride=4), *conv_bn_relu(32, 64, 5, stride=2)
        )
        self.depthnet = nn.Sequential(
            *conv_bn_relu(config.in_channels + 64, config.in_channels, 3),
            *conv_bn_relu(config.in_channels, config.in_channels, 3),
            nn.Conv2d(config.in_channels, D + C, 1),
        )
        if config.downsample != 2:
            raise ValueError(f"DepthLSSTransform supports downsample=2 (as upstream), got {config.downsample}")
        self.downsample = nn.Sequential(
            *conv_bn_relu(C, C, 3, bias=False),
            *conv_bn_relu(C, C, 3, stride=2, bias=False),
            *conv_bn_relu(C, C, 3, bias=False),
        )

    def depth_and_features(self, x: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
        """The split point: neck ``x [B·N, 256, fH, fW]`` and depth map ``[B·N, 1, iH, iW]`` →
        ``(depth_weights [B·N, D, fH, fW] softmax over D, feat [B·N, fH, fW, C] NHWC)``.

        This is where MIT's ``get_cam_feats`` would take the outer product ``depth ⊗ feat``
        (``[B·N, D, fH, fW, C]``, 638 MB in fp32); the split stops here and lets bev_pool fuse it.
        """
        D, C = self.config.depth_bins, self.config.out_channels
        x = self.depthnet(torch.cat([self.dtransform(depth), x], dim=1))
        depth_weights = x[:, :D].softmax(dim=1)
        feat = x[:, D : D + C].permute(0, 2, 3, 1)
        return depth_weights, feat
