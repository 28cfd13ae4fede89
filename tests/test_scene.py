"""The synthetic scene: rig, boxes, ray casting, rendered cameras, lidar sweep, and their agreement with the
sample's own matrices and with ``geometry.depth_map``."""

from __future__ import annotations

import math

import pytest
import torch

from bevnb.data import make_sample, normalize_image
from bevnb.geometry import depth_map, get_geometry
from bevnb.rig import load_rig
from bevnb.scene import (
    BOX,
    CAR,
    FACADE,
    FACADE_X,
    GROUND,
    LIDAR_AZIMUTHS,
    LIDAR_BEAMS,
    PEDESTRIAN,
    POINT_CLOUD_RANGE,
    SKY,
    Scene,
    _box_footprints,
    box_corners,
    cast_rays,
    lidar_sweep,
    pixel_rays,
    random_scene,
    render_cameras,
)

GROUND_Z = -1.84  # the rig's lidar is 1.84 m above the road


@pytest.fixture(scope="module")
def rig():
    return load_rig()


@pytest.fixture(scope="module")
def synthetic() -> dict:
    return make_sample("synthetic", seed=0)


@pytest.fixture(scope="module")
def views0(rig):
    """The seed-0 scene rendered on its own, to compare with what make_sample returned."""
    return render_cameras(rig, random_scene(0))


def _project(points: torch.Tensor, sample: dict, cam: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lidar-frame points ``[P, 3]`` → network pixels ``[P, 2]`` (col, row) and camera depth ``[P]``, with the
    sample's own ``lidar2image`` and ``img_aug_matrix``."""
    l2i, aug = sample["lidar2image"][0, cam], sample["img_aug_matrix"][0, cam]
    p = points @ l2i[:3, :3].T + l2i[:3, 3]
    z = p[:, 2]
    uv1 = torch.cat((p[:, :2] / z[:, None], torch.ones_like(z)[:, None]), -1)
    return (uv1 @ aug[:3, :3].T + aug[:3, 3])[:, :2], z


def _points_in_boxes(points: torch.Tensor, boxes: torch.Tensor, tol: float) -> torch.Tensor:
    """``[P, K]`` bool: point inside box (grown by ``tol`` m on every side)."""
    x, y, z, dx, dy, dz, yaw = boxes.unbind(-1)
    rel = points[:, None] - torch.stack((x, y, z + dz / 2), -1)
    c, s = torch.cos(yaw), torch.sin(yaw)
    lx, ly = c * rel[..., 0] + s * rel[..., 1], -s * rel[..., 0] + c * rel[..., 1]
    return (lx.abs() <= dx / 2 + tol) & (ly.abs() <= dy / 2 + tol) & (rel[..., 2].abs() <= dz / 2 + tol)


# ------------------------------------------------------------------------------------------------------ boxes


def test_box_corners_follow_the_lidar_box_convention():
    box = torch.tensor([[10.0, 20.0, -1.0, 4.0, 2.0, 1.5, 0.0]])
    corners = box_corners(box)[0]
    assert corners[0].tolist() == [12.0, 21.0, -1.0] and corners[6].tolist() == [8.0, 19.0, 0.5]
    turned = box_corners(box.index_fill(1, torch.tensor([6]), math.pi / 2))[0]  # yaw 90°: length along +y
    torch.testing.assert_close(turned[0], torch.tensor([9.0, 22.0, -1.0]))


@pytest.mark.parametrize("seed", range(8))
def test_random_scene_is_a_plausible_street(seed):
    s = random_scene(seed)
    assert s.boxes.shape == (12, 7) and s.labels.tolist() == [CAR] * 7 + [PEDESTRIAN] * 5
    cars, peds = s.boxes[s.labels == CAR], s.boxes[s.labels == PEDESTRIAN]
    assert (cars[:, 0].abs() < 5.25 - cars[:, 4] / 2).all()  # on the road
    assert (peds[:, 0].abs() > 5.25).all() and (peds[:, 0].abs() < FACADE_X - 1.0).all()  # on a sidewalk
    assert (cars[:, 1].abs() > 7.0).all()  # nobody right beside the ego car
    assert (s.boxes[:, 2] == GROUND_Z).all()
    # no two boxes intersect: a 9×9 grid on each box's footprint stays outside all the others
    g = torch.linspace(-0.5, 0.5, 9)
    gx, gy = torch.meshgrid(g, g, indexing="ij")
    for k, (x, y, z, dx, dy, dz, yaw) in enumerate(s.boxes.tolist()):
        lx, ly = gx.flatten() * dx, gy.flatten() * dy
        pts = torch.stack((x + math.cos(yaw) * lx - math.sin(yaw) * ly, y + math.sin(yaw) * lx + math.cos(yaw) * ly,
                           torch.full_like(lx, z + dz / 2)), -1)  # fmt: skip
        inside = _points_in_boxes(pts, s.boxes, tol=0.0)
        inside[:, k] = False
        assert not inside.any(), f"seed {seed}: box {k} overlaps box {inside.any(0).nonzero().flatten().tolist()}"


def test_random_scene_is_deterministic():
    assert torch.equal(random_scene(3).boxes, random_scene(3).boxes)
    assert not torch.equal(random_scene(3).boxes, random_scene(4).boxes)


# ---------------------------------------------------------------------------------------------------- ray casting


def test_cast_rays_hits_ground_facade_box_and_sky():
    scene = Scene(torch.tensor([[0.0, 10.0, GROUND_Z, 4.0, 2.0, 1.5, 0.0]]), torch.tensor([CAR]),
                  torch.tensor([[1.0, 0.0, 0.0]]), GROUND_Z)  # fmt: skip
    dirs = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 1.0, -0.1], [0.0, 0.0, 1.0]])
    hits = cast_rays(torch.zeros(3), dirs, scene)
    assert hits.kind.tolist() == [GROUND, FACADE, BOX, SKY]
    torch.testing.assert_close(hits.t[:3], torch.tensor([1.84, FACADE_X, 9.0]))
    assert hits.box.tolist() == [-1, -1, 0, -1]
    torch.testing.assert_close(hits.normal[:3], torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]))
    assert math.isinf(hits.t[3])


def test_pixel_rays_have_unit_camera_depth(rig):
    """t along a pixel ray is the camera-frame depth: the ray's camera z component is exactly 1."""
    _, dirs = pixel_rays(rig)
    assert dirs.shape == (6, 256, 704, 3)
    lidar2camera = torch.linalg.inv(rig.camera2lidar)
    z = torch.einsum("nj,nhwj->nhw", lidar2camera[:, 2, :3], dirs)
    torch.testing.assert_close(z, torch.ones_like(z))


def test_box_footprints_do_not_change_the_render(rig, views0):
    """Box tests run only inside each box's projected rectangle; casting every ray against every box agrees."""
    scene, views = random_scene(0), views0
    centres, dirs = pixel_rays(rig)
    assert _box_footprints(scene.boxes, rig).float().mean() < 0.25
    for n in (0, 3):
        brute = cast_rays(centres[n], dirs[n].reshape(-1, 3), scene)
        assert torch.equal(brute.box.view(256, 704), views.instance[n])
        torch.testing.assert_close(brute.t.view(256, 704), views.depth[n])


# ----------------------------------------------------------------------------------- renderer ↔ sample matrices


@pytest.fixture(scope="module")
def one_box(rig):
    """A car 12 m ahead and 2.5 m to the right, turned 34°, lower than the cameras (its top is visible)."""
    scene = Scene(torch.tensor([[2.5, 12.0, GROUND_Z, 4.5, 1.9, 1.2, 0.6]]), torch.tensor([CAR]),
                  torch.tensor([[0.7, 0.1, 0.1]]), GROUND_Z)  # fmt: skip
    return scene, render_cameras(rig, scene), make_sample("zeros")


def test_projected_box_corners_land_where_the_renderer_drew_the_box(one_box):
    scene, views, sample = one_box
    pix, z = _project(box_corners(scene.boxes)[0], sample, cam=0)
    assert (z > 0).all() and (pix[:, 0] > 0).all() and (pix[:, 0] < 704).all() and (pix[:, 1] < 256).all()
    rows, cols = torch.nonzero(views.instance[0] == 0, as_tuple=True)
    # the silhouette's extreme pixels are the pixels of the extreme corners, within 1 px
    drawn = torch.stack((cols.min(), cols.max(), rows.min(), rows.max())).float()
    projected = torch.stack((pix[:, 0].min(), pix[:, 0].max(), pix[:, 1].min(), pix[:, 1].max())).floor()
    assert (drawn - projected).abs().max() <= 1, (drawn.tolist(), projected.tolist())


def test_box_corner_pixel_and_depth(one_box):
    """The nearest top corner (where three visible faces meet) lands on a pixel of the box, the renderer's depth
    there is the corner's camera depth, and the depth map of that corner as a lidar point holds exactly it."""
    scene, views, sample = one_box
    corners = box_corners(scene.boxes)[0]
    pix, z = _project(corners, sample, cam=0)
    top = 4 + z[4:].argmin()
    col, row = pix[top].floor().long().tolist()
    assert views.instance[0, row, col] == 0
    assert abs(views.depth[0, row, col] - z[top]) < 0.01 * z[top]  # a pixel's footprint on a slanted face
    point = torch.cat((corners[top], torch.tensor([100.0, 0.0])))[None]
    depth = depth_map(dict(sample, points=[point]))
    assert depth[0, 0].count_nonzero() == 1
    torch.testing.assert_close(depth[0, 0, 0, row, col], z[top], rtol=1e-5, atol=0.0)


def test_instance_map_and_rendered_depth_put_pixels_on_their_box(rig, views0):
    """Un-projecting every box pixel at its rendered depth gives a point on that box's surface (within 1 mm)."""
    scene, views = random_scene(0), views0
    mats = rig.matrices()
    for n in range(rig.num_cameras):
        rows, cols = torch.nonzero(views.instance[n] >= 0, as_tuple=True)
        pixels = torch.stack((cols + 0.5, rows + 0.5, views.depth[n, rows, cols]), -1)
        pts = get_geometry(pixels.view(-1, 1, 1, 3).transpose(0, 1), mats["camera2lidar"][:, n : n + 1],
                           mats["camera_intrinsics"][:, n : n + 1], mats["img_aug_matrix"][:, n : n + 1])  # fmt: skip
        pts = pts.view(-1, 3)
        on_box = _points_in_boxes(pts, scene.boxes, tol=1e-3)
        assert on_box[torch.arange(len(pts)), views.instance[n, rows, cols]].all(), n
    seen = torch.unique(views.instance[views.instance >= 0])
    assert len(seen) >= 10  # most of the 12 boxes are visible to some camera


# ----------------------------------------------------------------------------------------------------- lidar


def test_lidar_points_lie_on_the_scene_surfaces():
    scene = random_scene(0)
    points = lidar_sweep(scene)
    assert points.dtype == torch.float32 and points.shape[1] == 5
    assert 0.8 * LIDAR_BEAMS * LIDAR_AZIMUTHS < len(points) < LIDAR_BEAMS * LIDAR_AZIMUTHS
    xyz = points[:, :3]
    ground = (xyz[:, 2] - GROUND_Z).abs() < 1e-4
    facade = (xyz[:, 0].abs() - FACADE_X).abs() < 1e-4
    box = _points_in_boxes(xyz, scene.boxes, tol=1e-4).any(-1)
    assert (ground | facade | box).all()
    assert box.sum() > 500  # boxes are hit by several beams each
    lo, hi = torch.tensor(POINT_CLOUD_RANGE[:3]), torch.tensor(POINT_CLOUD_RANGE[3:])
    assert ((xyz > lo) & (xyz < hi)).all()
    assert points[:, 3].min() >= 0 and points[:, 3].max() <= 255 and torch.equal(points[:, 3], points[:, 3].round())
    assert (points[:, 4] == 0).all()


def test_lidar_depth_map_agrees_with_the_rendered_depth(synthetic, views0):
    """Where the lidar puts a depth, the camera sees a surface at that depth: the two sensors look at one scene.
    They sit up to 1 m apart, so near box edges a point hidden from the camera can still land on a pixel."""
    depth, views = depth_map(synthetic)[0, :, 0], views0
    has = depth > 0
    assert has.sum() > 10_000
    rel = (depth[has] - views.depth[has]).abs() / views.depth[has]
    assert rel.median() < 0.005
    assert (rel < 0.02).float().mean() > 0.97


def test_synthetic_sample_is_deterministic_and_normalised(synthetic, views0):
    assert torch.equal(synthetic["img"][0], normalize_image(views0.rgb))
    assert torch.equal(synthetic["instance_map"][0], views0.instance)
    assert torch.equal(synthetic["points"][0], lidar_sweep(random_scene(0)))
    img = synthetic["img"]
    assert img.shape == (1, 6, 3, 256, 704) and img.dtype == torch.float32
    assert -2.2 < img.min() < -1.0 and 1.5 < img.max() < 2.7  # ImageNet-normalised [0, 1] RGB spans ≈ [-2.1, 2.6]
    assert synthetic["instance_map"].shape == (1, 6, 256, 704) and synthetic["instance_map"].dtype == torch.int64
    assert synthetic["gt_boxes"][0].shape == (12, 7) and synthetic["gt_labels"][0].dtype == torch.int64
