"""The oracle lift: proof that geometry, plan and kernel put things where they are, without trained weights.

A trained depthnet predicts, per feature-map pixel, *where along the ray* the surface is and *what* is there. The
oracle replaces both predictions with ground truth from the synthetic scene:

* depth weights: one-hot at the depth bin of the lidar depth measured at that pixel (no lidar point → no mass);
* features: the pixel's colour (channels 0–2), a 1 that counts lifted points (channel 3), and one channel per box
  (4 + k), 1 where the renderer's instance map says the pixel sees box k.

Pooled through the same plan and kernel as the network's outputs, the colour channels draw a bird's-eye picture of
the scene and each box channel must land inside that box's footprint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .bevpool import bev_pool
from .config import R50, CameraConfig
from .data import denormalize_image
from .geometry import BevPoolPlan, depth_map

FOOTPRINT_MARGIN_M = 0.6  # chapter 07's margin for R50's 0.3 m cells; see footprint_margin for any grid
BOX_CHANNEL0 = 4  # channels 0–2 colour, 3 count, then one per box


@dataclass
class OracleLift:
    """``bev [1, C, X, Y]``: channels 0–2 the summed colour, 3 the number of lifted points, 4 + k the mass of box k;
    ``lifted`` and ``inside`` hold each box's total lifted mass and the part inside its footprint grown by ``margin``
    metres, per box ``[K]``; ``lidar_points`` counts the lidar points inside each box, ``seen_pixels`` the image
    pixels where a camera sees the box and holds a consistent lidar depth (a box "seen by a camera and the lidar");
    ``in_grid`` says whether the box's footprint covers a cell of the BEV grid at all (a rig's grid may end before
    a box that its cameras still see)."""

    bev: Tensor
    boxes: Tensor
    lifted: Tensor
    inside: Tensor
    lidar_points: Tensor
    seen_pixels: Tensor
    in_grid: Tensor
    margin: float

    @property
    def share_inside(self) -> Tensor:
        """Per box, the fraction of its lifted mass inside its footprint grown by ``margin`` (NaN when nothing of it
        was lifted)."""
        return torch.where(self.lifted > 0, self.inside / self.lifted.clamp_min(1e-12), float("nan"))


def oracle_layers(sample: dict, layers: int = 2, config: CameraConfig = R50) -> list[tuple[Tensor, Tensor]]:
    """Ground-truth ``(depth_weights [N, D, fH, fW], features [N, fH, fW, C])`` for a synthetic sample, in layers.

    Each feature-map pixel stands for the ``8 × 8`` image pixels around its frustum pixel
    ``(linspace(0, iW-1, fW), linspace(0, iH-1, fH))``, where the lidar may have measured several surfaces. Layer 0
    lifts the **nearest** one: its depth (one-hot over the D bins), its colour (channels 0–2), a count (channel 3)
    and its box label (box k → channel 4 + k). A cell carries a single feature vector, so a far box that shares
    every cell with a nearer object would vanish; layer 1 therefore lifts, per cell, the nearest surface of *another*
    box than layer 0's (box channels only), and so on. A cell where the lidar measured nothing lifts nothing.
    """
    boxes = sample["gt_boxes"][0]
    C, D, N = config.out_channels, config.depth_bins, config.num_cameras
    if BOX_CHANNEL0 + len(boxes) > C:
        raise ValueError(f"the oracle needs {BOX_CHANNEL0} + {len(boxes)} channels, the config has {C}")
    (iH, iW), (fH, fW) = config.image_size, config.feature_size
    rows = torch.linspace(0, iH - 1, fH).round().long()
    cols = torch.linspace(0, iW - 1, fW).round().long()
    offsets = torch.arange(-4, 4)
    r = (rows[:, None] + offsets).clamp(0, iH - 1)  # [fH, 8]
    c = (cols[:, None] + offsets).clamp(0, iW - 1)  # [fW, 8]
    window = (r[:, None, :, None] * iW + c[None, :, None, :]).reshape(fH, fW, 64).expand(N, -1, -1, -1)

    lidar = consistent_lidar_depth(sample, config)
    depth = lidar.flatten(1).gather(1, window.flatten(1)).view(N, fH, fW, 64)
    label = sample["instance_map"][0].flatten(1).gather(1, window.flatten(1)).view(N, fH, fW, 64)
    rgb = denormalize_image(sample["img"][0]).flatten(2)  # [N, 3, iH·iW]
    lo, _, step = config.dbound
    out = []
    for layer in range(layers):
        nearest = depth.argmin(-1, keepdim=True)
        d = depth.gather(-1, nearest).squeeze(-1)
        k = label.gather(-1, nearest).squeeze(-1)
        bins = ((d - lo) / step).round()
        valid = torch.isfinite(d) & (bins >= 0) & (bins < D) & ((k >= 0) | (layer == 0))
        depth_weights = F.one_hot(bins.clamp(0, D - 1).long(), D).permute(0, 3, 1, 2).float() * valid[:, None]
        features = torch.zeros(N, fH, fW, C)
        if layer == 0:
            pixel = window.gather(-1, nearest).squeeze(-1).flatten(1)  # [N, fH·fW]
            colour = rgb.gather(2, pixel[:, None].expand(-1, 3, -1)).view(N, 3, fH, fW)
            features[..., :3] = colour.permute(0, 2, 3, 1)
            features[..., 3] = 1.0
        for box in range(len(boxes)):
            features[..., BOX_CHANNEL0 + box] = (k == box).float()
        out.append((depth_weights, features))
        # Next layer: what this one lifted, and everything with the same label, is used up.
        depth = torch.where(label == k[..., None], math.inf, depth)
    return out


def consistent_lidar_depth(sample: dict, config: CameraConfig = R50, tolerance: float = 0.02) -> Tensor:
    """The lidar depth map ``[N, iH, iW]`` where it agrees with what the camera sees (within ``tolerance``
    relative), ``inf`` elsewhere. The lidar sits apart from the cameras, so near an object's edge a lidar point can
    hit the road behind a car at a pixel where the camera sees the car: parallax. Its depth would lift the car's
    label to the road. The renderer's depth (``camera_depth``) tells which points the camera really sees."""
    lidar = depth_map(sample, config)[0, :, 0]
    seen = (lidar > 0) & ((lidar - sample["camera_depth"][0]).abs() <= tolerance * lidar)
    return torch.where(seen, lidar, math.inf)


def weighted_points(plan: BevPoolPlan, depth_weights: Tensor) -> BevPoolPlan:
    """The plan's points whose depth weight is nonzero, in the same order (cells keep their intervals). A one-hot
    depth weights about 1 point in D, so pooling the subset gives the same BEV for ~1/118 of the work."""
    return plan.select_points(depth_weights.flatten()[plan.ranks_depth.long()] != 0)


def footprint_margin(config: CameraConfig = R50) -> float:
    """The cell diagonal plus the depth-bin step (m): how far a lifted point can sit from the surface it came from,
    through truncation into a cell and rounding to a depth bin. 0.92 m for R50, 1.17 m for 0.3 m × 0.6 m cells."""
    (dx, dy, _), step = config.cell_size, config.dbound[2]
    return math.hypot(dx, dy) + step


def footprint_mask(box: Tensor, config: CameraConfig = R50, margin: float = FOOTPRINT_MARGIN_M) -> Tensor:
    """``[X, Y]`` bool: BEV cells whose centre lies in the box's footprint grown by ``margin`` metres per side."""
    X, Y, _ = config.grid_size
    (x0, y0, _), (dx, dy, _) = config.cell_center0, config.cell_size
    xs = x0 + dx * torch.arange(X, dtype=torch.float32)
    ys = y0 + dy * torch.arange(Y, dtype=torch.float32)
    gx, gy = torch.meshgrid(xs - box[0], ys - box[1], indexing="ij")
    cos, sin = math.cos(box[6]), math.sin(box[6])
    along, across = gx * cos + gy * sin, -gx * sin + gy * cos
    return (along.abs() <= box[3] / 2 + margin) & (across.abs() <= box[4] / 2 + margin)


def lidar_points_in_boxes(points: Tensor, boxes: Tensor) -> Tensor:
    """``[K]``: how many lidar points fall inside each box (x, y, z bottom centre, dx, dy, dz, yaw)."""
    counts = []
    for box in boxes:
        p = points[:, :3] - box[:3]
        cos, sin = math.cos(box[6]), math.sin(box[6])
        along, across = p[:, 0] * cos + p[:, 1] * sin, -p[:, 0] * sin + p[:, 1] * cos
        inside = (along.abs() <= box[3] / 2) & (across.abs() <= box[4] / 2) & (p[:, 2] >= 0) & (p[:, 2] <= box[5])
        counts.append(int(inside.sum()))
    return torch.tensor(counts)


def oracle_lift(
    sample: dict,
    plan: BevPoolPlan,
    backend: str = "triton",
    layers: int = 2,
    config: CameraConfig = R50,
    margin: float = FOOTPRINT_MARGIN_M,
) -> OracleLift:
    """Lift the ground truth of a synthetic sample through ``plan`` with the ``backend`` kernel, layer by layer
    (``oracle_layers``), each layer pooling only the plan's weighted points (``weighted_points``), and measure each
    box's mass inside its footprint grown by ``margin`` metres."""
    bev = torch.zeros(plan.output_shape)
    for depth_weights, features in oracle_layers(sample, layers, config):
        bev += bev_pool(depth_weights, features, weighted_points(plan, depth_weights), backend)
    boxes = sample["gt_boxes"][0]
    mass = bev[0, BOX_CHANNEL0 : BOX_CHANNEL0 + len(boxes)]
    lifted = mass.sum((1, 2))
    inside = torch.stack([mass[k][footprint_mask(box, config, margin)].sum() for k, box in enumerate(boxes)])
    in_grid = torch.stack([footprint_mask(box, config, 0.0).any() for box in boxes])
    seen = torch.isfinite(consistent_lidar_depth(sample, config))
    instance = sample["instance_map"][0]
    seen_pixels = torch.tensor([int((seen & (instance == k)).sum()) for k in range(len(boxes))])
    points = lidar_points_in_boxes(sample["points"][0], boxes)
    return OracleLift(bev, boxes, lifted, inside, points, seen_pixels, in_grid, margin)
