"""A detector judged on held-out synthetic scenes: the nuScenes detection table and the depth it predicts.

``evaluate_detector(detector, seeds)`` renders each scene (``make_sample("synthetic", seed)``), runs the camera
branch once (``forward_stages``: its depth weights and its BEV), the head and the decoding, and scores

* the boxes with ``detection.evaluate`` (AP at 0.5, 1, 2, 4 m, ATE, ASE, AOE per class, over all scenes at once);
* the depth weights ``[N, D, fH, fW]`` per feature pixel: is the most likely bin within one bin of the truth?
  Separately where a lidar point falls in the pixel's patch of the input (8×8 for R50), the truth being the nearest
  lidar depth in that patch (what the training supervises), and where none does, the truth being the renderer's
  depth ``camera_depth`` at the patch centre (row ``8i + 4``, column ``8j + 4``): depth the network has to infer
  from the image alone. Pixels whose truth is not finite, 0, or outside ``dbound`` are not counted. With 118 bins,
  guessing is right within one bin about 1 time in 40.

Held-out scenes are those of seeds from ``quant.HELD_OUT_SEED`` (1000) on, below ``training/train.py``'s
``TRAIN_SEED``: seeds that neither training nor int8 calibration ever renders.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .config import CLASS_NAMES, R50, CameraConfig
from .data import make_sample
from .detection import DetectionMetrics, evaluate
from .model import Detector
from .rig import Rig, as_rig
from .tables import Table

DEPTH_REGIONS = ("lidar in patch", "no lidar in patch")


def depth_bins(depth: Tensor, config: CameraConfig = R50) -> Tensor:
    """Metric depth ``[...]`` → its ``dbound`` bin ``[...]`` int64 (``floor((d − lo) / step)``), −1 where the depth
    is not finite, not positive, or outside the bins."""
    lo, _, step = config.dbound
    bins = ((depth - lo) / step).floor()
    valid = torch.isfinite(depth) & (depth > 0) & (bins >= 0) & (bins < config.depth_bins)
    return torch.where(valid, bins, torch.full_like(bins, -1)).long()


def depth_truth(depth_map: Tensor, camera_depth: Tensor, config: CameraConfig = R50) -> tuple[Tensor, Tensor]:
    """The true depth of each feature pixel, from the lidar depth map ``[N, 1, iH, iW]`` (m, 0 = no point) and the
    renderer's ``camera_depth [N, iH, iW]`` (m) → ``(depth [N, fH, fW] (m), has_lidar [N, fH, fW] bool)``: the
    nearest lidar depth in the pixel's patch where one falls, else ``camera_depth`` at the patch centre."""
    patch = config.image_size[0] // config.feature_size[0]
    far = torch.where(depth_map > 0, depth_map, torch.full_like(depth_map, math.inf))
    nearest = -F.max_pool2d(-far, patch)[:, 0]
    centre = camera_depth[:, patch // 2 :: patch, patch // 2 :: patch][:, : nearest.shape[1], : nearest.shape[2]]
    has_lidar = torch.isfinite(nearest)
    return torch.where(has_lidar, nearest, centre.to(nearest)), has_lidar


@dataclass
class DepthAccuracy:
    """Feature pixels counted per region (``DEPTH_REGIONS``): ``hits`` within one bin of the truth, of ``pixels``."""

    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DEPTH_REGIONS, 0))
    pixels: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DEPTH_REGIONS, 0))

    def __iadd__(self, other: DepthAccuracy) -> DepthAccuracy:
        for region in DEPTH_REGIONS:
            self.hits[region] += other.hits[region]
            self.pixels[region] += other.pixels[region]
        return self

    def share(self, region: str) -> float:
        """Hits over pixels of ``region`` (nan when it has none)."""
        return self.hits[region] / self.pixels[region] if self.pixels[region] else math.nan

    def table(self, title: str = "depth: most likely bin within one bin of the truth") -> Table:
        """One row per region: feature pixels counted, within one bin, share (%)."""
        rows = [(r, self.pixels[r], self.hits[r], 100 * self.share(r)) for r in DEPTH_REGIONS]
        return Table(rows, ("feature pixels", "counted", "within one bin", "share (%)"), title)


def depth_accuracy(
    depth_weights: Tensor, depth_map: Tensor, camera_depth: Tensor, config: CameraConfig = R50
) -> DepthAccuracy:
    """Score one sample's depth distributions ``depth_weights [N, D, fH, fW]`` against ``depth_truth(depth_map
    [N, 1, iH, iW], camera_depth [N, iH, iW])``: a pixel is a hit when ``|argmax_D − truth bin| ≤ 1``."""
    truth, has_lidar = depth_truth(depth_map, camera_depth, config)
    bins = depth_bins(truth, config)
    hit = (depth_weights.argmax(1) - bins).abs() <= 1
    result = DepthAccuracy()
    for region, mask in zip(DEPTH_REGIONS, (has_lidar, ~has_lidar), strict=True):
        counted = mask & (bins >= 0)
        result.hits[region], result.pixels[region] = int((hit & counted).sum()), int(counted.sum())
    return result


@dataclass
class DetectorEvaluation:
    """What ``evaluate_detector`` measured: the detection ``metrics``, the ``depth`` accuracy, the boxes per class
    (``ground_truth`` and ``predicted`` counts, all scenes) and the ``seeds`` of the scenes."""

    metrics: DetectionMetrics
    depth: DepthAccuracy
    ground_truth: dict[str, int]
    predicted: dict[str, int]
    seeds: list[int]

    @property
    def mean_ap(self) -> float:
        """mAP over the classes."""
        return self.metrics.mean_ap

    def table(self) -> Table:
        """The nuScenes table (``DetectionMetrics.table``) with the boxes counted per class."""
        title = f"nuScenes detection metrics on {len(self.seeds)} held-out scenes"
        base = self.metrics.table(title)
        counts = [(self.ground_truth[name], self.predicted[name]) for name in self.metrics.classes]
        counts.append((sum(self.ground_truth.values()), sum(self.predicted.values())))
        rows = [[*row, *count] for row, count in zip(base.rows, counts, strict=True)]
        return Table(rows, [*base.columns, "GT boxes", "predicted"], title)


def evaluate_detector(
    detector: Detector, seeds: Iterable[int], rig: Rig | str | Path | None = None, progress: bool = True
) -> DetectorEvaluation:
    """Render the synthetic scene of each seed for ``rig`` (default: the nuScenes-like rig; its configuration must be
    the detector's), detect, and score boxes and depth over all scenes (see the module docstring)."""
    rig, seeds = as_rig(rig), list(seeds)
    if rig.config != detector.config:
        raise ValueError(f"the detector was built for another configuration than the rig {rig.name!r}: pass its rig")
    names = detector.head.config.class_names
    predictions, truth, depth = [], [], DepthAccuracy()
    for seed in tqdm(seeds, desc="held-out scenes", disable=not progress):
        sample = make_sample("synthetic", seed=seed, rig=rig)
        with torch.no_grad():
            stages = detector.camera.forward_stages(sample)
            predictions.append(detector.decode(detector.head(stages["bev_downsampled"])))
        truth.append({"boxes": sample["gt_boxes"][0], "labels": sample["gt_labels"][0]})
        depth += depth_accuracy(stages["depth_weights"], stages["depth_map"][0], sample["camera_depth"][0], rig.config)

    def count(boxes: list[dict[str, Tensor]]) -> dict[str, int]:
        return {name: sum(int((b["labels"] == CLASS_NAMES.index(name)).sum()) for b in boxes) for name in names}

    return DetectorEvaluation(evaluate(predictions, truth, names), depth, count(truth), count(predictions), seeds)
