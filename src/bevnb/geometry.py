"""Camera geometry of the lift: the frustum, where each frustum point lands in the lidar frame, the depth map made
from lidar points, and the bev_pool plan.

Everything here depends on calibration only (intrinsics, extrinsics, image aug), never on the image, which is why
CUDA-BEVFusion computes it once per calibration (``camera-geometry.cu``) instead of once per frame.

Matrix conventions are those of the sample dict (``bevnb.data``): every matrix is ``[B, N, 4, 4]`` float32;
``img_aug_matrix`` maps raw-image pixels to network-input pixels, ``lidar_aug_matrix`` is ``[B, 4, 4]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import R50, CameraConfig


def create_frustum(config: CameraConfig = R50) -> Tensor:
    """Frustum ``[D, fH, fW, 3]`` of (x_img, y_img, depth): MIT's ``create_frustum``.

    Pixel columns are ``linspace(0, iW - 1, fW)`` (step 703/87 ≈ 8.08 px for R50), not the stride-8 centres,
    and depths are ``arange(*dbound)`` = 1.0, 1.5, …, 59.5 m.
    """
    (iH, iW), (fH, fW) = config.image_size, config.feature_size
    ds = torch.arange(*config.dbound, dtype=torch.float32).view(-1, 1, 1).expand(-1, fH, fW)
    D = ds.shape[0]
    xs = torch.linspace(0, iW - 1, fW, dtype=torch.float32).view(1, 1, fW).expand(D, fH, fW)
    ys = torch.linspace(0, iH - 1, fH, dtype=torch.float32).view(1, fH, 1).expand(D, fH, fW)
    return torch.stack((xs, ys, ds), dim=-1)


def get_geometry(
    frustum: Tensor,
    camera2lidar: Tensor,
    camera_intrinsics: Tensor,
    img_aug_matrix: Tensor,
    lidar_aug_matrix: Tensor | None = None,
) -> Tensor:
    """Lidar-frame position of every frustum point: ``[B, N, D, fH, fW, 3]`` (MIT ``get_geometry``, same order).

    1. undo the image aug: ``p = inv(post_rot) @ (frustum - post_trans)``;
    2. un-project: ``(u·d, v·d, d)``;
    3. ``p = camera2lidar_R @ inv(K) @ p + camera2lidar_t``;
    4. apply the lidar aug (identity at test time). CUDA-BEVFusion skips this step.

    Each camera uses its own image aug (CUDA-BEVFusion's kernel uses camera 0's for all six).
    """
    B, N = camera2lidar.shape[:2]
    post_rot, post_trans = img_aug_matrix[..., :3, :3], img_aug_matrix[..., :3, 3]
    p = frustum.view(1, 1, -1, 3) - post_trans.view(B, N, 1, 3)
    p = p @ torch.linalg.inv(post_rot).transpose(-1, -2)
    p = torch.cat((p[..., :2] * p[..., 2:3], p[..., 2:3]), dim=-1)
    combine = camera2lidar[..., :3, :3] @ torch.linalg.inv(camera_intrinsics[..., :3, :3])
    p = p @ combine.transpose(-1, -2) + camera2lidar[..., :3, 3].view(B, N, 1, 3)
    if lidar_aug_matrix is not None:
        p = p @ lidar_aug_matrix[:, None, :3, :3].transpose(-1, -2) + lidar_aug_matrix[:, None, None, :3, 3]
    return p.view(B, N, *frustum.shape)


def depth_map(sample: Mapping[str, object], config: CameraConfig = R50) -> Tensor:
    """The sparse depth input ``[B, N, 1, iH, iW]`` (metres, 0 = no point) of a sample dict, as BEVFusion's
    ``BaseDepthTransform`` builds it from ``points``, ``lidar2image``, ``img_aug_matrix`` and ``lidar_aug_matrix``.

    Per sample: undo the lidar aug, project with ``lidar2image``, clamp the camera depth to ``[1e-5, 1e5]`` (the
    clamped value is also what is written), divide x, y by it, apply the image aug, keep points with
    ``0 ≤ col < iW`` and ``0 ≤ row < iH`` and write their depth at ``[row.long(), col.long()]``.

    Collisions (several points on one pixel): bevnb keeps the **nearest** point (``scatter_reduce`` with
    ``amin``): deterministic, and what a camera would see. Upstream has no rule: MIT writes
    ``dense_depth[b, c, ys, xs] = dist``, a parallel ``index_put`` that does not reliably keep the last write on a
    multi-threaded CPU (run on one input twice, the pixels holding the last point in program order numbered 14,726
    and 27,212 of 43,937 hit more than once), and CUDA-BEVFusion's ``camera-depth.cu`` races the same way on the
    GPU. Points behind a camera get depth 1e-5, land far off the image and are dropped.

    ``points``: one ``[P, ≥3]`` tensor per sample, lidar frame (x, y, z first).
    """
    points, lidar2image = sample["points"], sample["lidar2image"]
    img_aug_matrix, lidar_aug_matrix = sample["img_aug_matrix"], sample["lidar_aug_matrix"]
    iH, iW = config.image_size
    B, N = lidar2image.shape[:2]
    depth = torch.zeros(B, N, iH * iW, dtype=torch.float32, device=lidar2image.device)
    for b in range(B):
        xyz = points[b][:, :3].to(torch.float32)
        xyz = (xyz - lidar_aug_matrix[b, :3, 3]) @ torch.linalg.inv(lidar_aug_matrix[b, :3, :3]).T
        cam = xyz @ lidar2image[b, :, :3, :3].transpose(-1, -2) + lidar2image[b, :, None, :3, 3]  # [N, P, 3]
        dist = cam[..., 2].clamp(1e-5, 1e5)
        # Upstream applies the image aug to (u, v, dist), the clamped depth still in the third row.
        uvd = torch.cat((cam[..., :2] / dist[..., None], dist[..., None]), dim=-1)
        pix = uvd @ img_aug_matrix[b, :, :3, :3].transpose(-1, -2) + img_aug_matrix[b, :, None, :3, 3]
        col, row = pix[..., 0], pix[..., 1]
        on_image = (col >= 0) & (col < iW) & (row >= 0) & (row < iH)
        for n in range(N):
            keep = on_image[n]
            flat = row[n, keep].long() * iW + col[n, keep].long()
            nearest = torch.full((iH * iW,), float("inf"), device=depth.device)
            nearest.scatter_reduce_(0, flat, dist[n, keep], reduce="amin")
            depth[b, n] = torch.where(torch.isinf(nearest), 0.0, nearest)
    return depth.view(B, N, 1, iH, iW)


@dataclass(frozen=True)
class BevPoolPlan:
    """What bev_pool needs, computed once per calibration (CUDA-BEVFusion's ``update()``).

    Every kept frustum point ``i`` contributes ``depth[ranks_depth[i]] * feat[ranks_feat[i], :]`` to one BEV cell.
    Points are stably sorted by cell, so each cell's points form one contiguous interval
    ``[interval_starts[j], interval_starts[j] + interval_lengths[j])``.

    * ``ranks_depth [P] int32``: flat index into depth weights ``[N, D, fH, fW]``;
    * ``ranks_feat [P] int32``: flat row index into features ``[N, fH, fW]`` (each row has C channels);
    * ``ranks_bev [P] int32``: flat offset of the point's cell, channel 0, in the output ``[1, Z·C, X, Y]``:
      ``z·C·X·Y + x·Y + y``; channel c lives at ``ranks_bev + c·X·Y``. For Z = 1 this is CUDA-BEVFusion's
      ``x·360 + y`` (with the non-square-grid bug of issue #315 fixed: the row stride is Y, not X);
    * ``interval_starts``, ``interval_lengths [K] int32``: one interval per BEV cell that is hit;
    * ``interval_order [K] int32``: the interval ids by decreasing length (ties in cell order), so a GPU program that
      walks a block of consecutive entries in step finds lanes of nearly equal length (``bevpool.traffic`` measures
      the lane utilisation this buys);
    * ``cell_offsets [Z·X·Y + 1] int32``: the points of flat cell ``r = z·X·Y + x·Y + y`` are
      ``[cell_offsets[r], cell_offsets[r + 1])`` (empty for a cell no point hits), a CSR row pointer over every cell,
      so a kernel can walk the output in memory order.
    """

    ranks_depth: Tensor
    ranks_feat: Tensor
    ranks_bev: Tensor
    interval_starts: Tensor
    interval_lengths: Tensor
    interval_order: Tensor
    cell_offsets: Tensor
    num_cameras: int
    depth_bins: int
    feature_size: tuple[int, int]
    channels: int
    grid_size: tuple[int, int, int]

    @property
    def num_points(self) -> int:
        """Kept frustum points P."""
        return self.ranks_depth.numel()

    @property
    def num_intervals(self) -> int:
        """BEV cells hit K."""
        return self.interval_starts.numel()

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """``[1, Z·C, X, Y]``."""
        X, Y, Z = self.grid_size
        return (1, Z * self.channels, X, Y)

    def to(self, device: torch.device | str) -> BevPoolPlan:
        """The same plan with its index tensors on ``device``."""
        moved = {k: getattr(self, k).to(device) for k in _PLAN_TENSORS}
        return BevPoolPlan(**moved, **{k: getattr(self, k) for k in _PLAN_META})

    def select_intervals(self, index: Tensor) -> BevPoolPlan:
        """The plan restricted to the cells ``interval ids index [K']`` (taken in cell order, each once), e.g.
        ``torch.arange(0, K, 8)`` for a spatially even eighth of the work. Points keep their order inside a cell."""
        index = torch.unique(index.to(self.interval_lengths.device))
        lengths = self.interval_lengths[index].long()
        starts = lengths.cumsum(0) - lengths
        # Point j of the new plan is point (old start + offset in its interval) of the old one.
        offset = torch.arange(int(lengths.sum()), device=lengths.device) - starts.repeat_interleave(lengths)
        points = self.interval_starts[index].long().repeat_interleave(lengths) + offset
        return _plan({k: getattr(self, k)[points] for k in _PLAN_RANKS}, self._meta())

    def select_points(self, keep: Tensor) -> BevPoolPlan:
        """The plan restricted to the points where ``keep [P]`` (bool) is true, in the same order; cells keep their
        intervals (emptied ones disappear). E.g. only the points a sparse depth actually weights."""
        return _plan({k: getattr(self, k)[keep] for k in _PLAN_RANKS}, self._meta())

    def point_cells(self) -> Tensor:
        """Flat cell ``z·X·Y + x·Y + y`` of each point, ``[P]`` int64 (``ranks_bev`` without the channel stride)."""
        return _point_cells(self.ranks_bev, self.channels, self.grid_size)

    def cell_counts(self) -> Tensor:
        """Kept points per camera and cell, ``[N, Z, X, Y]`` int64 (what the plan pictures of chapter 06 draw)."""
        X, Y, Z = self.grid_size
        fH, fW = self.feature_size
        camera = self.ranks_depth.long() // (self.depth_bins * fH * fW)
        counts = torch.bincount(camera * (Z * X * Y) + self.point_cells(), minlength=self.num_cameras * Z * X * Y)
        return counts.view(self.num_cameras, Z, X, Y)

    def summary(self) -> dict[str, float]:
        """Counts a reader wants to see: candidates, kept points, cells hit, interval lengths."""
        lengths = self.interval_lengths.float()
        total = self.num_cameras * self.depth_bins * self.feature_size[0] * self.feature_size[1]
        X, Y, Z = self.grid_size
        return {
            "candidate points": total,
            "kept points": self.num_points,
            "kept %": 100.0 * self.num_points / total,
            "cells hit": self.num_intervals,
            "cells hit %": 100.0 * self.num_intervals / (X * Y * Z),
            "mean points/cell": lengths.mean().item() if lengths.numel() else 0.0,
            "max points/cell": lengths.max().item() if lengths.numel() else 0.0,
        }

    def _meta(self) -> dict:
        return {k: getattr(self, k) for k in _PLAN_META}


_PLAN_RANKS = ("ranks_depth", "ranks_feat", "ranks_bev")
_PLAN_TENSORS = (*_PLAN_RANKS, "interval_starts", "interval_lengths", "interval_order", "cell_offsets")
_PLAN_META = ("num_cameras", "depth_bins", "feature_size", "channels", "grid_size")


def _plan(ranks: dict[str, Tensor], meta: dict) -> BevPoolPlan:
    """The plan of points ``ranks`` (int32 ``ranks_depth``, ``ranks_feat``, ``ranks_bev [P]``, sorted by cell) with
    everything derived from them: the intervals (the run lengths of ``ranks_bev``), their balanced order and the
    cells' CSR offsets. The one place a plan is assembled, so every plan carries the same derived arrays."""
    _, lengths = torch.unique_consecutive(ranks["ranks_bev"], return_counts=True)
    starts = lengths.cumsum(0) - lengths
    order = torch.sort(lengths, descending=True, stable=True).indices
    X, Y, Z = meta["grid_size"]
    counts = torch.bincount(_point_cells(ranks["ranks_bev"], meta["channels"], meta["grid_size"]), minlength=Z * X * Y)
    i32 = torch.int32
    return BevPoolPlan(
        **ranks,
        interval_starts=starts.to(i32),
        interval_lengths=lengths.to(i32),
        interval_order=order.to(i32),
        cell_offsets=torch.cat((counts.new_zeros(1), counts.cumsum(0))).to(i32),
        **meta,
    )


def _point_cells(ranks_bev: Tensor, channels: int, grid_size: tuple[int, int, int]) -> Tensor:
    """``[P]`` int64 flat cells ``z·X·Y + x·Y + y`` of output offsets ``ranks_bev = z·C·X·Y + x·Y + y``."""
    X, Y, _ = grid_size
    rank = ranks_bev.long()
    return (rank // (channels * X * Y)) * (X * Y) + rank % (channels * X * Y)


def plan_from_geometry(geometry: Tensor, config: CameraConfig = R50) -> BevPoolPlan:
    """Build the plan from lidar-frame frustum points ``[N, D, fH, fW, 3]`` (one sample).

    Cell indices follow MIT's truncation: ``((p - (bx - dx/2)) / dx).long()`` rounds toward zero, so a point up to
    one cell below the lower bound still lands in cell 0 (x, y effectively cover (-54.3, 54) and z (-30, 10) for
    R50). bevnb keeps that on purpose, to pool exactly what the PyTorch model pools. The keep test is written on the
    float cell coordinate q (``trunc(q) ∈ [0, n)`` ⇔ ``-1 < q < n``), so NaN or huge values are dropped, never wrapped.

    Differences from CUDA-BEVFusion's ``camera-geometry.cu``, all deliberate:

    * dropped points are removed before the sort instead of getting rank 0, so they cannot mix into the points of
      cell (0, 0, 0) (upstream's corner-cell collision, issue #222);
    * intervals come from the run lengths of the sorted ranks, so the last interval keeps its last point (upstream
      ended it at ``numel - 1``, PR #250);
    * ``ranks_bev`` uses the row stride Y, correct for non-square grids (issue #315).
    """
    N, D, fH, fW, _ = geometry.shape
    X, Y, Z = config.grid_size
    C = config.out_channels
    if N * D * fH * fW >= 2**31 or Z * C * X * Y >= 2**31:
        raise ValueError(f"plan indices are int32: got {N * D * fH * fW} frustum points and {Z * C * X * Y} outputs")
    dx = torch.tensor(config.cell_size, device=geometry.device)
    lower = torch.tensor(config.cell_center0, device=geometry.device) - dx / 2
    q = (geometry.reshape(-1, 3).float() - lower) / dx
    qx, qy, qz = q.unbind(-1)
    kept = (qx > -1) & (qx < X) & (qy > -1) & (qy < Y) & (qz > -1) & (qz < Z)
    ranks_depth = kept.nonzero().squeeze(1)  # flat index of (n, d, h, w), ascending
    ix, iy, iz = q[ranks_depth].to(torch.int32).unbind(-1)  # float → int truncates toward zero, like .long()
    ranks_bev, order = torch.sort(iz * (C * X * Y) + ix * Y + iy, stable=True)
    ranks_depth = ranks_depth[order]
    # Depth index (n, d, h, w) → feature row (n, h, w): drop the d digit.
    hw = fH * fW
    ranks_feat = (ranks_depth // (D * hw)) * hw + ranks_depth % hw
    ranks = {"ranks_depth": ranks_depth, "ranks_feat": ranks_feat, "ranks_bev": ranks_bev}
    meta = {"num_cameras": N, "depth_bins": D, "feature_size": (fH, fW), "channels": C, "grid_size": (X, Y, Z)}
    return _plan({k: v.to(torch.int32) for k, v in ranks.items()}, meta)


_PLAN_CACHE: dict[bytes, BevPoolPlan] = {}


def plan_bev_pool(sample: dict, config: CameraConfig = R50, use_cache: bool = True) -> BevPoolPlan:
    """The bev_pool plan for the calibration in ``sample`` (batch 1), cached by calibration.

    Reads ``camera2lidar``, ``camera_intrinsics``, ``img_aug_matrix`` and ``lidar_aug_matrix``; a second call with the
    same matrices returns the cached plan, as CUDA-BEVFusion recomputes geometry only when calibration changes
    (``use_cache=False`` recomputes it, e.g. to time it).
    """
    keys = ("camera2lidar", "camera_intrinsics", "img_aug_matrix", "lidar_aug_matrix")
    missing = [k for k in keys if k not in sample]
    if missing:
        raise ValueError(f"plan_bev_pool needs the sample keys {', '.join(keys)}; missing {', '.join(missing)}")
    mats = [torch.as_tensor(sample[k]).detach().to("cpu", torch.float32).contiguous() for k in keys]
    want = [(1, config.num_cameras, 4, 4)] * 3 + [(1, 4, 4)]
    for k, m, shape in zip(keys, mats, want, strict=True):
        if tuple(m.shape) != shape:
            raise ValueError(f"{k} must be {list(shape)} (one sample), got {list(m.shape)}")
    key = repr(config).encode() + b"".join(m.numpy().tobytes() for m in mats)
    if key not in _PLAN_CACHE or not use_cache:
        geometry = get_geometry(create_frustum(config), *mats)
        _PLAN_CACHE[key] = plan_from_geometry(geometry[0], config)
    return _PLAN_CACHE[key]
