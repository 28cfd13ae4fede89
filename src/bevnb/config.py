"""The deployment constants of BEVFusion's ResNet50 camera branch, as CUDA-BEVFusion builds it.

Source: MIT BEVFusion ``configs/nuscenes/det/transfusion/secfpn/camera+lidar/resnet50/default.yaml`` at the
commit CUDA-BEVFusion pins (``db75150``), and ``main.cpp``'s ``GeometryParameter``. Another rig's configuration comes
from its rig file (``bevnb.rig``); a configuration that cannot work raises ``ConfigError`` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Bound = tuple[float, float, float]
# nuScenes' ten detection classes in BEVFusion's order (configs/nuscenes/default.yaml ``object_classes``): a label is
# an index into it, for the synthetic scene's boxes and for the detection head's output alike
CLASS_NAMES = (
    "car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle", "pedestrian",
    "traffic_cone",
)  # fmt: skip
FEATURE_STRIDE = 8  # the neck's level 0 (ResNet layer2) is 1/8 of the network input

# What bevnb agrees to allocate for one configuration (R50 uses about 1/32, 1/16 and 1/32 of each): every camera's
# input pixels N·iH·iW (the img tensor), frustum points N·D·fH·fW (the plan keeps a few int64 per point) and BEV
# cells X·Y·Z (bev_pool's output is C·Z × X × Y floats). A rig beyond them is refused before anything is allocated.
MAX_INPUT_PIXELS = 2**25
MAX_FRUSTUM_POINTS = 2**25
MAX_GRID_CELLS = 2**22


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
    8, bounds that split into whole cells, an even X and Y for the stride-2 downsample, and sizes within
    ``MAX_INPUT_PIXELS``, ``MAX_FRUSTUM_POINTS`` and ``MAX_GRID_CELLS``.
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
        if self.num_cameras * iH * iW > MAX_INPUT_PIXELS:
            raise ConfigError(
                "image_size",
                f"{self.num_cameras} cameras × {iH}×{iW} pixels is more input than bevnb allocates "
                f"({MAX_INPUT_PIXELS:,} pixels in all)",
            )
        cells = {}
        for name in ("xbound", "ybound", "zbound", "dbound"):
            lo, hi, step = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and step > 0 and hi > lo):
                raise ConfigError(name, f"(low, high, step) = {(lo, hi, step)} needs low < high and step > 0")
            cells[name] = (hi - lo) / step
            limit = MAX_FRUSTUM_POINTS if name == "dbound" else MAX_GRID_CELLS
            if not cells[name] <= limit:  # also catches inf: (high - low) can overflow
                raise ConfigError(name, f"(high - low) / step = {cells[name]:.4g} cells, more than bevnb allocates")
            if name != "dbound" and abs(cells[name] - round(cells[name])) > 1e-6 * max(1.0, cells[name]):
                raise ConfigError(name, f"(high - low) / step = {cells[name]:.4g} is not a whole number of cells")
        X, Y, Z = self.grid_size
        if X * Y * Z > MAX_GRID_CELLS:
            axis = max(("xbound", "ybound", "zbound"), key=cells.get)
            raise ConfigError(axis, f"a {X}×{Y}×{Z} grid is more cells than bevnb allocates ({MAX_GRID_CELLS:,})")
        if self.frustum_points > MAX_FRUSTUM_POINTS:
            raise ConfigError(
                "dbound",
                f"{self.depth_bins} depth bins make {self.frustum_points:,} frustum points, more than bevnb plans "
                f"({MAX_FRUSTUM_POINTS:,})",
            )

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
