"""Figures for the chapters and the README: a flat module of functions that each return a matplotlib Figure.

Shapes go in titles, units on axes. Nothing here computes what a chapter teaches; it only draws what the package
computed. Figures are built with ``matplotlib.figure.Figure`` (not pyplot), so a notebook shows a returned figure
once and nothing accumulates in pyplot's registry. Chapters append their figure functions at the end.
"""

from __future__ import annotations

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .data import denormalize_image
from .scene import load_rig

# nuScenes' usual picture: front cameras on top, back cameras below, each row left to right as seen from the car
MOSAIC_LAYOUT = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))


def _mosaic_axes(title: str, width: float = 15.0) -> tuple[Figure, dict[str, Axes]]:
    """A 2×3 grid of image axes keyed by camera name, in ``MOSAIC_LAYOUT``."""
    iH, iW = load_rig().image_size
    fig = Figure(figsize=(width, 2 * width / 3 * iH / iW + 0.9), layout="constrained")
    axes = fig.subplots(2, 3)
    fig.suptitle(title)
    named = {}
    for row, names in zip(axes, MOSAIC_LAYOUT, strict=True):
        for ax, name in zip(row, names, strict=True):
            ax.set_axis_off()
            named[name] = ax
    return fig, named


def camera_mosaic(sample: dict, title: str | None = None) -> Figure:
    """The six network-input images ``img [1, N, 3, iH, iW]`` (de-normalised) in the nuScenes layout."""
    img = sample["img"][0].detach().float().cpu()
    fig, axes = _mosaic_axes(title or f"img {list(sample['img'].shape)}: the six cameras after resize 0.48 + crop")
    for n, name in enumerate(load_rig().camera_names):
        axes[name].imshow(denormalize_image(img[n]).permute(1, 2, 0).numpy(), interpolation="nearest")
        axes[name].set_title(f"{n}: {name} [3, {img.shape[2]}, {img.shape[3]}]", fontsize=9)
    return fig


def depth_overlay(sample: dict, depth: torch.Tensor, max_depth: float = 60.0) -> Figure:
    """Lidar depth ``depth [1, N, 1, iH, iW]`` (m, 0 = no point) as coloured dots over each camera image."""
    img = sample["img"][0].detach().float().cpu()
    d = depth[0, :, 0].detach().float().cpu()
    fig, axes = _mosaic_axes(f"depth {list(depth.shape)}: lidar points projected into each camera")
    mappable = None
    for n, name in enumerate(load_rig().camera_names):
        ax = axes[name]
        ax.imshow(denormalize_image(img[n]).permute(1, 2, 0).numpy() * 0.6, interpolation="nearest")
        rows, cols = torch.nonzero(d[n] > 0, as_tuple=True)
        mappable = ax.scatter(cols, rows, c=d[n, rows, cols], s=0.6, cmap="turbo", vmin=0.0, vmax=max_depth)
        ax.set_title(f"{n}: {name}, {rows.numel()} pixels with depth", fontsize=9)
    fig.colorbar(mappable, ax=list(axes.values()), shrink=0.8, label="depth along the optical axis (m)")
    return fig
