"""The deployment constants of BEVFusion's ResNet50 camera branch, as CUDA-BEVFusion builds it.

Source: MIT BEVFusion ``configs/nuscenes/det/transfusion/secfpn/camera+lidar/resnet50/default.yaml`` at the
commit CUDA-BEVFusion pins (``db75150``), and ``main.cpp``'s ``GeometryParameter``. Another rig's configuration comes
from its rig file (``bevnb.rig``); a configuration that cannot work raises ``ConfigError`` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Bound = tuple[float, float, float]
FEATURE_STRIDE = 8  # the neck's level 0 (ResNet layer2) is 1/8 of the network input


class ConfigError(ValueError):
    """A ``CameraConfig`` that cannot work; ``field`` names the attribute, ``reason`` says why (one line)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass(frozen=True)
class CameraConfig:
    """Shapes and grid of the camera branch. Derived values are properties, so they cannot drift.

    ``xbound``/``ybound``/``zbound`` are ``(low, high, step)`` in metres in the lidar frame; ``dbound`` is the
    depth bin range in metres along the camera ray. Construction checks what the model needs: an input divisible by
    8, bounds that split into whole cells, an even X and Y for the stride-2 downsample.
    """

    image_size: tuple[int, int] = (256, 704)  # (iH, iW) after the test-time aug
    num_cameras: int = 6
    xbound: Bound = (-54.0, 54.0, 0.3)
    ybound: Bound = (-54.0, 54.0, 0.3)
    zbound: Bound = (-10.0, 10.0, 20.0)
    dbound: Bound = (1.0, 60.0, 0.5)
    in_channels: int = 256  # neck output channels that feed depthnet
    out_channels: int = 80  # C: BEV feature channels
    downsample: int = 2

    def __post_init__(self) -> None:
        if self.num_cameras < 1:
            raise ConfigError("num_cameras", f"a rig needs at least one camera, got {self.num_cameras}")
        iH, iW = self.image_size
        if iH <= 0 or iW <= 0 or iH % FEATURE_STRIDE or iW % FEATURE_STRIDE:
            raise ConfigError(
                "image_size",
                f"{iH}×{iW} (height × width) must be positive and divisible by {FEATURE_STRIDE}: the feature map is "
                f"the input / {FEATURE_STRIDE}",
            )
        for name in ("xbound", "ybound", "zbound", "dbound"):
            lo, hi, step = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and step > 0 and hi > lo):
                raise ConfigError(name, f"(low, high, step) = {(lo, hi, step)} needs low < high and step > 0")
            cells = (hi - lo) / step
            if name != "dbound" and abs(cells - round(cells)) > 1e-6 * max(1.0, cells):
                raise ConfigError(name, f"(high - low) / step = {cells:.4g} is not a whole number of cells")

    @property
    def feature_size(self) -> tuple[int, int]:
        """(fH, fW) = image / 8 = (32, 88) for R50: the neck's level 0."""
        return (self.image_size[0] // FEATURE_STRIDE, self.image_size[1] // FEATURE_STRIDE)

    @property
    def depth_bins(self) -> int:
        """D = len(arange(*dbound)) = 118 for R50."""
        lo, hi, step = self.dbound
        return math.ceil((hi - lo) / step)

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """nx = (X, Y, Z) cells = (360, 360, 1) for R50."""
        return tuple(round((hi - lo) / step) for lo, hi, step in (self.xbound, self.ybound, self.zbound))

    @property
    def cell_size(self) -> tuple[float, float, float]:
        """dx: the cell edge per axis in metres, (0.3, 0.3, 20)."""
        return (self.xbound[2], self.ybound[2], self.zbound[2])

    @property
    def cell_center0(self) -> tuple[float, float, float]:
        """bx: the centre of the first cell per axis, (-53.85, -53.85, 0)."""
        return tuple(lo + step / 2 for lo, _, step in (self.xbound, self.ybound, self.zbound))

    @property
    def bev_size(self) -> tuple[int, int]:
        """(X, Y) of bev_pool's output: rows are x, columns are y."""
        return self.grid_size[:2]

    @property
    def bev_channels(self) -> int:
        """Channels of bev_pool's output: C·Z (Z is collapsed into channels, as MIT does)."""
        return self.out_channels * self.grid_size[2]

    @property
    def out_bev_size(self) -> tuple[int, int]:
        """(X, Y) after the vtransform downsample, ceil(n / 2) (its stride-2 3×3 conv pads by 1): (180, 180)."""
        return tuple(-(-n // self.downsample) for n in self.bev_size)

    @property
    def frustum_points(self) -> int:
        """Candidate points of all cameras: N·D·fH·fW = 1,993,728."""
        return self.num_cameras * self.depth_bins * self.feature_size[0] * self.feature_size[1]


R50 = CameraConfig()
