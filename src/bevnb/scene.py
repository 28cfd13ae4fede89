"""The synthetic scene for any rig (``bevnb.rig``): the boxes, the rendered camera images and the lidar sweep.

No nuScenes data ships with bevnb, so it renders its own scene, whose ground truth is known exactly: a straight
street (textured asphalt, lane markings, sidewalks, building facades, sky) with car- and pedestrian-sized boxes.
Cameras and lidar are ray cast against the same geometry, so every pixel, every lidar point and every box agree.
The renderer casts one ray per network pixel, so its time grows with the rig's cameras × pixels.

Frames: the lidar frame of nuScenes' LIDAR_TOP (x right, y forward, z up, metres); the street runs along lidar +y
and the road lies ``lidar2ego``'s height below the lidar.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from .config import CLASS_NAMES
from .geometry import get_geometry
from .rig import Rig, as_rig

# ---------------------------------------------------------------------------------------------------------------
# The scene: a straight street along lidar +y, boxes on it

CAR, PEDESTRIAN = CLASS_NAMES.index("car"), CLASS_NAMES.index("pedestrian")

LANE_WIDTH = 3.5  # three lanes centred on x = -3.5, 0, 3.5 (m); the ego car drives in the middle one
ROAD_HALF_WIDTH = 1.5 * LANE_WIDTH  # kerb at |x| = 5.25 m
FACADE_X = 11.0  # building fronts at |x| = 11 m
BUILDING_LENGTH = 10.0  # each building is 10 m long along y, with its own height and colour
POINT_CLOUD_RANGE = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)  # R50 config ``point_cloud_range``, PointsRangeFilter

# 32-beam lidar like nuScenes' Velodyne HDL-32E: elevations from -30.67° to +10.67°, about 1080 points per ring
LIDAR_ELEVATIONS_DEG = (-30.67, 10.67)
LIDAR_BEAMS = 32
LIDAR_AZIMUTHS = 1080

_SUN = torch.nn.functional.normalize(torch.tensor([-0.35, -0.45, 0.82]), dim=0)  # light direction, lidar frame
_SKY_HORIZON = torch.tensor([0.80, 0.86, 0.92])
_SKY_ZENITH = torch.tensor([0.36, 0.55, 0.84])
_CAR_COLORS = torch.tensor(
    [[0.70, 0.08, 0.08], [0.10, 0.22, 0.55], [0.85, 0.85, 0.82], [0.55, 0.57, 0.60], [0.08, 0.08, 0.09],
     [0.85, 0.65, 0.10], [0.15, 0.42, 0.25]]
)  # fmt: skip
_SHIRT_COLORS = torch.tensor([[0.75, 0.20, 0.15], [0.20, 0.45, 0.70], [0.90, 0.80, 0.30], [0.30, 0.60, 0.35]])
_FACADE_COLORS = torch.tensor([[0.62, 0.35, 0.27], [0.78, 0.72, 0.60], [0.55, 0.55, 0.57], [0.70, 0.60, 0.45]])


@dataclass(frozen=True)
class Scene:
    """What the sensors see, in the lidar frame.

    * ``boxes [K, 7]``: x, y, z of the bottom centre, dx (length, along the heading), dy (width), dz (height), yaw
      (rad, counter-clockwise from lidar +x), the layout of mmdet3d's ``LiDARInstance3DBoxes`` without velocity;
    * ``labels [K]``: index into ``CLASS_NAMES``; ``colors [K, 3]``: body RGB in [0, 1];
    * ``ground_z``: height of the road in the lidar frame (m); ``seed``: drives textures and building heights.
    """

    boxes: Tensor
    labels: Tensor
    colors: Tensor
    ground_z: float
    seed: int = 0


def random_scene(seed: int = 0, num_cars: int = 7, num_pedestrians: int = 5, rig: Rig | None = None) -> Scene:
    """A deterministic street scene: cars in the three lanes (same direction as the ego car on the right two,
    oncoming on the left), pedestrians on the sidewalks, none overlapping each other or the ego car.

    Positions come from distinct slots (cars every 9 m of a lane, pedestrians every 3 m of a sidewalk) with a
    seeded jitter smaller than the slot gap, so boxes never intersect.
    """
    rig = as_rig(rig)
    g = torch.Generator().manual_seed(seed)
    ground_z = -float(rig.lidar2ego[2, 3])

    lanes = torch.tensor([-LANE_WIDTH, 0.0, LANE_WIDTH])
    slots = torch.arange(-40.5, 41.0, 9.0)
    lane, y = torch.cartesian_prod(lanes, slots).unbind(-1)
    free = y.abs() > 9.0  # no car right beside the ego car: it would fill a whole camera
    pick = torch.randperm(int(free.sum()), generator=g)[:num_cars]
    x, y = lane[free][pick], y[free][pick]
    n = x.numel()
    u = torch.rand(n, 6, generator=g)
    heading = torch.where(x < 0, -math.pi / 2, math.pi / 2) + math.radians(4.0) * (2 * u[:, 0] - 1)
    cars = torch.stack(
        (x + 0.3 * (2 * u[:, 1] - 1), y + 1.5 * (2 * u[:, 2] - 1), torch.full((n,), ground_z),
         4.2 + 0.7 * u[:, 3], 1.8 + 0.2 * u[:, 4], 1.5 + 0.3 * u[:, 5], heading), dim=-1,
    )  # fmt: skip

    sides = torch.tensor([-7.0, 7.0])
    slots = torch.arange(-28.5, 29.0, 3.0)
    side, y = torch.cartesian_prod(sides, slots).unbind(-1)
    pick = torch.randperm(side.numel(), generator=g)[:num_pedestrians]
    n = pick.numel()
    u = torch.rand(n, 6, generator=g)
    peds = torch.stack(
        (side[pick] + 1.2 * (2 * u[:, 0] - 1), y[pick] + 0.8 * (2 * u[:, 1] - 1), torch.full((n,), ground_z),
         0.6 + 0.2 * u[:, 2], 0.6 + 0.2 * u[:, 3], 1.6 + 0.25 * u[:, 4], 2 * math.pi * u[:, 5] - math.pi), dim=-1,
    )  # fmt: skip

    colors = torch.cat(
        (_CAR_COLORS[torch.randint(len(_CAR_COLORS), (len(cars),), generator=g)],
         _SHIRT_COLORS[torch.randint(len(_SHIRT_COLORS), (len(peds),), generator=g)])
    )  # fmt: skip
    labels = torch.tensor([CAR] * len(cars) + [PEDESTRIAN] * len(peds), dtype=torch.int64)
    return Scene(torch.cat((cars, peds)), labels, colors, ground_z, seed)


def box_corners(boxes: Tensor) -> Tensor:
    """The eight corners ``[K, 8, 3]`` of boxes ``[K, 7]`` (lidar frame): bottom four, then top four, each
    counter-clockwise from the (+dx/2, +dy/2) corner seen from above."""
    x, y, z, dx, dy, dz, yaw = boxes.unbind(-1)
    sx = torch.tensor([1.0, -1.0, -1.0, 1.0] * 2) / 2
    sy = torch.tensor([1.0, 1.0, -1.0, -1.0] * 2) / 2
    sz = torch.tensor([0.0] * 4 + [1.0] * 4)
    lx, ly, lz = sx * dx[:, None], sy * dy[:, None], sz * dz[:, None]
    c, s = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
    return torch.stack((x[:, None] + c * lx - s * ly, y[:, None] + s * lx + c * ly, z[:, None] + lz), dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# Ray casting: one vectorised pass for all camera pixels (and one for the lidar) against ground, facades, boxes

SKY, GROUND, FACADE, BOX = 0, 1, 2, 3


@dataclass(frozen=True)
class Hits:
    """The nearest surface along each of R rays ``origin + t·dir``.

    ``t [R]`` (inf for sky), ``kind [R]`` (SKY, GROUND, FACADE or BOX), ``box [R]`` (box index, -1 for other
    surfaces), ``point [R, 3]``, ``normal [R, 3]`` (unit, outward), ``height [R]`` (m above the ground).
    """

    t: Tensor
    kind: Tensor
    box: Tensor
    point: Tensor
    normal: Tensor
    height: Tensor


def cast_rays(origins: Tensor, dirs: Tensor, scene: Scene, may_hit_box: Tensor | None = None) -> Hits:
    """Intersect rays (``origins [R, 3]`` or ``[3]``, ``dirs [R, 3]``, t > 0) with ground, facades and boxes.

    ``may_hit_box [R]`` (bool, optional) limits the box test, the costly part (``[R, K]``), to those rays.
    """
    R = dirs.shape[0]
    o = origins.expand(R, 3)
    d = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)  # no 0/0 in the slab tests
    t_ground = torch.where(d[:, 2] < 0, (scene.ground_z - o[:, 2]) / d[:, 2], math.inf)
    t_facade = (torch.sign(d[:, 0]) * FACADE_X - o[:, 0]) / d[:, 0]
    top = o[:, 2] + t_facade * d[:, 2]
    below_roof = top < scene.ground_z + _building_height(torch.sign(d[:, 0]), o[:, 1] + t_facade * d[:, 1], scene.seed)
    t_facade = torch.where((t_facade > 0) & below_roof, t_facade, math.inf)
    t_box, box, box_normal = torch.full((R,), math.inf), torch.full((R,), -1), torch.zeros(R, 3)
    rays = slice(None) if may_hit_box is None else may_hit_box
    t_box[rays], box[rays], box_normal[rays] = _cast_boxes(o[rays], d[rays], scene.boxes)

    t, kind = torch.stack((torch.full((R,), math.inf), t_ground, t_facade, t_box), -1).min(-1)
    kind = torch.where(torch.isinf(t), SKY, kind)
    point = o + torch.where(torch.isinf(t), 0.0, t)[:, None] * d
    normal = torch.zeros(R, 3)
    normal[:, 2] = 1.0
    normal = torch.where((kind == FACADE)[:, None], torch.nn.functional.pad(-torch.sign(d[:, :1]), (0, 2)), normal)
    normal = torch.where((kind == BOX)[:, None], box_normal, normal)
    return Hits(t, kind, torch.where(kind == BOX, box, -1), point, normal, point[:, 2] - scene.ground_z)


def _cast_boxes(o: Tensor, d: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test of R rays against K oriented boxes at once (``[R, K]``): the nearest entry ``t [R]`` (inf if
    none), which box ``[R]``, and the outward normal of the face entered ``[R, 3]``."""
    R = o.shape[0]
    if len(boxes) == 0:
        return torch.full((R,), math.inf), torch.full((R,), -1), torch.zeros(R, 3)
    x, y, z, dx, dy, dz, yaw = boxes.unbind(-1)
    c, s = torch.cos(yaw), torch.sin(yaw)
    rot = torch.stack(
        (torch.stack((c, s, 0 * c), -1), torch.stack((-s, c, 0 * c), -1), torch.eye(3)[2].expand(len(c), 3)), 1
    )  # [K, 3, 3] lidar → box
    centre = torch.stack((x, y, z + dz / 2), -1)
    local_o = torch.einsum("kij,rkj->rki", rot, o[:, None] - centre)
    local_d = torch.einsum("kij,rj->rki", rot, d)
    half = torch.stack((dx, dy, dz), -1) / 2
    t1, t2 = (-half - local_o) / local_d, (half - local_o) / local_d
    t_near, axis = torch.minimum(t1, t2).max(-1)
    t_far = torch.maximum(t1, t2).amin(-1)
    t_near = torch.where((t_near <= t_far) & (t_near > 0), t_near, math.inf)
    t, box = t_near.min(-1)
    rows = torch.arange(R)
    a = axis[rows, box]
    local_n = torch.zeros(R, 3)
    local_n[rows, a] = -torch.sign(local_d[rows, box, a])
    normal = torch.einsum("rji,rj->ri", rot[box], local_n)  # box → lidar: transpose of rot
    return t, box, normal


@cache
def _random_table(seed: int) -> Tensor:
    """``[256, 256]`` uniform values in [0, 1) from ``seed``: the lattice of the value noise and the buildings'
    heights and colours. Indices wrap around, so the texture repeats every 256 lattice cells."""
    return torch.rand(256, 256, generator=torch.Generator().manual_seed(seed))


def _lookup(table: Tensor, i: Tensor, j: Tensor) -> Tensor:
    return table.view(-1)[((i.long() & 255) << 8) | (j.long() & 255)]


def _value_noise(x: Tensor, y: Tensor, cell: float, table: Tensor) -> Tensor:
    """Smooth noise in [0, 1): the table's values on a ``cell``-metre lattice, blended with smoothstep weights."""
    gx, gy = x / cell, y / cell
    ix, iy = gx.floor(), gy.floor()
    fx, fy = gx - ix, gy - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    top = torch.lerp(_lookup(table, ix, iy), _lookup(table, ix + 1, iy), fx)
    bottom = torch.lerp(_lookup(table, ix, iy + 1), _lookup(table, ix + 1, iy + 1), fx)
    return torch.lerp(top, bottom, fy)


def _building_height(side: Tensor, y: Tensor, seed: int) -> Tensor:
    """Height (m) of the building on ``side`` (±1) of the street at ``y``: 6 to 18 m, one value per building."""
    return 6.0 + 12.0 * _lookup(_random_table(seed), side > 0, torch.floor(y / BUILDING_LENGTH))


def _albedo(hits: Hits, scene: Scene) -> Tensor:
    """Surface colour ``[R, 3]`` (RGB in [0, 1]) before lighting; sky rays get black."""
    rgb = torch.zeros(len(hits.t), 3)
    table = _random_table(scene.seed)
    on = hits.kind == GROUND
    rgb[on] = _ground_albedo(hits.point[on, 0], hits.point[on, 1], table)
    on = hits.kind == FACADE
    rgb[on] = _facade_albedo(hits.point[on, 0], hits.point[on, 1], hits.height[on], table)
    on = hits.kind == BOX
    rgb[on] = _box_albedo(hits.box[on], hits.point[on, 2], scene)
    return rgb


def _ground_albedo(x: Tensor, y: Tensor, table: Tensor) -> Tensor:
    """Asphalt with dashed lane lines and kerb lines between |x| < 5.25 m, paving slabs beyond."""
    ax = x.abs()
    grain = 0.6 * _value_noise(x, y, 0.35, table) + 0.4 * _value_noise(y, x, 2.0, table)
    dashes = ((ax - LANE_WIDTH / 2).abs() < 0.08) & (torch.remainder(y, 9.0) < 4.0)
    kerb_line = (ax - (ROAD_HALF_WIDTH - 0.25)).abs() < 0.08
    road = torch.where(dashes | kerb_line, 0.85, 0.26 + 0.10 * grain)
    joints = (torch.remainder(x, 1.5) < 0.05) | (torch.remainder(y, 1.5) < 0.05)
    grey = torch.where(ax > ROAD_HALF_WIDTH, torch.where(joints, 0.45, 0.58 + 0.08 * grain), road)
    return grey[:, None] * torch.tensor([1.0, 1.0, 1.02])


def _facade_albedo(x: Tensor, y: Tensor, height: Tensor, table: Tensor) -> Tensor:
    """One colour per building, with a grid of dark windows (2.5 m apart, 3 m floors) above the ground floor."""
    palette = (_lookup(table, 2 + (x > 0).long(), torch.floor(y / BUILDING_LENGTH)) * len(_FACADE_COLORS)).long()
    along = torch.remainder(y, 2.5)
    window = (along > 0.6) & (along < 1.9) & (height > 1.0) & ((torch.remainder(height, 3.0) - 1.6).abs() < 0.6)
    return torch.where(window[:, None], torch.tensor([0.18, 0.22, 0.28]), _FACADE_COLORS[palette])


def _box_albedo(box: Tensor, z: Tensor, scene: Scene) -> Tensor:
    """Body colour; cars get dark windows on their upper 40 %, pedestrians dark legs and a skin-coloured head."""
    frac = (z - scene.boxes[box, 2]) / scene.boxes[box, 5]  # 0 at the bottom of the box, 1 at its top
    color = scene.colors[box]
    car = torch.where((frac > 0.6)[:, None], torch.tensor([0.12, 0.15, 0.19]), color)
    person = torch.where((frac < 0.47)[:, None], torch.tensor([0.16, 0.16, 0.22]), color)
    person = torch.where((frac > 0.87)[:, None], torch.tensor([0.80, 0.62, 0.50]), person)
    return torch.where((scene.labels[box] == PEDESTRIAN)[:, None], person, car)


# ---------------------------------------------------------------------------------------------------------------
# Sensors


@dataclass(frozen=True)
class CameraViews:
    """What the rig's cameras see, at network resolution: ``rgb [N, 3, iH, iW]`` in [0, 1], ``instance
    [N, iH, iW]`` int64 (box index, -1 for none), ``depth [N, iH, iW]`` (camera-frame z of the visible surface,
    m; inf for sky)."""

    rgb: Tensor
    instance: Tensor
    depth: Tensor


def pixel_rays(rig: Rig) -> tuple[Tensor, Tensor]:
    """Camera centres ``[N, 3]`` and ray directions ``[N, iH, iW, 3]`` (lidar frame) through every pixel centre
    ``(col + 0.5, row + 0.5)`` of the network image, scaled so that ``t`` along a ray is the camera-frame depth.

    The directions come from ``geometry.get_geometry`` (the lift's own math) applied to pixel centres at depth 1,
    so the renderer and the frustum use the same calibration path.
    """
    mats = rig.matrices()
    iH, iW = rig.image_size
    rows, cols = torch.meshgrid(torch.arange(iH) + 0.5, torch.arange(iW) + 0.5, indexing="ij")
    pixels = torch.stack((cols, rows, torch.ones_like(cols)), -1)[None]  # [D=1, iH, iW, 3]
    at_depth_1 = get_geometry(pixels, mats["camera2lidar"], mats["camera_intrinsics"], mats["img_aug_matrix"])
    centres = mats["camera2lidar"][0, :, :3, 3]
    return centres, at_depth_1[0, :, 0] - centres[:, None, None]


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread, then restore the setting. The renderer's ops are small and memory
    bound: a second thread saves little on an idle CPU and costs several times over on a shared one, where every op
    waits at an OpenMP barrier for a descheduled thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@_one_thread()
def render_cameras(rig: Rig, scene: Scene) -> CameraViews:
    """Ray cast one ray per pixel of every camera, all cameras in one batch: Lambert shading under a fixed sun, a sky
    gradient, distance haze. Box tests run only inside each box's projected footprint (``_box_footprints``)."""
    centres, dirs = pixel_rays(rig)
    N, iH, iW, _ = dirs.shape
    d = dirs.reshape(-1, 3)
    o = centres[:, None].expand(N, iH * iW, 3).reshape(-1, 3)
    hits = cast_rays(o, d, scene, _box_footprints(scene.boxes, rig).view(-1))
    lit = _albedo(hits, scene) * (0.55 + 0.45 * (hits.normal @ _SUN).clamp(min=0.0))[:, None]
    haze = 1.0 - torch.exp(-(hits.point - o).norm(dim=-1) / 180.0)
    up = d[:, 2] / d.norm(dim=-1)
    sky = torch.lerp(_SKY_HORIZON, _SKY_ZENITH, (3.0 * up).clamp(0.0, 1.0)[:, None])
    color = torch.where((hits.kind == SKY)[:, None], sky, torch.lerp(lit, _SKY_HORIZON, haze[:, None]))
    return CameraViews(
        rgb=color.view(N, iH, iW, 3).permute(0, 3, 1, 2).clamp(0.0, 1.0).contiguous(),
        instance=hits.box.view(N, iH, iW),
        depth=hits.t.view(N, iH, iW),
    )


_BOX_EDGES = torch.tensor(
    [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]]
)  # corner pairs of box_corners' order


def _box_footprints(boxes: Tensor, rig: Rig, near: float = 1e-3) -> Tensor:
    """``[N, iH, iW]`` bool: the pixels whose ray may hit a box, i.e. the 2-D bounding rectangles (+1 px) of the
    boxes' parts in front of each camera (corners with z > ``near`` and edge crossings of the plane z = ``near``)."""
    mats = rig.matrices()
    iH, iW = rig.image_size
    N, K = rig.num_cameras, len(boxes)
    corners = torch.nn.functional.pad(box_corners(boxes), (0, 1), value=1.0)  # [K, 8, 4]
    cam = (corners[None] @ mats["lidar2camera"][0, :, None].transpose(-1, -2))[..., :3]  # [N, K, 8, 3]
    a, b = cam[:, :, _BOX_EDGES[:, 0]], cam[:, :, _BOX_EDGES[:, 1]]  # [N, K, 12, 3]
    w = ((near - a[..., 2]) / (b[..., 2] - a[..., 2])).nan_to_num(-1.0)
    crossing = torch.lerp(a, b, w.clamp(0, 1)[..., None])
    points = torch.cat((cam, crossing), 2)  # [N, K, 20, 3]
    valid = torch.cat((cam[..., 2] > near, (w >= 0) & (w <= 1)), 2)
    uv1 = points / points[..., 2:3].clamp(min=near)
    K4 = mats["img_aug_matrix"][0, :, :3, :3] @ mats["camera_intrinsics"][0, :, :3, :3]  # camera → network pixels
    pix = uv1 @ K4[:, None].transpose(-1, -2) + mats["img_aug_matrix"][0, :, None, None, :3, 3]
    big = float(max(iH, iW))
    u_lo = torch.where(valid, pix[..., 0], big).amin(-1).floor().sub(1).clamp(0, iW)
    u_hi = torch.where(valid, pix[..., 0], -big).amax(-1).ceil().add(1).clamp(0, iW)
    v_lo = torch.where(valid, pix[..., 1], big).amin(-1).floor().sub(1).clamp(0, iH)
    v_hi = torch.where(valid, pix[..., 1], -big).amax(-1).ceil().add(1).clamp(0, iH)
    cols, rows = torch.arange(iW).view(1, 1, 1, iW), torch.arange(iH).view(1, 1, iH, 1)
    in_cols = (cols >= u_lo[..., None, None]) & (cols < u_hi[..., None, None])
    in_rows = (rows >= v_lo[..., None, None]) & (rows < v_hi[..., None, None])
    return (in_cols & in_rows).any(1) if K else torch.zeros(N, iH, iW, dtype=torch.bool)


def lidar_sweep(scene: Scene) -> Tensor:
    """One sweep of a 32-beam spinning lidar at the lidar origin: points ``[P, 5]`` = x, y, z (m), intensity
    (0–255: surface brightness × cos of the incidence angle, rounded), time lag (0 s: a single key-frame sweep;
    upstream stacks 9 earlier sweeps with their lags). Points outside ``POINT_CLOUD_RANGE`` are dropped, as
    upstream's PointsRangeFilter does."""
    el = torch.deg2rad(torch.linspace(*LIDAR_ELEVATIONS_DEG, LIDAR_BEAMS))[:, None]
    az = torch.arange(LIDAR_AZIMUTHS)[None] * (2 * math.pi / LIDAR_AZIMUTHS)
    dirs = torch.stack(
        (torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el).expand(-1, LIDAR_AZIMUTHS)), -1
    )
    hits = cast_rays(torch.zeros(3), dirs.view(-1, 3), scene)
    intensity = 255.0 * _albedo(hits, scene).mean(-1) * (hits.normal * dirs.view(-1, 3)).sum(-1).abs()
    lo, hi = torch.tensor(POINT_CLOUD_RANGE[:3]), torch.tensor(POINT_CLOUD_RANGE[3:])
    keep = (hits.kind != SKY) & ((hits.point > lo) & (hits.point < hi)).all(-1)
    p = hits.point[keep]
    return torch.cat((p, intensity[keep, None].round(), torch.zeros(len(p), 1)), -1)
