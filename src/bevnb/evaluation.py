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

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import CLASS_NAMES, R50, CameraConfig
from .data import make_sample
from .detection import ClassMetrics, DetectionMetrics, evaluate
from .model import Detector, build_detector
from .paths import TRAINED_WEIGHTS, TRAINING_EVALUATION, TRAINING_LOG
from .pipeline import SplitDetector
from .rig import Rig, as_rig
from .tables import Table

DEPTH_REGIONS = ("lidar in patch", "no lidar in patch")
TRAIN_COMMAND = "python training/train.py"
EVALUATE_COMMAND = "python training/evaluate.py"


def trained_detector(config: CameraConfig = R50, path: str | Path = TRAINED_WEIGHTS) -> Detector:
    """``build_detector`` of the shipped weights (``paths.TRAINED_WEIGHTS``) for ``config``; a missing file is one
    ``FileNotFoundError`` line saying how to make it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no trained weights here; train them with `{TRAIN_COMMAND}`")
    return build_detector(path, config=config)


def recorded_evaluation(part: str = "all", path: str | Path = TRAINING_EVALUATION) -> DetectorEvaluation:
    """What ``training/evaluate.py`` measured for the shipped weights (``evaluation.json``): ``"all"`` its held-out
    scenes, ``"subset"`` the first few alone (those chapter 09 evaluates live)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no recorded evaluation here; score the weights with `{EVALUATE_COMMAND}`")
    return DetectorEvaluation.from_json(json.loads(path.read_text())[part])


def read_training_log(path: str | Path = TRAINING_LOG) -> dict[str, np.ndarray]:
    """The trainer's ``log.jsonl`` (one JSON object per step: ``step``, ``lr``, ``seconds`` and the losses) as one
    array ``[steps]`` per key; a missing or empty file is one ``FileNotFoundError`` line."""
    path = Path(path)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not rows:
        raise FileNotFoundError(f"{path}: no training log here; `{TRAIN_COMMAND}` writes it")
    return {key: np.array([row.get(key, np.nan) for row in rows], dtype=float) for key in rows[-1]}


def depth_bins(depth: Tensor, config: CameraConfig = R50) -> Tensor:
    """Metric depth ``[...]`` → its ``dbound`` bin ``[...]`` int64 (``floor((d − lo) / step)``), −1 where the depth
    is not finite, not positive, or outside the bins."""
    lo, _, step = config.dbound
    bins = ((depth - lo) / step).floor()
    valid = torch.isfinite(depth) & (depth > 0) & (bins >= 0) & (bins < config.depth_bins)
    return torch.where(valid, bins, torch.full_like(bins, -1)).long()


def nearest_lidar_depth(depth_map: Tensor, config: CameraConfig = R50) -> Tensor:
    """The lidar depth map ``[N, 1, iH, iW]`` (m, 0 = no point) → ``[N, fH, fW]``: the nearest depth in each feature
    pixel's patch (8×8 for a stride-8 feature map), inf where no point falls (the lidar supervision of training)."""
    patch = config.image_size[0] // config.feature_size[0]
    far = torch.where(depth_map > 0, depth_map, torch.full_like(depth_map, math.inf))
    return -F.max_pool2d(-far, patch)[:, 0]


def depth_truth(depth_map: Tensor, camera_depth: Tensor, config: CameraConfig = R50) -> tuple[Tensor, Tensor]:
    """The true depth of each feature pixel, from the lidar depth map ``[N, 1, iH, iW]`` (m, 0 = no point) and the
    renderer's ``camera_depth [N, iH, iW]`` (m) → ``(depth [N, fH, fW] (m), has_lidar [N, fH, fW] bool)``: the
    nearest lidar depth in the pixel's patch where one falls, else ``camera_depth`` at the patch centre."""
    patch = config.image_size[0] // config.feature_size[0]
    nearest = nearest_lidar_depth(depth_map, config)
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

    def to_json(self) -> dict:
        """As plain JSON (what ``training/evaluate.py`` records): seeds, mAP, per class AP by threshold and the TP
        errors, box counts, depth hits and pixels per region."""
        classes = {
            name: {"ap": {str(th): ap for th, ap in m.ap.items()}, "ate": m.ate, "ase": m.ase, "aoe": m.aoe}
            for name, m in self.metrics.classes.items()
        }
        depth = {
            region: {"hits": self.depth.hits[region], "pixels": self.depth.pixels[region]} for region in DEPTH_REGIONS
        }
        return {
            "seeds": self.seeds,
            "mAP": self.mean_ap,
            "classes": classes,
            "ground_truth_boxes": self.ground_truth,
            "predicted_boxes": self.predicted,
            "depth_within_one_bin": depth,
        }

    @classmethod
    def from_json(cls, record: dict) -> DetectorEvaluation:
        """The inverse of ``to_json``."""
        metrics = DetectionMetrics(
            {
                name: ClassMetrics({float(th): ap for th, ap in m["ap"].items()}, m["ate"], m["ase"], m["aoe"])
                for name, m in record["classes"].items()
            }
        )
        regions = record["depth_within_one_bin"]
        depth = DepthAccuracy(
            {r: regions[r]["hits"] for r in DEPTH_REGIONS}, {r: regions[r]["pixels"] for r in DEPTH_REGIONS}
        )
        return cls(metrics, depth, record["ground_truth_boxes"], record["predicted_boxes"], record["seeds"])

    def table(self) -> Table:
        """The nuScenes table (``DetectionMetrics.table``) with the boxes counted per class."""
        title = f"nuScenes detection metrics on {len(self.seeds)} held-out scenes"
        base = self.metrics.table(title)
        counts = [(self.ground_truth[name], self.predicted[name]) for name in self.metrics.classes]
        counts.append((sum(self.ground_truth.values()), sum(self.predicted.values())))
        rows = [[*row, *count] for row, count in zip(base.rows, counts, strict=True)]
        return Table(rows, [*base.columns, "GT boxes", "predicted"], title)


class SceneScores:
    """The running score of a detector over scenes: ``add(sample, seed)`` detects on one synthetic sample, records
    its boxes, ground truth and depth hits, and returns what it computed, so a caller that also draws the scene runs
    the model once; ``result()`` scores everything added so far. The detector is the PyTorch one (``Detector``) or
    the deployed split (``pipeline.SplitDetector``: its graphs in ONNX Runtime)."""

    def __init__(self, detector: Detector | SplitDetector) -> None:
        self.detector = detector
        self.predictions: list[dict[str, Tensor]] = []
        self.truth: list[dict[str, Tensor]] = []
        self.depth = DepthAccuracy()
        self.seeds: list[int] = []

    @torch.no_grad()
    def add(self, sample: dict, seed: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Detect on ``sample`` (a synthetic sample of the detector's rig) and record it → ``(stages, detections)``:
        the stage outputs (``CameraBranch.forward_stages``'s, or ``SplitResult.outputs``) and ``boxes [K, 9]``,
        ``scores [K]``, ``labels [K]``."""
        if isinstance(self.detector, SplitDetector):
            result = self.detector(sample)
            stages, found = result.outputs, result.detections
        else:
            stages = self.detector.camera.forward_stages(sample)
            found = self.detector.decode(self.detector.head(stages["bev_downsampled"]))
        self.predictions.append(found)
        self.truth.append({"boxes": sample["gt_boxes"][0], "labels": sample["gt_labels"][0]})
        camera_depth = sample["camera_depth"][0]
        self.depth += depth_accuracy(
            stages["depth_weights"], stages["depth_map"][0], camera_depth, self.detector.config
        )
        self.seeds.append(seed)
        return stages, found

    def result(self) -> DetectorEvaluation:
        """The nuScenes metrics over all scenes added, the depth accuracy and the boxes counted per class."""
        names = self.detector.class_names

        def count(boxes: list[dict[str, Tensor]]) -> dict[str, int]:
            return {name: sum(int((b["labels"] == CLASS_NAMES.index(name)).sum()) for b in boxes) for name in names}

        metrics = evaluate(self.predictions, self.truth, names)
        return DetectorEvaluation(metrics, self.depth, count(self.truth), count(self.predictions), list(self.seeds))


def evaluate_detector(
    detector: Detector,
    seeds: Iterable[int],
    rig: Rig | str | Path | None = None,
    progress: bool = True,
    scores: SceneScores | None = None,
) -> DetectorEvaluation:
    """Render the synthetic scene of each seed for ``rig`` (default: the nuScenes-like rig; its configuration must be
    the detector's), detect, and score boxes and depth over all scenes (see the module docstring). ``scores``: scenes
    already scored (``SceneScores.add``) to count in as well."""
    from tqdm import tqdm

    rig = as_rig(rig)
    if rig.config != detector.config:
        raise ValueError(f"the detector was built for another configuration than the rig {rig.name!r}: pass its rig")
    scores = scores or SceneScores(detector)
    for seed in tqdm(list(seeds), desc="held-out scenes", disable=not progress):
        scores.add(make_sample("synthetic", seed=seed, rig=rig), seed)
    return scores.result()
