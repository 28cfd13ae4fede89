"""Figures for the chapters and the README: a flat module of functions that each return a matplotlib Figure.

Shapes go in titles, units on axes. Nothing here computes what a chapter teaches; it only draws what the package
computed. Figures are built with ``matplotlib.figure.Figure``, not pyplot, so nothing accumulates in pyplot's
registry and a notebook shows a returned figure exactly once (after ``%matplotlib inline``, which registers
IPython's PNG formatter for Figure). Chapters append their figure functions at the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .bevpool.traffic import BANDWIDTHS, Traffic
from .config import R50, CameraConfig
from .data import denormalize_image
from .geometry import BevPoolPlan, create_frustum, get_geometry
from .oracle import BOX_CHANNEL0, OracleLift
from .rig import Rig, as_rig
from .scene import CLASS_NAMES, box_corners

if TYPE_CHECKING:
    from torch import Tensor

    from .model import CameraBranch
    from .sensitivity import Sensitivity, Unit
    from .validation import Int8Accuracy

# nuScenes' usual picture: front cameras on top, back cameras below, each row left to right as seen from the car
MOSAIC_LAYOUT = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))


def mosaic_layout(rig: Rig) -> tuple[tuple[str | None, ...], ...]:
    """Rows of camera names for a mosaic: ``MOSAIC_LAYOUT`` for nuScenes' six cameras, else rows of three, left to
    right as seen from the car (decreasing heading), padded with None."""
    names = rig.camera_names
    if sorted(names) == sorted(n for row in MOSAIC_LAYOUT for n in row):
        return MOSAIC_LAYOUT
    ordered = [names[i] for i in rig.headings_deg.argsort(descending=True).tolist()]
    padded = ordered + [None] * (-len(ordered) % 3)
    return tuple(tuple(padded[i : i + 3]) for i in range(0, len(padded), 3))


def _mosaic_axes(title: str, rig: Rig, width: float = 15.0) -> tuple[Figure, dict[str, Axes]]:
    """A grid of image axes keyed by camera name, in ``mosaic_layout(rig)``."""
    iH, iW = rig.image_size
    layout = mosaic_layout(rig)
    fig = Figure(figsize=(width, len(layout) * width / 3 * iH / iW + 0.9), layout="constrained")
    axes = fig.subplots(len(layout), 3, squeeze=False)
    fig.suptitle(title)
    named = {}
    for row, names in zip(axes, layout, strict=True):
        for ax, name in zip(row, names, strict=True):
            ax.set_axis_off()
            if name is not None:
                named[name] = ax
    return fig, named


def _rig_of(sample: dict, rig: Rig | str | Path | None) -> Rig:
    rig = as_rig(rig)
    if sample["img"].shape[1] != rig.num_cameras:
        raise ValueError(f"the sample has {sample['img'].shape[1]} cameras, the rig {rig.num_cameras}: pass its rig")
    return rig


def camera_mosaic(sample: dict, title: str | None = None, rig: Rig | str | Path | None = None) -> Figure:
    """The network-input images ``img [1, N, 3, iH, iW]`` (de-normalised) of ``rig``'s cameras (default: the
    nuScenes-like rig, in nuScenes' layout)."""
    img = sample["img"][0].detach().float().cpu()
    rig = _rig_of(sample, rig)
    what = f"the {rig.num_cameras} cameras after resize {rig.resize:g} + crop"
    fig, axes = _mosaic_axes(title or f"img {list(sample['img'].shape)}: {what}", rig)
    for n, name in enumerate(rig.camera_names):
        axes[name].imshow(denormalize_image(img[n]).permute(1, 2, 0).numpy(), interpolation="nearest")
        axes[name].set_title(f"{n}: {name} [3, {img.shape[2]}, {img.shape[3]}]", fontsize=9)
    return fig


def depth_overlay(
    sample: dict, depth: torch.Tensor, max_depth: float = 60.0, rig: Rig | str | Path | None = None
) -> Figure:
    """Lidar depth ``depth [1, N, 1, iH, iW]`` (m, 0 = no point) as coloured dots over each camera image."""
    img = sample["img"][0].detach().float().cpu()
    d = depth[0, :, 0].detach().float().cpu()
    rig = _rig_of(sample, rig)
    fig, axes = _mosaic_axes(f"depth {list(depth.shape)}: lidar points projected into each camera", rig)
    mappable = None
    for n, name in enumerate(rig.camera_names):
        ax = axes[name]
        ax.imshow(denormalize_image(img[n]).permute(1, 2, 0).numpy() * 0.6, interpolation="nearest")
        rows, cols = torch.nonzero(d[n] > 0, as_tuple=True)
        mappable = ax.scatter(cols, rows, c=d[n, rows, cols], s=0.6, cmap="turbo", vmin=0.0, vmax=max_depth)
        ax.set_title(f"{n}: {name}, {rows.numel()} pixels with depth", fontsize=9)
    fig.colorbar(mappable, ax=list(axes.values()), shrink=0.8, label="depth along the optical axis (m)")
    return fig


def instance_overlay(sample: dict, rig: Rig | str | Path | None = None) -> Figure:
    """``instance_map [1, N, iH, iW]`` (which box each pixel sees) tinted over the camera images, with box indices."""
    img = sample["img"][0].detach().float().cpu()
    instance = sample["instance_map"][0]
    K = len(sample["gt_boxes"][0])
    rig = _rig_of(sample, rig)
    title = f"instance_map {list(sample['instance_map'].shape)}: the box each pixel sees (-1: none)"
    fig, axes = _mosaic_axes(title, rig)
    colors = torch.tensor(matplotlib.colormaps["tab20"].colors)[torch.arange(K) % 20]
    for n, name in enumerate(rig.camera_names):
        ax, ids = axes[name], instance[n]
        rgb = denormalize_image(img[n]).permute(1, 2, 0)
        tint = torch.where((ids >= 0)[..., None], 0.4 * rgb + 0.6 * colors[ids.clamp(min=0)], 0.5 * rgb)
        ax.imshow(tint.numpy(), interpolation="nearest")
        for k in torch.unique(ids[ids >= 0]).tolist():
            rows, cols = torch.nonzero(ids == k, as_tuple=True)
            ax.text(cols.float().mean(), rows.float().mean(), str(k), color="w", fontsize=8, ha="center", va="center")
        ax.set_title(f"{n}: {name}, boxes {sorted(torch.unique(ids[ids >= 0]).tolist())}", fontsize=9)
    return fig


# --- the one BEV view: every top-down figure uses it ---------------------------------------------------------------

BEV_XLABEL, BEV_YLABEL = "x (m, right)", "y (m, forward)"


def bev_axes(ax: Axes, xlabel: bool = True, ylabel: bool = True) -> None:
    """Label ``ax`` as every BEV figure of bevnb is drawn: the lidar frame from above (nuScenes' LIDAR_TOP), x to
    the right, y (forward) up, metres, equal aspect."""
    ax.set(aspect="equal")
    if xlabel:
        ax.set_xlabel(BEV_XLABEL)
    if ylabel:
        ax.set_ylabel(BEV_YLABEL)


def bev_image(ax: Axes, image: torch.Tensor, config: CameraConfig = R50, **imshow: object) -> object:
    """Draw a BEV map ``[X, Y]`` or ``[X, Y, 3]`` (rows x, columns y, as bev_pool stores it; any resolution, the
    extent is metric) in the one BEV view of ``bev_axes``: forward up. Returns the image artist."""
    (x0, x1, _), (y0, y1, _) = config.xbound, config.ybound
    shown = ax.imshow(image.transpose(0, 1), origin="lower", extent=(x0, x1, y0, y1), **imshow)
    bev_axes(ax)
    return shown


GT_COLORS = {"car": "crimson", "pedestrian": "darkorange"}  # ground truth; predictions: PREDICTED_COLORS
PREDICTED_COLORS = {"car": "deepskyblue", "pedestrian": "lime"}


def bev_boxes(
    ax: Axes, boxes: torch.Tensor, labels: torch.Tensor, colors: Mapping[str, str] = GT_COLORS, fill: bool = True
) -> None:
    """Boxes ``[K, ≥7]`` (lidar frame) from above in the BEV view: the footprint (filled, or outlined when not
    ``fill``) and a line from the centre to the +dx face (the heading), coloured by class (``labels [K]``)."""
    for corners, label in zip(box_corners(boxes[:, :7]), labels, strict=True):
        color = colors.get(CLASS_NAMES[label], "gray")
        style = {"fc": color, "alpha": 0.6} if fill else {"fc": "none"}
        ax.fill(corners[:4, 0], corners[:4, 1], ec=color, lw=1.0, **style)
        front = corners[[0, 3], :2].mean(0)  # the +dx face: the box's heading
        ax.plot([corners[:4, 0].mean(), front[0]], [corners[:4, 1].mean(), front[1]], color=color, lw=1.0)


def _frustum_outlines(sample: dict, config: CameraConfig) -> Tensor:
    """``[N, 2·D, 2]``: each camera's frustum seen from above (lidar x, y), near to far along its left edge, then far
    to near along its right edge, at the middle feature row (with level cameras every row has the same footprint)."""
    geometry = get_geometry(
        create_frustum(config), sample["camera2lidar"], sample["camera_intrinsics"], sample["img_aug_matrix"]
    )[0, :, :, config.feature_size[0] // 2, :, :2]  # [N, D, fW, 2]
    return torch.cat((geometry[:, :, 0], geometry[:, :, -1].flip(1)), 1)


def _grid_outline(ax: Axes, config: CameraConfig) -> None:
    (x0, x1, _), (y0, y1, _) = config.xbound, config.ybound
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", ec="k", lw=0.8, label="BEV grid"))


def bev_plot(sample: dict, rig: Rig | str | Path | None = None, title: str | None = None) -> Figure:
    """Top-down view of a sample in the lidar frame: lidar points coloured by height, ground-truth boxes (when
    the sample has them), each camera's frustum footprint (``dbound`` near to far) and the BEV grid's bounds.

    Axes are metric (x right, y forward, as nuScenes' LIDAR_TOP); the bev_pool tensor stores the same grid with
    rows = x and columns = y.
    """
    rig = _rig_of(sample, rig)
    config = rig.config
    fig = Figure(figsize=(7.5, 8.0), layout="constrained")
    ax = fig.subplots()
    for n, (name, outline) in enumerate(zip(rig.camera_names, _frustum_outlines(sample, config), strict=True)):
        ax.fill(outline[:, 0], outline[:, 1], alpha=0.12, color=f"C{n}", label=f"{name} frustum")
    points = sample["points"][0]
    dots = ax.scatter(points[:, 0], points[:, 1], c=points[:, 2], s=0.3, cmap="viridis", vmin=-2.0, vmax=3.0)
    fig.colorbar(dots, ax=ax, shrink=0.7, label="point height z (m, lidar frame)")
    if "gt_boxes" in sample:
        bev_boxes(ax, sample["gt_boxes"][0], sample["gt_labels"][0])
    (x0, x1, _), (y0, y1, _) = config.xbound, config.ybound
    _grid_outline(ax, config)
    ax.plot(0, 0, "k^", ms=6, label="lidar")
    ax.set(xlim=(x0 - 8, x1 + 8), ylim=(y0 - 8, y1 + 8))
    bev_axes(ax)
    X, Y, _ = config.grid_size
    ax.set_title(
        title or f"points {list(points.shape)}, frustum footprints, BEV grid {X}×{Y} cells of {config.xbound[2]} m"
    )
    fig.legend(loc="outside lower center", ncols=4, fontsize=7)
    return fig


def rig_plot(rig: Rig | str | Path | None = None, grid_lines: int = 16) -> Figure:
    """A rig from above, in the lidar frame (metres). Left: each camera's frustum footprint (the middle feature row,
    ``dbound``'s nearest to farthest bin) and the BEV grid with a line every ``grid_lines`` cells. Right: the car,
    zoomed: each camera's position and optical axis, the lidar and the ego origin (``lidar2ego``)."""
    rig = as_rig(rig)
    config = rig.config
    (x0, x1, dx), (y0, y1, dy) = config.xbound, config.ybound
    X, Y, _ = config.grid_size
    fig = Figure(figsize=(13.0, 6.6), layout="constrained")
    overview, car = fig.subplots(1, 2, width_ratios=(1.6, 1.0))
    for i in range(0, X + 1, grid_lines):
        overview.plot([x0 + i * dx] * 2, [y0, y1], color="0.88", lw=0.5)
    for j in range(0, Y + 1, grid_lines):
        overview.plot([x0, x1], [y0 + j * dy] * 2, color="0.88", lw=0.5)
    _grid_outline(overview, config)
    headings = rig.headings_deg
    outlines = _frustum_outlines(rig.matrices(), config)
    for n, name in enumerate(rig.camera_names):
        label = f"{name} ({round(float(headings[n])) + 0:+d}°)"
        overview.fill(outlines[n, :, 0], outlines[n, :, 1], alpha=0.15, color=f"C{n}", label=label)
        (cx, cy), (ax_x, ax_y) = rig.camera2lidar[n, :2, 3].tolist(), rig.camera2lidar[n, :2, 2].tolist()
        car.plot(cx, cy, "o", color=f"C{n}")
        car.annotate("", (cx + ax_x, cy + ax_y), (cx, cy), arrowprops={"arrowstyle": "->", "color": f"C{n}"})
        car.annotate(name, (cx, cy), fontsize=7, xytext=(4, -10), textcoords="offset points")
    ego = torch.linalg.inv(rig.lidar2ego.double())[:2, 3].tolist()
    for ax in (overview, car):
        ax.plot(0, 0, "k^", ms=6)
        ax.plot(*ego, "ks", ms=5)
        bev_axes(ax)
    overview.set(xlim=(x0 - 6, x1 + 6), ylim=(y0 - 6, y1 + 6))
    overview.set_title(
        f"{rig.name}: {rig.num_cameras} cameras, input {'×'.join(map(str, config.image_size))}, "
        f"grid {X}×{Y} cells of {dx:g} m × {dy:g} m",
        fontsize=10,
    )
    car.set(xlim=(-2.5, 2.5), ylim=(-2.5, 2.5))
    car.set_title("camera positions and optical axes (1 m); ▲ lidar, ■ ego origin", fontsize=10)
    fig.legend(loc="outside lower center", ncols=min(6, rig.num_cameras + 1), fontsize=8)
    return fig


README_FIGURES = {"camera_mosaic.png": camera_mosaic, "bev_scene.png": bev_plot}


def write_readme_figures(sample: dict, out_dir: str | Path, dpi: int = 80) -> list[Path]:
    """Save the README's pictures of ``sample`` (``README_FIGURES``) as PNG under ``out_dir``; returns the paths.

    The README's copies under ``docs/`` are ``write_readme_figures(make_sample("synthetic"), "docs")``. PNG
    metadata carries no version string, so the same sample gives the same bytes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in README_FIGURES.items():
        path = out_dir / name
        draw(sample).savefig(path, dpi=dpi, metadata={"Software": None})
        paths.append(path)
    return paths


# --- chapter 06: the bev_pool plan and its benchmark ------------------------------------------------------------------


def plan_cells_per_camera(plan: BevPoolPlan, rig: Rig | str | Path | None = None) -> Figure:
    """Where each camera's kept frustum points land: points per BEV cell (log colour, white = none), one panel per
    camera in the mosaic layout. Axes as ``bev_plot`` (x right, y forward); the tensor's rows are x, columns y."""
    rig = as_rig(rig)
    config = rig.config
    counts = plan.cell_counts().sum(1)  # [N, X, Y]: the Z slices summed
    names = rig.camera_names
    (x0, x1, _), (y0, y1, _) = config.xbound, config.ybound
    layout = mosaic_layout(rig)
    fig = Figure(figsize=(13.0, 4.25 * len(layout) * (y1 - y0) / (x1 - x0) + 0.5), layout="constrained")
    axes = fig.subplots(len(layout), 3, sharex=True, sharey=True, squeeze=False)
    vmax = max(2, int(counts.max()))
    for ax, name in zip(axes.flat, (n for row in layout for n in row), strict=True):
        if name is None:
            ax.set_axis_off()
            continue
        n = names.index(name)
        cells = counts[n].T.float()  # [Y, X]: image rows y (up, with origin="lower"), columns x
        shown = ax.imshow(
            cells.masked_fill(cells == 0, float("nan")),
            origin="lower",
            extent=(x0, x1, y0, y1),
            norm="log",
            vmin=1,
            vmax=vmax,
            cmap="viridis",
            interpolation="nearest",
        )
        ax.set_title(f"{n}: {name}, {int((counts[n] > 0).sum()):,} cells, {int(counts[n].sum()):,} points", fontsize=9)
    for (row, col), ax in np.ndenumerate(axes):
        bev_axes(ax, xlabel=row == len(axes) - 1, ylabel=col == 0)
    fig.colorbar(shown, ax=axes, shrink=0.8, label="kept frustum points per cell")
    X, Y, Z = plan.grid_size
    fig.suptitle(f"bev_pool plan: {plan.num_points:,} points into {plan.num_intervals:,} of {X}×{Y}×{Z} cells")
    return fig


def interval_length_histogram(plan: BevPoolPlan) -> Figure:
    """How many points each BEV cell sums (the interval lengths), log-log: the work per cell is very uneven."""
    lengths = plan.interval_lengths.cpu().float()
    fig = Figure(figsize=(8.0, 4.0), layout="constrained")
    ax = fig.subplots()
    top = max(2.0, float(lengths.max())) if lengths.numel() else 2.0
    ax.hist(lengths.numpy(), bins=((top * 1.05) ** (torch.arange(41) / 40)).numpy(), color="C0")  # log-spaced
    if lengths.numel():
        mean = float(lengths.mean())
        ax.axvline(mean, color="C1", ls="--", label=f"mean {mean:.1f} points")
        ax.axvline(top, color="C3", ls=":", label=f"longest {top:.0f} points")
        ax.legend()
    ax.set(xscale="log", yscale="log", xlabel="points in the cell (interval length)", ylabel="cells")
    ax.set_title(f"interval lengths [{plan.num_intervals:,}]: {plan.num_points:,} points in total")
    return fig


def bev_pool_scaling(results: list[dict]) -> Figure:
    """Time against the number of points for each backend (log-log), from ``benchmarks/bev_pool.py`` results; one
    line style per device when several results are given."""
    fig = Figure(figsize=(8.0, 4.8), layout="constrained")
    ax = fig.subplots()
    styles = ("-", "--", ":", "-.")
    for result, style in zip(results, styles, strict=False):
        rows = [r for r in result["scaling"] if "us" in r]
        for i, backend in enumerate(dict.fromkeys(r["backend"] for r in result["scaling"])):
            mine = sorted((r["points"], r["us"]) for r in rows if r["backend"] == backend)
            if mine:
                points, us = zip(*mine, strict=True)
                label = f"{backend}, {result['device']['name']}" if len(results) > 1 else backend
                ax.plot(points, us, style, marker="o", color=f"C{i}", label=label)
    ax.set(xscale="log", yscale="log", xlabel="kept frustum points pooled", ylabel="time per call (µs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    names = ", ".join(f"{r['device']['name']} (Triton {r['device']['triton']})" for r in results)
    ax.set_title(f"bev_pool time against points, C = 80 — {names}", fontsize=9)
    return fig


def bev_pool_traffic(models: list[Traffic], bandwidth: str = "H200") -> Figure:
    """DRAM bytes each bev_pool backend moves per call, from the traffic model (``bevnb.bevpool.traffic``), against
    the floor: one panel per dtype, log scale; each bar is labelled with its multiple of the floor and the µs it
    needs at ``bandwidth`` (a ``BANDWIDTHS`` key)."""
    dtypes = list(dict.fromkeys(m.dtype for m in models))
    rows = max(sum(m.dtype == d for m in models) for d in dtypes)
    fig = Figure(figsize=(9.0, 1.0 + 0.42 * rows * len(dtypes)), layout="constrained")
    axes = fig.subplots(len(dtypes), 1, sharex=True, squeeze=False)[:, 0]
    top = max(m.moved for m in models) / 1e6
    for ax, dtype in zip(axes, dtypes, strict=True):
        mine = [m for m in models if m.dtype == dtype]
        colours = ["C0" if m.backend.startswith("triton") else "C7" for m in mine]
        ax.barh([m.backend for m in mine], [m.moved / 1e6 for m in mine], color=colours)
        floor = mine[0].floor / 1e6
        ax.axvline(floor, color="C3", ls="--", label=f"floor {floor:.1f} MB")
        for y, m in enumerate(mine):
            us = m.microseconds(BANDWIDTHS[bandwidth])
            ax.text(m.moved / 1e6, y, f"  {m.moved / m.floor:.2f}× floor, {us:,.1f} µs", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{dtype}: bytes moved per call (model) and the time they need at {bandwidth}", fontsize=9)
        ax.legend(loc="lower right", fontsize=8)
    axes[-1].set(xscale="log", xlim=(None, top * 8), xlabel="MB moved per call (model, log scale)")
    return fig


# --- chapter 07: the split pipeline ------------------------------------------------------------------------------


def bev_feature_maps(maps: dict[str, torch.Tensor], config: CameraConfig = R50, title: str = "") -> Figure:
    """Side by side, ``log(1 + ‖feature‖₂)`` of BEV feature maps ``[1, C, X', Y']`` (any resolution: the extent is
    metric), on one colour scale."""
    fig = Figure(figsize=(4.4 * len(maps), 4.6), layout="constrained")
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    norms = {name: m[0].float().norm(dim=0).log1p() for name, m in maps.items()}
    vmax = max(n.max().item() for n in norms.values())
    for ax, (name, norm) in zip(axes, norms.items(), strict=True):
        shown = bev_image(ax, norm, config, cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(f"{name} {list(maps[name].shape)}", fontsize=9)
    fig.colorbar(shown, ax=list(axes), shrink=0.8, label="log(1 + |feature|)")
    if title:
        fig.suptitle(title)
    return fig


def oracle_bev(lift: OracleLift, config: CameraConfig = R50) -> Figure:
    """The oracle lift: left, the mean lifted colour per BEV cell (each cell drawn 3 × 3 cells wide so the 0.3 m
    cells show); right, every cell that received box mass, coloured by box, with each box's footprint grown by the
    margin (dashed) and the share of its mass inside."""
    fig = Figure(figsize=(13, 6.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    bev = lift.bev[0]
    shown = torch.nn.functional.max_pool2d(bev[None, :4], 3, stride=1, padding=1)[0]
    colour = torch.where(shown[3] > 0, shown[:3] / shown[3].clamp_min(1), torch.full((), 0.15))
    bev_image(left, colour.permute(1, 2, 0).clamp(0, 1), config)
    left.set_title("lifted colour (mean per cell): what the cameras see, from above", fontsize=10)
    (x0, _, dx), (y0, _, dy) = config.xbound, config.ybound
    mass = bev[BOX_CHANNEL0 : BOX_CHANNEL0 + len(lift.boxes)]
    grown = lift.boxes.clone()
    grown[:, 3:5] += 2 * lift.margin
    for k, (corners, grown_corners) in enumerate(zip(box_corners(lift.boxes), box_corners(grown), strict=True)):
        rows, cols = mass[k].nonzero().unbind(1)
        right.scatter(x0 + dx * (rows + 0.5), y0 + dy * (cols + 0.5), s=4, color=f"C{k % 10}")
        left.fill(corners[:4, 0], corners[:4, 1], fill=False, ec="crimson", lw=0.8)
        right.fill(corners[:4, 0], corners[:4, 1], fill=False, ec=f"C{k % 10}", lw=0.8)
        right.fill(grown_corners[:4, 0], grown_corners[:4, 1], fill=False, ec="k", ls="--", lw=0.6)
        share = lift.share_inside[k].item()
        text = "unseen" if share != share else f"{100 * share:.0f}%"
        right.annotate(
            text,
            corners[:4, :2].mean(0).tolist(),
            fontsize=7,
            ha="center",
            va="bottom",
            xytext=(0, 8),
            textcoords="offset points",
        )
    bev_axes(right)
    right.set_title(f"cells that received box mass; dashed: footprint + {lift.margin:.2g} m", fontsize=10)
    reach = lift.boxes[:, :2].abs().max().item() + 6.0  # zoom to where the boxes are, within the grid
    (x0, x1, _), (y0, y1, _) = config.xbound, config.ybound
    for ax in (left, right):
        ax.set(xlim=(max(-reach, x0), min(reach, x1)), ylim=(max(-reach, y0), min(reach, y1)))
    return fig


# --- int8 (chapter 04) ------------------------------------------------------------------------------------------------


def plot_fake_quant(x: Tensor, amax: float, num_bits: int = 8) -> Figure:
    """A 2-D tensor ``[H, W]`` next to its int8 codes ``clamp(round(x / s), −2^(b−1), 2^(b−1) − 1)`` with
    ``s = amax / (2^(b−1) − 1)`` and the error ``x − s·code`` (in steps): what one Q/DQ pair does."""
    bound = 2 ** (num_bits - 1) - 1
    step = amax / bound
    codes = torch.clamp(torch.round(x / step), -bound - 1, bound)
    error = (x - codes * step) / step
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (
        (x, f"float x {list(x.shape)}", "RdBu_r", amax),
        (codes, f"int8 codes (scale s = amax/{bound} = {step:.4g})", "RdBu_r", bound + 1),
        (error, "error x − s·code, in steps (|·| ≤ 0.5 unless clipped)", "PuOr", 1.0),
    )
    for ax, (data, title, cmap, limit) in zip(axes, panels, strict=True):
        image = ax.imshow(data, cmap=cmap, vmin=-limit, vmax=limit)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"fake quant, {num_bits} bits, amax = {amax:.4g}")
    return fig


def _histogram(model: CameraBranch, name: str) -> tuple[Tensor, Tensor]:
    q = model.get_submodule(name)
    hist, edges = q._calibrator._calib_hist, q._calibrator._calib_bin_edges
    if hist is None:
        raise ValueError(f"{name} has no histogram: calibrate the model first")
    return torch.as_tensor(hist).float().cpu(), torch.as_tensor(edges).float().cpu()


def amax_choices(model: CameraBranch, name: str, percentile: float = 99.99) -> dict[str, float]:
    """The amax that ``max``, ``percentile`` and ``mse`` pick from the |x| histogram the activation quantizer
    ``name`` collected (``plot_amax_choices`` draws them): ``{"max": …, "percentile": …, "mse": …}``."""
    from .quant import mse_amax, percentile_amax

    hist, edges = _histogram(model, name)
    return {
        "max": float(edges[int(torch.nonzero(hist).max()) + 1]),
        "percentile": float(percentile_amax(hist, edges, percentile)),
        "mse": float(mse_amax(hist, edges)),
    }


def plot_amax_choices(model: CameraBranch, names: Sequence[str], percentile: float = 99.99) -> Figure:
    """For each named activation quantizer: the histogram of |x| its calibrator collected, and the amax that
    ``max``, ``percentile`` and ``mse`` pick from it (the one in use is the calibrated ``amax``)."""
    from .quant import quantizer_owner  # pytorch-quantization loads only for this figure

    fig = Figure(figsize=(6.5 * len(names), 3.8), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        q = model.get_submodule(name)
        hist, edges = _histogram(model, name)
        ax.stairs(hist.clamp(min=0.5), edges, fill=True, color="0.75")
        choices = amax_choices(model, name, percentile)
        labels = ("max", f"percentile {percentile}", "mse")
        for label, amax, color in zip(labels, choices.values(), ("tab:red", "tab:orange", "tab:blue"), strict=True):
            ax.axvline(amax, color=color, label=f"{label}: {amax:.3g}")
        title = f"{quantizer_owner(name)} (amax in use {q.amax.item():.3g})"
        ax.set(yscale="log", xlabel="|x|", ylabel="count", title=title)
        ax.legend(fontsize=8)
    return fig


def plot_block_sqnr(accuracy: Int8Accuracy) -> Figure:
    """SQNR (dB) after every Bottleneck for each comparison: how quantization noise, and the difference between
    two int8 implementations, build up through the backbone."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax = fig.subplots()
    for (label, values), style in zip(accuracy.block_sqnr.items(), ("-o", "--s", "-^"), strict=True):
        ax.plot(accuracy.blocks, values, style, label=label)
    ax.set(xlabel="backbone block output", ylabel="SQNR (dB)", title="where the difference builds up")
    ax.tick_params(axis="x", rotation=60)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_amax_agreement(comparisons: Mapping[str, tuple[Mapping[str, Tensor], Mapping[str, Tensor]]]) -> Figure:
    """Activation amax of pytorch-quantization (x) against another toolkit's (y), one marker per quantizer name
    present in both dicts, one series per ``{label: (pytorch-quantization amax, other amax)}``, log-log: on the
    diagonal they agree."""
    fig = Figure(figsize=(6.2, 5.4), layout="constrained")
    ax = fig.subplots()
    low, high = float("inf"), 0.0
    for (label, (reference, other)), marker in zip(comparisons.items(), "o^sxv", strict=False):
        names = [n for n in reference if n in other and "_weight_quantizer" not in n]
        x = [float(reference[n]) for n in names]
        y = [float(other[n]) for n in names]
        ax.scatter(x, y, marker=marker, s=28, alpha=0.7, label=f"{label} ({len(names)})")
        low, high = min(low, *x, *y), max(high, *x, *y)
    ax.plot([low, high], [low, high], color="0.5", lw=1, zorder=0)
    ax.set(xscale="log", yscale="log", xlabel="pytorch-quantization amax", ylabel="other toolkit's amax")
    ax.set_title("activation amax, same calibration scenes")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def plot_sensitivity(result: Sensitivity, chosen: Sequence[Unit], path: Sequence[float], target_db: float) -> Figure:
    """Left: the pooled-BEV SQNR gain (dB over all-int8) of each unit left in float on its own, ranked, the units
    of the float set ``chosen`` in colour. Right: the pooled-BEV SQNR as that set grows along the ranking
    (``path``), against ``target_db``."""
    ranking = result.ranking()
    gains = [result.sqnr[u.name]["bev"] - result.baseline["bev"] for u in ranking]
    picked = {u.name for u in chosen}
    fig = Figure(figsize=(13, 0.22 * len(ranking) + 1.5), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    colors = ["tab:blue" if u.name in picked else "0.7" for u in ranking]
    left.barh(range(len(ranking)), gains, color=colors)
    left.set_yticks(range(len(ranking)), [u.name for u in ranking], fontsize=8)
    left.invert_yaxis()
    left.axvline(0, color="0.3", lw=0.8)
    left.set(xlabel="pooled-BEV SQNR gain with only this unit in float (dB)", title="one unit in float at a time")
    steps = range(len(path) + 1)
    right.plot(steps, [result.baseline["bev"], *path], "-o", color="tab:blue")
    right.axhline(target_db, color="tab:red", ls="--", label=f"target {target_db:g} dB")
    right.set_xticks(steps, ["all int8", *(u.name.split(".", 1)[-1] for u in chosen)], rotation=45, ha="right")
    right.set(ylabel="pooled-BEV SQNR (dB)", title="the ranking's head left in float")
    right.grid(alpha=0.3)
    right.legend()
    fig.suptitle(f"where int8 hurts (cameras {list(result.cameras)} of the held-out scene)")
    return fig
