"""Figures of the detector (chapters 09 and 13): training curves, boxes on the camera images and from above, a
diagnosis stage by stage, and two sensitivity runs judged by detection side by side.

Drawn with ``viz``'s helpers (the mosaic of cameras, the one BEV view with forward up, ``viz.bev_boxes``), ground
truth in ``viz.GT_COLORS`` and predictions in ``viz.PREDICTED_COLORS``. Like ``viz``, it only draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from torch import Tensor

from .data import denormalize_image
from .diagnosis import Diagnosis
from .evaluation import DetectorEvaluation
from .rig import Rig
from .scene import _BOX_EDGES, CLASS_NAMES, box_corners
from .sensitivity import DetectionSensitivity, spread
from .viz import GT_COLORS, PREDICTED_COLORS, _mosaic_axes, _rig_of, bev_boxes, bev_image

LOSSES = ("heatmap", "box", "depth")  # training/train.py's loss columns


def training_curves(log: Mapping[str, np.ndarray], window: int = 25) -> Figure:
    """The training log's losses (``log[name] [steps]``, ``LOSSES``) against ``log["step"]``, each step faint and the
    mean over ``window`` steps centred on each step drawn over it (log scale), and the learning rate ``log["lr"]``."""
    names = [name for name in LOSSES if name in log]
    fig = Figure(figsize=(4.2 * (len(names) + 1), 3.6), layout="constrained")
    axes = fig.subplots(1, len(names) + 1)
    step = np.asarray(log["step"])
    for ax, name in zip(axes, names, strict=False):
        values = np.asarray(log[name], dtype=float)
        k = max(1, min(window, len(values)))
        mean = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(step, values, color="C0", alpha=0.25, lw=0.6, label="per step")
        centre = (k - 1) // 2
        ax.plot(step[centre : centre + len(mean)], mean, color="C0", lw=1.6, label=f"mean of {k} steps (centred)")
        ax.set(yscale="log", xlabel="step", title=f"{name} loss", ylabel="loss")
        ax.legend(fontsize=7)
    axes[-1].plot(step, log["lr"], color="C1")
    axes[-1].set(xlabel="step", title="learning rate", ylabel="lr")
    fig.suptitle(f"training/train.py: {len(step)} steps, one scene each")
    return fig


def _project(points: Tensor, sample: dict, n: int) -> tuple[Tensor, Tensor]:
    """Lidar-frame ``points [P, 3]`` → network-input pixels ``[P, 2]`` (col, row) of camera ``n`` (``lidar2image``,
    then ``img_aug_matrix``, as ``geometry.depth_map``) and ``[P]`` bool: in front of the camera."""
    lidar2image, img_aug = sample["lidar2image"][0, n].float(), sample["img_aug_matrix"][0, n].float()
    cam = points @ lidar2image[:3, :3].T + lidar2image[:3, 3]
    depth = cam[:, 2:3].clamp_min(1e-5)
    pixels = torch.cat((cam[:, :2] / depth, depth), 1) @ img_aug[:3, :3].T + img_aug[:3, 3]
    return pixels[:, :2], cam[:, 2] > 0.5


def detections_mosaic(
    sample: dict, detections: Mapping[str, Tensor], min_score: float = 0.3, rig: Rig | str | Path | None = None
) -> Figure:
    """The camera images with each box's 12 edges drawn: ground truth (``gt_boxes``) and the predicted ``boxes
    [K, ≥7]`` whose ``scores`` are at least ``min_score`` (edges with a corner behind the camera are left out)."""
    rig = _rig_of(sample, rig)
    iH, iW = rig.image_size
    keep = detections["scores"] >= min_score
    sets = (
        (sample["gt_boxes"][0], sample["gt_labels"][0], GT_COLORS, "-"),
        (detections["boxes"][keep], detections["labels"][keep], PREDICTED_COLORS, "--"),
    )
    gt, predicted = (", ".join(f"{k} {v}" for k, v in c.items()) for c in (GT_COLORS, PREDICTED_COLORS))
    title = (
        f"ground truth (solid: {gt}) and {int(keep.sum())} predicted boxes, score ≥ {min_score:g} (dashed: {predicted})"
    )
    fig, axes = _mosaic_axes(title, rig)
    for n, name in enumerate(rig.camera_names):
        ax = axes[name]
        ax.imshow(denormalize_image(sample["img"][0, n].float()).permute(1, 2, 0).numpy(), interpolation="nearest")
        for boxes, labels, colors, style in sets:
            if not len(boxes):
                continue
            pixels, front = _project(box_corners(boxes[:, :7].float()).reshape(-1, 3), sample, n)
            pixels, front = pixels.view(-1, 8, 2), front.view(-1, 8)
            segments = torch.stack((pixels[:, _BOX_EDGES[:, 0]], pixels[:, _BOX_EDGES[:, 1]]), 2)  # [K, 12, 2, 2]
            shown = front[:, _BOX_EDGES[:, 0]] & front[:, _BOX_EDGES[:, 1]]  # [K, 12]
            edge_colors = [colors.get(CLASS_NAMES[label], "gray") for label in labels.tolist() for _ in range(12)]
            edge_colors = [c for c, keep in zip(edge_colors, shown.flatten().tolist(), strict=True) if keep]
            ax.add_collection(
                LineCollection(segments[shown].numpy(), colors=edge_colors, linewidths=0.9, linestyles=style)
            )
        ax.set(xlim=(0, iW), ylim=(iH, 0))
        ax.set_title(f"{n}: {name}", fontsize=9)
    return fig


def detections_bev(
    sample: dict,
    detections: Mapping[str, Tensor],
    bev: Tensor | None = None,
    min_score: float = 0.3,
    rig: Rig | str | Path | None = None,
) -> Figure:
    """From above (forward up): the camera BEV ``bev [1, C, X', Y']`` as ``log(1 + ‖feature‖)`` (grey, when given),
    the ground-truth boxes filled and the predicted ones with ``scores`` ≥ ``min_score`` outlined, with their
    score; zoomed to the boxes, within the grid."""
    rig = _rig_of(sample, rig)
    config = rig.config
    fig = Figure(figsize=(8.0, 8.0), layout="constrained")
    ax = fig.subplots()
    if bev is not None:
        shown = bev_image(ax, bev[0].float().norm(dim=0).log1p(), config, cmap="Greys")
        fig.colorbar(shown, ax=ax, shrink=0.7, label=f"camera BEV {list(bev.shape)}: log(1 + |feature|)")
    keep = detections["scores"] >= min_score
    bev_boxes(ax, sample["gt_boxes"][0], sample["gt_labels"][0])
    bev_boxes(ax, detections["boxes"][keep], detections["labels"][keep], PREDICTED_COLORS, fill=False)
    for box, score in zip(detections["boxes"][keep], detections["scores"][keep], strict=True):
        ax.annotate(f"{score:.2f}", box[:2].tolist(), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.plot(0, 0, "k^", ms=6)
    reach = sample["gt_boxes"][0][:, :2].abs().max().item() + 6.0 if len(sample["gt_boxes"][0]) else 30.0
    (x0, x1, _), (y0, y1, _) = config.xbound, config.ybound
    ax.set(xlim=(max(-reach, x0), min(reach, x1)), ylim=(max(-reach, y0), min(reach, y1)))
    ax.set_title(
        f"ground truth (filled) and {int(keep.sum())} predicted boxes with score ≥ {min_score:g} (outlined); ▲ lidar",
        fontsize=9,
    )
    return fig


def stage_agreement(diagnoses: Sequence[Diagnosis]) -> Figure:
    """Each diagnosis (``diagnosis.diagnose``, one reference) as one line: the worst SQNR (dB, against the reference)
    at every stage in pipeline order, the threshold dashed, the first stage that does not agree marked; the legend
    counts each side's boxes. Non-finite stages sit at the bottom edge."""
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax = fig.subplots()
    stages = [s.stage for s in diagnoses[0].stages]
    finite = [s.sqnr_db for d in diagnoses for s in d.stages if np.isfinite(s.sqnr_db)]
    floor = min([*finite, diagnoses[0].min_sqnr_db]) - 5
    for k, d in enumerate(diagnoses):
        values = [s.sqnr_db if np.isfinite(s.sqnr_db) else floor for s in d.stages]
        boxes = sum(d.scores[d.labels[1]].predicted.values())
        ax.plot(values, marker="o", ms=3, color=f"C{k}", label=f"{d.labels[1]} ({boxes} boxes)")
        if d.broken is not None:
            i = d.stages.index(d.broken)
            ax.plot(i, values[i], marker="x", ms=12, mew=2.5, color=f"C{k}")
    reference = diagnoses[0].scores[diagnoses[0].labels[0]]
    ax.axhline(diagnoses[0].min_sqnr_db, color="0.3", ls="--", lw=1, label="agrees above")
    ax.set_xticks(range(len(stages)), stages, rotation=90, fontsize=7)
    ax.set(ylabel="worst SQNR against the reference (dB)", ylim=(floor, None))
    ax.set_title(
        f"against {diagnoses[0].labels[0]} ({sum(reference.predicted.values())} boxes), "
        f"{len(diagnoses[0].seeds)} held-out scene(s); × the first stage that does not agree"
    )
    fig.legend(fontsize=8, loc="outside lower center", ncols=len(diagnoses) + 1)
    ax.grid(alpha=0.3)
    return fig


def map_against_calibration(fp32: DetectorEvaluation, sides: Mapping[str, dict], sweep: Mapping[str, str]) -> Figure:
    """mAP and AP per class of the int8 graphs calibrated on ``sweep``'s scene counts (``{count: side label}``,
    ``sides`` as ``diagnosis.side_summary`` records them) against that count (log scale), fp32's dashed."""
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    counts = sorted(sweep, key=int)
    evaluations = [DetectorEvaluation.from_json(sides[sweep[c]]["evaluation"]) for c in counts]
    x = [int(c) for c in counts]
    curves = {"mAP": ([e.mean_ap for e in evaluations], fp32.mean_ap)}
    for name in fp32.metrics.classes:
        curves[f"AP {name}"] = (
            [e.metrics.classes[name].mean_ap for e in evaluations],
            fp32.metrics.classes[name].mean_ap,
        )
    for k, (label, (values, reference)) in enumerate(curves.items()):
        ax.plot(x, values, marker="o", color=f"C{k}", label=f"{label}, int8")
        ax.axhline(reference, color=f"C{k}", ls="--", lw=1, label=f"{label}, fp32")
    ax.set(xscale="log", xlabel="calibration scenes (synthetic, seeds 0 …)", ylabel="nuScenes AP", xticks=x)
    ax.set_xticklabels([str(v) for v in x])
    ax.set_title(f"int8 (pytorch-quantization, MSE) by calibration size, {len(evaluations[0].seeds)} held-out scenes")
    ax.legend(fontsize=7, ncols=2)
    ax.grid(alpha=0.3)
    return fig


def sensitivity_runs(first: DetectionSensitivity, second: DetectionSensitivity, top: int = 5) -> Figure:
    """Two ``sensitivity.analyse_by_detection`` runs on disjoint scenes, one point per unit: left, the mAP gained with
    that unit alone in float, first run against second, bars the standard deviation of the per-scene gains (the
    spread); right, the mean pooled-BEV SQNR, bars its per-scene standard deviation. Each run's first ``top`` units
    by that measure are ringed (first run) or crossed (second). A ranking that holds still puts the same units top
    right in both runs."""
    fig = Figure(figsize=(12, 5), layout="constrained")
    runs = (first, second)
    measures = (
        (
            "mAP gain with the unit in float",
            DetectionSensitivity.map_gain,
            lambda r, u: spread(r.scene_gains(u)),
            DetectionSensitivity.ranking,
        ),
        (
            "pooled-BEV SQNR with the unit in float (dB)",
            DetectionSensitivity.mean_sqnr,
            lambda r, u: spread(r.bev_sqnr[u]),
            DetectionSensitivity.sqnr_ranking,
        ),
    )
    for ax, (label, value, error, ranking) in zip(fig.subplots(1, 2), measures, strict=True):
        units = first.units
        x = np.array([value(first, u) for u in units])
        y = np.array([value(second, u) for u in units])
        ax.errorbar(
            x,
            y,
            xerr=[error(first, u) for u in units],
            yerr=[error(second, u) for u in units],
            fmt="o",
            ms=3,
            color="0.45",
            ecolor="0.8",
            lw=0.8,
        )
        for k, (run, marker) in enumerate(zip(runs, ("o", "x"), strict=True)):
            head = [units.index(u) for u in ranking(run)[:top]]
            face = {"facecolors": "none"} if marker == "o" else {}
            ax.scatter(
                x[head],
                y[head],
                s=110,
                marker=marker,
                edgecolors=f"C{k}" if marker == "o" else None,
                color=f"C{k}",
                label=f"top {top}, {_seeds(run)}",
                **face,
            )
        agree = len(set(ranking(first)[:top]) & set(ranking(second)[:top]))
        ax.set(xlabel=f"{label}, {_seeds(first)}", ylabel=_seeds(second))
        ax.set_title(f"{label}: the two top {top} share {agree}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def _seeds(run: DetectionSensitivity) -> str:
    return f"scenes {run.seeds[0]}–{run.seeds[-1]}"
