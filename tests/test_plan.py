"""The bev_pool plan: frustum, geometry, cell indices, sorting and intervals, against the upstream facts."""

from __future__ import annotations

import math

import pytest
import torch

from bevnb.config import R50, CameraConfig
from bevnb.data import make_sample
from bevnb.geometry import create_frustum, get_geometry, plan_bev_pool, plan_from_geometry

CALIBRATION = ("camera2lidar", "camera_intrinsics", "img_aug_matrix", "lidar_aug_matrix")
# A 12 × 8 × 1 grid of 1 m cells over x ∈ [-6, 6), y ∈ [-4, 4), z ∈ [-1, 1): small and non-square.
TINY = CameraConfig(xbound=(-6.0, 6.0, 1.0), ybound=(-4.0, 4.0, 1.0), zbound=(-1.0, 1.0, 2.0), out_channels=3)


@pytest.fixture(scope="module")
def rig() -> dict:
    return make_sample("zeros")


@pytest.fixture(scope="module")
def rig_plan(rig):
    return plan_bev_pool(rig)


def points(*xyz: tuple[float, float, float]) -> torch.Tensor:
    """Hand-placed lidar-frame points as a geometry ``[N=1, D=1, fH=1, fW=P, 3]``."""
    return torch.tensor(xyz, dtype=torch.float32).view(1, 1, 1, -1, 3)


def reproject(sample: dict, geometry: torch.Tensor) -> torch.Tensor:
    """Network-image pixels and depth ``[N, P, 3]`` of lidar points ``[N, P, 3]``, through ``lidar2image`` and the
    image aug: the forward direction, independent of the ``camera2lidar`` the geometry was made with."""
    l2i, aug = sample["lidar2image"][0], sample["img_aug_matrix"][0]
    cam = geometry @ l2i[:, :3, :3].transpose(-1, -2) + l2i[:, None, :3, 3]
    d = cam[..., 2:3]
    uv = cam[..., :2] / d
    return torch.cat((uv @ aug[:, :2, :2].transpose(-1, -2) + aug[:, None, :2, 3], d), dim=-1)


def test_frustum_is_mits_linspace_grid():
    frustum = create_frustum()
    assert frustum.shape == (118, 32, 88, 3)
    xs, ys, ds = frustum[0, 0, :, 0], frustum[0, :, 0, 1], frustum[:, 0, 0, 2]
    assert (xs[0].item(), xs[-1].item(), ys[-1].item()) == (0.0, 703.0, 255.0)
    assert xs[1].item() == pytest.approx(703 / 87) and ys[1].item() == pytest.approx(255 / 31)
    torch.testing.assert_close(ds, torch.arange(1.0, 60.0, 0.5), rtol=0, atol=0)


def test_geometry_reprojects_onto_the_frustum(rig):
    frustum = create_frustum()
    geometry = get_geometry(frustum, *(rig[k] for k in CALIBRATION))
    assert geometry.shape == (1, 6, 118, 32, 88, 3)
    back = reproject(rig, geometry[0].reshape(6, -1, 3))
    torch.testing.assert_close(back, frustum.reshape(1, -1, 3).expand(6, -1, -1), rtol=0, atol=2e-2)


def test_each_camera_uses_its_own_image_aug(rig):
    """CUDA-BEVFusion's geometry kernel applies camera 0's img_aug to all six cameras; bevnb uses each camera's."""
    sample = {k: rig[k].clone() for k in (*CALIBRATION, "lidar2image")}
    sample["img_aug_matrix"][0, 3, :2, :2] *= 0.5 / 0.48  # camera 3 resized ×0.5 and cropped elsewhere
    sample["img_aug_matrix"][0, 3, :2, 3] = torch.tensor([-48.0, -190.0])
    frustum = create_frustum()
    ours = get_geometry(frustum, *(sample[k] for k in CALIBRATION))[0].reshape(6, -1, 3)
    cam0_aug = sample["img_aug_matrix"][:, :1].expand(-1, 6, -1, -1)
    upstream = get_geometry(frustum, sample["camera2lidar"], sample["camera_intrinsics"], cam0_aug)[0]
    target = frustum.reshape(1, -1, 3)
    err_ours = (reproject(sample, ours) - target).abs().amax(dim=(1, 2))
    err_upstream = (reproject(sample, upstream.reshape(6, -1, 3)) - target).abs().amax(dim=(1, 2))
    assert err_ours.max() < 2e-2
    assert err_upstream[3] > 10.0  # pixels: camera 3's rays point elsewhere under camera 0's aug
    torch.testing.assert_close(err_upstream[[0, 1, 2, 4, 5]], err_ours[[0, 1, 2, 4, 5]])


def test_lidar_aug_is_applied_last(rig):
    frustum = create_frustum()
    mats = [rig[k] for k in CALIBRATION]
    base = get_geometry(frustum, *mats[:3])
    aug = torch.eye(4)[None]
    aug[0, :3, :3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # yaw +90°
    aug[0, :3, 3] = torch.tensor([1.0, 2.0, 3.0])
    moved = get_geometry(frustum, *mats[:3], aug)
    expected = torch.stack((-base[..., 1] + 1.0, base[..., 0] + 2.0, base[..., 2] + 3.0), dim=-1)
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-4)


def test_cells_truncate_toward_zero_like_mit():
    """``.long()`` truncates: up to one cell below the lower bound still lands in cell 0 (x from -7 m on TINY)."""
    geometry = points(
        (-6.5, 0.2, 0.0),  # q_x = -0.5 → cell 0: kept
        (-7.0, 0.2, 0.0),  # q_x = -1 → cell -1: dropped
        (5.99, -3.99, 0.0),  # last row, first column: kept
        (6.0, 0.2, 0.0),  # q_x = 12 = X: dropped
        (0.2, 0.2, -2.5),  # q_z = -0.75 → cell 0: kept (R50's z reaches down to -30 m this way)
        (0.2, 0.2, 1.0),  # q_z = 1 = Z: dropped
        (float("nan"), 0.2, 0.0),  # dropped, never wrapped into a cell
    )
    plan = plan_from_geometry(geometry, TINY)
    kept = sorted(plan.ranks_depth.tolist())
    assert kept == [0, 2, 4]
    by_point = dict(zip(plan.ranks_depth.tolist(), plan.ranks_bev.tolist(), strict=True))
    assert by_point == {0: 0 * 8 + 4, 2: 11 * 8 + 0, 4: 6 * 8 + 4}


def test_non_square_grid_rows_are_x_with_stride_y():
    """Issue #315: CUDA-BEVFusion's index mixes the grid sizes and is right only when X == Y."""
    plan = plan_from_geometry(points((2.5, -1.5, 0.0)), TINY)  # cell (ix, iy) = (8, 2) on the 12 × 8 grid
    assert plan.grid_size == (12, 8, 1) and plan.output_shape == (1, 3, 12, 8)
    assert plan.ranks_bev.tolist() == [8 * 8 + 2]  # upstream's x·X + y would give 98


def test_z_slices_stack_on_channels():
    """MIT collapses Z as ``cat(unbind(dim=2), 1)``: channel z·C + c, so a z-slice starts at z·C·X·Y."""
    config = CameraConfig(xbound=(-6.0, 6.0, 1.0), ybound=(-4.0, 4.0, 1.0), zbound=(-1.0, 1.0, 1.0), out_channels=3)
    plan = plan_from_geometry(points((2.5, -1.5, -0.5), (2.5, -1.5, 0.5)), config)
    assert plan.output_shape == (1, 6, 12, 8)
    assert plan.ranks_bev.tolist() == [66, 3 * 12 * 8 + 66]


def test_corner_cell_is_not_mixed_with_dropped_points():
    """Upstream gives dropped points rank 0, the rank of cell (0, 0, 0), and skips 'the first numel - kept' after
    sorting (issue #222). Here dropped points never enter the sort."""
    geometry = points((-50.0, 0.0, 0.0), (-5.9, -3.9, 0.0), (-60.0, -60.0, 0.0), (-5.5, -3.5, 0.0))
    plan = plan_from_geometry(geometry, TINY)
    assert plan.ranks_bev.tolist() == [0, 0]
    assert plan.ranks_depth.tolist() == [1, 3]
    assert plan.interval_starts.tolist() == [0] and plan.interval_lengths.tolist() == [2]


def test_last_interval_keeps_its_last_point():
    """PR #250: upstream's last interval ended at numel - 1 (and earlier at numel - start), losing points."""
    geometry = points((0.5, 0.5, 0.0), (5.5, 3.5, 0.0), (5.6, 3.6, 0.0), (5.7, 3.7, 0.0))
    plan = plan_from_geometry(geometry, TINY)
    assert plan.interval_starts.tolist() == [0, 1]
    assert plan.interval_lengths.tolist() == [1, 3]
    assert plan.ranks_depth.tolist() == [0, 1, 2, 3]


def test_empty_plan():
    plan = plan_from_geometry(points((100.0, 0.0, 0.0), (0.0, -100.0, 0.0)), TINY)
    assert (plan.num_points, plan.num_intervals) == (0, 0)
    assert plan.summary()["kept points"] == 0


def test_rig_plan_structure(rig, rig_plan):
    plan = rig_plan
    P, K = plan.num_points, plan.num_intervals
    assert (plan.num_cameras, plan.depth_bins, plan.feature_size, plan.channels) == (6, 118, (32, 88), 80)
    assert plan.output_shape == (1, 80, 360, 360)
    assert all(t.dtype == torch.int32 for t in (plan.ranks_depth, plan.ranks_feat, plan.ranks_bev))
    # Kept points: exactly those MIT keeps with its own formula.
    geometry = get_geometry(create_frustum(), *(rig[k] for k in CALIBRATION))[0].reshape(-1, 3)
    lower = torch.tensor(R50.cell_center0) - torch.tensor(R50.cell_size) / 2
    cells = ((geometry - lower) / torch.tensor(R50.cell_size)).long()
    mit_kept = ((cells >= 0) & (cells < torch.tensor(R50.grid_size))).all(-1)
    assert int(mit_kept.sum()) == P and 1_500_000 < P <= R50.frustum_points
    assert torch.equal(plan.ranks_depth.sort().values.long(), mit_kept.nonzero().squeeze(1))
    # Sorted by cell; one interval per distinct cell; inside a cell, frustum order (stable sort).
    ranks = plan.ranks_bev.long()
    assert bool((ranks[1:] >= ranks[:-1]).all())
    assert ranks.unique().numel() == K and int(plan.interval_lengths.sum()) == P
    assert plan.interval_starts[0] == 0
    assert torch.equal(plan.interval_starts[1:], (plan.interval_starts + plan.interval_lengths)[:-1])
    same_cell = ranks[1:] == ranks[:-1]
    assert bool((plan.ranks_depth[1:][same_cell] > plan.ranks_depth[:-1][same_cell]).all())
    # Feature row = depth index without its d digit.
    rd = plan.ranks_depth.long()
    assert torch.equal(plan.ranks_feat.long(), (rd // (118 * 32 * 88)) * (32 * 88) + rd % (32 * 88))
    # Every camera contributes.
    assert torch.bincount(rd // (118 * 32 * 88), minlength=6).min() > 100_000


def test_rig_plan_cells_match_the_geometry(rig, rig_plan):
    geometry = get_geometry(create_frustum(), *(rig[k] for k in CALIBRATION))[0].reshape(-1, 3)
    lower = torch.tensor(R50.cell_center0) - torch.tensor(R50.cell_size) / 2
    cells = ((geometry[rig_plan.ranks_depth.long()] - lower) / torch.tensor(R50.cell_size)).long()
    assert torch.equal(rig_plan.ranks_bev.long(), cells[:, 0] * 360 + cells[:, 1])


def test_plan_is_cached_by_calibration(rig, rig_plan):
    assert plan_bev_pool({k: rig[k].clone() for k in CALIBRATION}) is rig_plan
    moved = {k: rig[k].clone() for k in CALIBRATION}
    moved["camera2lidar"][0, :, 0, 3] += 0.3  # every camera 30 cm forward: one cell
    other = plan_bev_pool(moved)
    assert other is not rig_plan and not torch.equal(other.ranks_bev, rig_plan.ranks_bev)


def test_select_intervals_keeps_whole_cells(rig_plan):
    picked = torch.arange(0, rig_plan.num_intervals, 97)
    sub = rig_plan.select_intervals(picked)
    assert sub.num_intervals == picked.numel()
    assert torch.equal(sub.interval_lengths, rig_plan.interval_lengths[picked])
    assert torch.equal(sub.ranks_bev[sub.interval_starts.long()], rig_plan.ranks_bev[rig_plan.interval_starts[picked]])
    first, last = int(picked[0]), int(picked[-1])
    s, n = int(rig_plan.interval_starts[last]), int(rig_plan.interval_lengths[last])
    assert torch.equal(sub.ranks_depth[-n:], rig_plan.ranks_depth[s : s + n])
    assert sub.ranks_depth[0] == rig_plan.ranks_depth[int(rig_plan.interval_starts[first])]
    whole = rig_plan.select_intervals(torch.arange(rig_plan.num_intervals))
    assert all(torch.equal(getattr(whole, k), getattr(rig_plan, k)) for k in ("ranks_depth", "ranks_feat", "ranks_bev"))


def assert_derived_arrays(plan) -> None:
    """``interval_order``: every interval once, longest first, ties in cell order; ``cell_offsets``: a CSR row
    pointer over every cell that agrees with the intervals."""
    order = plan.interval_order.long()
    assert torch.equal(order.sort().values, torch.arange(plan.num_intervals))
    lengths = plan.interval_lengths[order]
    assert bool((lengths[1:] <= lengths[:-1]).all())
    ties = lengths[1:] == lengths[:-1]
    assert bool((order[1:][ties] > order[:-1][ties]).all())
    X, Y, Z = plan.grid_size
    offsets = plan.cell_offsets.long()
    assert offsets.shape == (Z * X * Y + 1,) and offsets[0] == 0 and offsets[-1] == plan.num_points
    counts = offsets.diff()
    hit = counts > 0
    assert torch.equal(hit.nonzero().squeeze(1), plan.point_cells()[plan.interval_starts.long()])
    assert torch.equal(offsets[:-1][hit], plan.interval_starts.long())
    assert torch.equal(counts[hit], plan.interval_lengths.long())


def test_plans_carry_a_balanced_order_and_cell_offsets(rig_plan):
    assert rig_plan.interval_order.dtype == rig_plan.cell_offsets.dtype == torch.int32
    assert rig_plan.interval_lengths[rig_plan.interval_order[0]] == rig_plan.interval_lengths.max()
    assert_derived_arrays(rig_plan)
    assert_derived_arrays(rig_plan.select_intervals(torch.arange(0, rig_plan.num_intervals, 97)))
    keep = rig_plan.ranks_depth % 3 == 0
    assert_derived_arrays(rig_plan.select_points(keep))
    assert_derived_arrays(plan_from_geometry(points((100.0, 0.0, 0.0)), TINY))  # empty
    z_slices = CameraConfig(xbound=(-6.0, 6.0, 1.0), ybound=(-4.0, 4.0, 1.0), zbound=(-1.0, 1.0, 1.0), out_channels=3)
    assert_derived_arrays(plan_from_geometry(points((2.5, -1.5, -0.5), (0.5, 0.5, 0.5), (2.6, -1.4, 0.5)), z_slices))


def test_select_intervals_takes_each_cell_once_in_cell_order(rig_plan):
    picked = torch.arange(0, rig_plan.num_intervals, 500)
    ascending = rig_plan.select_intervals(picked)
    shuffled = rig_plan.select_intervals(torch.cat((picked.flip(0), picked[:5])))
    assert all(torch.equal(getattr(ascending, k), getattr(shuffled, k)) for k in ("ranks_depth", "interval_order"))


def test_cell_counts_per_camera(rig_plan):
    counts = rig_plan.cell_counts()
    assert counts.shape == (6, 1, 360, 360)
    assert int(counts.sum()) == rig_plan.num_points
    assert int((counts.sum(0) > 0).sum()) == rig_plan.num_intervals
    per_camera = torch.bincount(rig_plan.ranks_depth.long() // (118 * 32 * 88), minlength=6)
    assert torch.equal(counts.sum((1, 2, 3)), per_camera)


def test_summary_counts(rig_plan):
    s = rig_plan.summary()
    assert s["candidate points"] == R50.frustum_points == 1_993_728
    assert s["kept points"] == rig_plan.num_points and s["cells hit"] == rig_plan.num_intervals
    assert s["mean points/cell"] == pytest.approx(rig_plan.num_points / rig_plan.num_intervals)
    assert math.isclose(s["cells hit %"], 100 * rig_plan.num_intervals / 360**2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("camera2lidar"), "missing camera2lidar"),
        (lambda s: s.update(img_aug_matrix=s["img_aug_matrix"].repeat(2, 1, 1, 1)), r"img_aug_matrix must be \[1, 6"),
        (lambda s: s.update(camera_intrinsics=s["camera_intrinsics"][:, :4]), r"got \[1, 4, 4, 4\]"),
    ],
)
def test_plan_rejects_bad_calibration(rig, change, message):
    sample = {k: rig[k].clone() for k in CALIBRATION}
    change(sample)
    with pytest.raises(ValueError, match=message):
        plan_bev_pool(sample)
