"""Boxes ↔ the detection head's maps: CenterPoint's training targets and its decoding, in plain PyTorch.

Boxes are in the lidar frame in mmdet3d's ``LiDARInstance3DBoxes`` layout, the layout of the synthetic scene's
``gt_boxes``: ``[x, y, z, dx, dy, dz, yaw]`` with z at the bottom centre, dx the length along the heading, yaw
counter-clockwise from lidar +x, plus ``[vx, vy]`` when there are nine columns. Labels index ``config.CLASS_NAMES``
(nuScenes' ten classes), so decoded boxes compare directly with a synthetic sample's ``gt_boxes`` / ``gt_labels``.

The grid (``BoxCoder``): the head's map cell ``(i, j)`` (row i along x, column j along y, the BEV's layout) covers
``x ∈ [x_lo + i·s_x, x_lo + (i + 1)·s_x)`` and the same along y, with ``s = voxel_size · out_size_factor``: for R50
``x_lo = -54`` m, the bev_pool voxel 0.3 m and ``out_size_factor`` 2 (the vtransform's stride 2; the head's maps keep
the 180×180 of its input), so 0.6 m cells.

* ``encode_targets`` is mmdet3d's ``CenterHead.get_targets`` for one sample: per task a Gaussian heatmap (radius
  from CenterNet's ``gaussian_radius`` with ``gaussian_overlap 0.1``, at least ``min_radius 2`` cells) and, at each
  box's peak cell, the regression target ``[Δx, Δy, z_centre, log dx, log dy, log dz, sin yaw, cos yaw, vx, vy]``
  (``norm_bbox``: dims as log; the height head regresses the box's gravity centre, as mmdet3d).
* ``centerhead_loss`` is ``CenterHead.loss``: mmdet's Gaussian focal loss on the clipped sigmoid heatmap, averaged
  over the peaks, and the L1 loss of the regression maps at the peak cells (``code_weights`` 1, velocity 0.2),
  averaged over the boxes and weighted 0.25.
* ``decode`` is ``CenterPointBBoxCoder.decode`` + ``CenterHead.get_bboxes``: sigmoid heatmap, peaks that are the
  maximum of their 3×3 neighbourhood (CenterNet's max-pool NMS), the top ``max_num`` peaks over all classes of a
  task, ``score > score_threshold``, centres inside ``post_center_range``; z back to the bottom centre.

Where this differs from MIT's code: cell indices are floored and a box whose centre lies outside the maps gets no
target (MIT truncates toward zero, so a centre less than a cell below the low edge lands in cell 0); the boxes of a
task are returned unpadded (MIT pads to ``max_objs`` for batching); and the peaks are kept by the 3×3 max-pool
instead of MIT's test-time circle / rotated NMS, which needs no extra radius per class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import CLASS_NAMES, R50, CameraConfig
from .head import SMALL_WIDTHS, HeadConfig

BOX_TARGET_NAMES = ("dx_cell", "dy_cell", "z_centre", "log_dx", "log_dy", "log_dz", "sin_yaw", "cos_yaw", "vx", "vy")
"""The columns of a regression target, in the channel order of ``reg``, ``height``, ``dim``, ``rot``, ``vel``."""
REGRESSION_HEADS = ("reg", "height", "dim", "rot", "vel")
CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)  # MIT's train_cfg.code_weights
BBOX_LOSS_WEIGHT = 0.25  # loss_bbox: L1Loss, loss_weight 0.25


@dataclass(frozen=True)
class BoxCoder:
    """The maps' grid in metres and the target and decoding settings (mmdet3d's ``CenterPointBBoxCoder`` and
    ``CenterHead.train_cfg``/``test_cfg``). ``for_config`` derives one from the camera and head configurations.

    ``pc_range``: (x, y) of the grid's low corner (m); ``voxel_size``: the bev_pool cell (m); ``out_size_factor``:
    voxels per map cell; ``map_size``: (X, Y) of the maps; ``tasks``: class names per task;
    ``post_center_range``: ``(x_lo, y_lo, z_lo, x_hi, y_hi, z_hi)`` a decoded centre must lie in (m).
    """

    pc_range: tuple[float, float]
    voxel_size: tuple[float, float]
    out_size_factor: float
    map_size: tuple[int, int]
    tasks: tuple[tuple[str, ...], ...]
    post_center_range: tuple[float, float, float, float, float, float]
    score_threshold: float = 0.1
    max_num: int = 500
    gaussian_overlap: float = 0.1
    min_radius: int = 2
    norm_bbox: bool = True

    @classmethod
    def for_config(cls, config: CameraConfig = R50, head: HeadConfig = SMALL_WIDTHS, **settings: float) -> BoxCoder:
        """The coder for the head ``head`` on the BEV of ``config``: the grid from ``xbound``/``ybound``, the maps'
        size from the head, ``post_center_range`` = the grid and ``zbound``. ``settings`` override the rest
        (``score_threshold``, ``max_num``, …)."""
        (x_lo, x_hi, vx), (y_lo, y_hi, vy), (z_lo, z_hi, _) = config.xbound, config.ybound, config.zbound
        return cls(
            pc_range=(x_lo, y_lo),
            voxel_size=(vx, vy),
            out_size_factor=config.downsample * head.map_stride,
            map_size=head.output_size(config.out_bev_size),
            tasks=head.tasks,
            post_center_range=(x_lo, y_lo, z_lo, x_hi, y_hi, z_hi),
            **settings,
        )

    @property
    def cell_size(self) -> tuple[float, float]:
        """(s_x, s_y): a map cell's edge in metres, ``voxel_size · out_size_factor`` (0.6 m for R50)."""
        return tuple(v * self.out_size_factor for v in self.voxel_size)

    def to_cells(self, xy: Tensor) -> Tensor:
        """Lidar-frame ``xy [..., 2]`` (m) → continuous map coordinates ``[..., 2]`` (cell (i, j) spans [i, i + 1))."""
        return (xy - xy.new_tensor(self.pc_range)) / xy.new_tensor(self.cell_size)

    def to_metres(self, cells: Tensor) -> Tensor:
        """The inverse of ``to_cells``: continuous map coordinates ``[..., 2]`` → lidar-frame ``xy [..., 2]`` (m)."""
        return cells * cells.new_tensor(self.cell_size) + cells.new_tensor(self.pc_range)

    def task_labels(self, task: int) -> Tensor:
        """The ``CLASS_NAMES`` index of each heatmap channel of task ``task``, ``[n_classes]`` int64."""
        return torch.tensor([CLASS_NAMES.index(name) for name in self.tasks[task]])


@dataclass(frozen=True)
class TaskTargets:
    """One task's targets for one sample: ``heatmap [n_classes, X, Y]`` in [0, 1] (1 at each box's peak cell),
    ``boxes [M, 10]`` (columns ``BOX_TARGET_NAMES``) and ``indices [M]`` (the peak cell, ``i·Y + j``), one row per
    box of the task whose centre lies on the maps."""

    heatmap: Tensor
    boxes: Tensor
    indices: Tensor


def gaussian_radius(size: Tensor, min_overlap: float = 0.1) -> Tensor:
    """CenterNet's radius (in cells) within which a corner shift keeps IoU ≥ ``min_overlap``, for box sizes
    ``size [..., 2]`` (cells): the smallest root of its three cases, as mmdet3d's ``gaussian_radius``. ``[...]``."""
    h, w = size[..., 0], size[..., 1]
    b1, c1 = h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def draw_gaussian(heatmap: Tensor, cell: tuple[int, int], radius: int) -> None:
    """Max-merge a Gaussian of ``sigma = (2·radius + 1) / 6`` centred on ``cell`` into ``heatmap [X, Y]`` in place,
    clipped at the borders (mmdet3d's ``draw_heatmap_gaussian``; values below float64 eps × peak are zero)."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    sigma = (2 * radius + 1) / 6
    gaussian = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    gaussian[gaussian < torch.finfo(torch.float64).eps] = 0
    (i, j), (X, Y) = cell, heatmap.shape
    top, bottom = min(i, radius), min(X - i, radius + 1)
    left, right = min(j, radius), min(Y - j, radius + 1)
    window = heatmap[i - top : i + bottom, j - left : j + right]
    patch = gaussian[radius - top : radius + bottom, radius - left : radius + right].to(heatmap.dtype)
    torch.maximum(window, patch, out=window)


def encode_targets(boxes: Tensor, labels: Tensor, coder: BoxCoder) -> list[TaskTargets]:
    """The head's training targets for one sample: ``boxes [K, 7]`` or ``[K, 9]`` (with velocity; zero without) and
    ``labels [K]`` (``CLASS_NAMES`` indices) → one ``TaskTargets`` per task. Boxes of classes outside the tasks, or
    whose centre lies off the maps, get no target."""
    boxes = boxes.float()
    if boxes.shape[-1] == 7:
        boxes = F.pad(boxes, (0, 2))
    X, Y = coder.map_size
    size_cells = boxes[:, 3:5] / boxes.new_tensor(coder.cell_size)
    radii = gaussian_radius(size_cells, coder.gaussian_overlap).int().clamp(min=coder.min_radius)
    centres = coder.to_cells(boxes[:, :2])
    cells = centres.floor().long()
    on_map = (cells[:, 0] >= 0) & (cells[:, 0] < X) & (cells[:, 1] >= 0) & (cells[:, 1] < Y)
    targets = []
    for task in range(len(coder.tasks)):
        heatmap = boxes.new_zeros(len(coder.tasks[task]), X, Y)
        rows, indices = [], []
        for channel, label in enumerate(coder.task_labels(task).tolist()):
            for k in torch.nonzero((labels == label) & on_map).flatten().tolist():
                i, j = cells[k].tolist()
                draw_gaussian(heatmap[channel], (i, j), int(radii[k]))
                z, dx, dy, dz, yaw, vx, vy = boxes[k, 2:]
                dims = torch.stack((dx, dy, dz))
                dims = dims.log() if coder.norm_bbox else dims
                offset = centres[k] - cells[k]
                rows.append(torch.cat((offset, (z + dz / 2)[None], dims, torch.stack((yaw.sin(), yaw.cos(), vx, vy)))))
                indices.append(i * Y + j)
        box_targets = torch.stack(rows) if rows else boxes.new_zeros(0, len(BOX_TARGET_NAMES))
        targets.append(TaskTargets(heatmap, box_targets, torch.tensor(indices, dtype=torch.int64)))
    return targets


def gaussian_focal_loss(pred: Tensor, target: Tensor, alpha: float = 2.0, gamma: float = 4.0) -> Tensor:
    """mmdet's ``gaussian_focal_loss``, elementwise: ``pred`` (probabilities) against a Gaussian ``target`` (1 at
    peaks), same shape → same shape. Peaks count as positives; elsewhere the penalty shrinks as ``(1 - target)^4``."""
    eps = 1e-12
    positive = -(pred + eps).log() * (1 - pred).pow(alpha) * target.eq(1)
    negative = -(1 - pred + eps).log() * pred.pow(alpha) * (1 - target).pow(gamma)
    return positive + negative


def centerhead_loss(
    outputs: list[dict[str, Tensor]], targets: list[list[TaskTargets]], code_weights: tuple[float, ...] = CODE_WEIGHTS
) -> dict[str, Tensor]:
    """``CenterHead.loss`` for a batch: ``outputs`` as ``DetectionHead`` returns them (batch B), ``targets[b]``
    ``encode_targets``' tasks of sample ``b`` → ``{"heatmap/task{t}": …, "bbox/task{t}": …}`` (scalars; their sum is
    the head's loss). The heatmap loss is summed over cells and divided by the number of peaks (at least 1); the L1
    box loss is summed over the peak cells' ``BOX_TARGET_NAMES`` columns times ``code_weights``, divided by the
    number of boxes (+ 1e-4), times ``BBOX_LOSS_WEIGHT``."""
    losses = {}
    weights = torch.tensor(code_weights)
    for t, maps in enumerate(outputs):
        pred = maps["heatmap"].sigmoid().clamp(1e-4, 1 - 1e-4)  # mmdet3d's clip_sigmoid
        target = torch.stack([sample[t].heatmap for sample in targets])
        losses[f"heatmap/task{t}"] = gaussian_focal_loss(pred, target).sum() / target.eq(1).sum().clamp(min=1)
        regression = torch.cat([maps[name] for name in REGRESSION_HEADS], dim=1).flatten(2)  # [B, 10, X·Y]
        at_peaks = torch.cat([regression[b][:, sample[t].indices].T for b, sample in enumerate(targets)])
        box_targets = torch.cat([sample[t].boxes for sample in targets])
        l1 = ((at_peaks - box_targets).abs() * weights.to(at_peaks)).sum() / (len(box_targets) + 1e-4)
        losses[f"bbox/task{t}"] = BBOX_LOSS_WEIGHT * l1
    return losses


def find_peaks(heatmap: Tensor, max_num: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``max_num`` highest local maxima of ``heatmap [B, C, X, Y]`` (scores after sigmoid): a cell is kept only
    if it is the maximum of its 3×3 neighbourhood. → ``(scores [B, K], channels [B, K], cells [B, K])`` with
    ``cells = i·Y + j`` and ``K = min(max_num, C·X·Y)``."""
    B, C, X, Y = heatmap.shape
    peaks = heatmap * (F.max_pool2d(heatmap, 3, stride=1, padding=1) == heatmap)
    scores, flat = peaks.view(B, -1).topk(min(max_num, C * X * Y))
    return scores, flat // (X * Y), flat % (X * Y)


def decode(outputs: list[dict[str, Tensor]], coder: BoxCoder) -> list[dict[str, Tensor]]:
    """The head's maps (one dict per task, as ``DetectionHead`` returns them, batch B) → one dict per sample:
    ``boxes [K, 9]`` (``[x, y, z, dx, dy, dz, yaw, vx, vy]``, z at the bottom centre, lidar frame), ``scores [K]``
    and ``labels [K]`` (``CLASS_NAMES`` indices), sorted by score, highest first."""
    per_sample: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(outputs[0]["heatmap"].shape[0])]
    low, high = coder.post_center_range[:3], coder.post_center_range[3:]
    for task, maps in enumerate(outputs):
        B, Y = maps["heatmap"].shape[0], maps["heatmap"].shape[-1]
        scores, channels, cells = find_peaks(maps["heatmap"].sigmoid(), coder.max_num)
        # every regression map at the peak cells, [B, K, 10] in BOX_TARGET_NAMES order
        regression = torch.cat([maps[name] for name in REGRESSION_HEADS], dim=1)
        at_peaks = regression.flatten(2).gather(2, cells[:, None].expand(-1, regression.shape[1], -1))
        offset, z_centre, dims, rot, velocity = at_peaks.transpose(1, 2).split((2, 1, 3, 2, 2), dim=-1)
        xy = coder.to_metres(torch.stack((cells // Y, cells % Y), dim=-1).to(offset.dtype) + offset)
        dims = dims.exp() if coder.norm_bbox else dims
        yaw = torch.atan2(rot[..., :1], rot[..., 1:])
        boxes = torch.cat((xy, z_centre - dims[..., 2:] / 2, dims, yaw, velocity), dim=-1)
        centre = torch.cat((xy, z_centre), dim=-1)
        keep = (scores > coder.score_threshold) & (centre >= centre.new_tensor(low)).all(-1)
        keep &= (centre <= centre.new_tensor(high)).all(-1)
        labels = coder.task_labels(task).to(channels.device)[channels]
        for b in range(B):
            per_sample[b].append((boxes[b, keep[b]], scores[b, keep[b]], labels[b, keep[b]]))
    results = []
    for found in per_sample:
        boxes, scores, labels = (torch.cat(parts) for parts in zip(*found, strict=True))
        order = scores.argsort(descending=True, stable=True)
        results.append({"boxes": boxes[order], "scores": scores[order], "labels": labels[order]})
    return results
