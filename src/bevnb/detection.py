"""The nuScenes detection metric: AP by centre distance and the true-positive errors, on bevnb's boxes.

This is ``nuscenes-devkit``'s ``nuscenes.eval.detection.algo`` (``accumulate``, ``calc_ap``, ``calc_tp``), step for
step, on boxes in mmdet3d's layout (``[x, y, z, dx, dy, dz, yaw, …]``, lidar frame; the synthetic scene's
``gt_boxes`` and ``model.box_coder.decode``'s output) with labels indexing ``config.CLASS_NAMES``:

* per class and distance threshold (0.5, 1, 2, 4 m): predictions of all samples sorted by score (ties: the later
  one first, as the devkit's ``sorted(...)[::-1]``), each matched greedily to the nearest not yet matched ground-truth
  box of its sample by centre distance on the ground plane, a match when that distance is ``< threshold``;
* precision against recall, interpolated at 101 recall points (``np.interp``, precision 0 beyond the highest recall);
  AP = the mean of ``max(precision - 0.1, 0) / 0.9`` over the recall points above 0.1 (``min_recall`` and
  ``min_precision`` 0.1);
* ATE (centre distance, m), ASE (1 − IoU of the two boxes moved to the same centre and yaw) and AOE (yaw difference,
  rad; period π for barriers) at the 2 m threshold: each the running mean over the matches, interpolated onto the
  recall points by confidence, then averaged from recall 0.1 up to the highest recall reached (1 when none is);
* mAP: the mean over the evaluated classes of each class's mean AP over the four thresholds.

What ``DetectionEval`` adds around ``algo`` is left out: the class ranges and the filter on boxes without lidar
points (``filter_eval_boxes``), velocity and attribute errors (AVE, AAE: the synthetic scene has neither), and NDS.

``benchmarks/check_metric_against_devkit.py`` scores the same random boxes (several samples, both classes, score
ties, classes without predictions, unmatched predictions) with this module and with ``nuscenes-devkit`` 1.2.0's
``accumulate``, ``calc_ap`` and ``calc_tp`` (in a separate virtual environment, since the devkit pins numpy < 2) and
compares every AP, ATE, ASE and AOE; the test marked ``slow`` in ``tests/test_detection.py`` runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from .config import CLASS_NAMES
from .tables import Table

DIST_THRESHOLDS = (0.5, 1.0, 2.0, 4.0)  # m, nuScenes' detection_cvpr_2019 ``dist_ths``
TP_THRESHOLD = 2.0  # m, ``dist_th_tp``: where ATE, ASE and AOE are measured
MIN_RECALL = 0.1
MIN_PRECISION = 0.1
RECALL_POINTS = 101  # DetectionMetricData.nelem: recall 0, 0.01, …, 1
TP_ERRORS = ("trans_err", "scale_err", "orient_err")  # ATE, ASE, AOE


@dataclass(frozen=True)
class MetricData:
    """The devkit's ``DetectionMetricData`` for one class and threshold, each ``[101]`` over the recall points:
    ``recall``, ``precision``, ``confidence`` and the true-positive errors ``trans_err``, ``scale_err``,
    ``orient_err``."""

    recall: np.ndarray
    precision: np.ndarray
    confidence: np.ndarray
    trans_err: np.ndarray
    scale_err: np.ndarray
    orient_err: np.ndarray

    @classmethod
    def no_predictions(cls) -> MetricData:
        """Precision and confidence 0, errors 1: what a class without ground truth or without a match gets."""
        zeros, ones = np.zeros(RECALL_POINTS), np.ones(RECALL_POINTS)
        return cls(np.linspace(0, 1, RECALL_POINTS), zeros, zeros, ones, ones, ones)

    @property
    def max_recall_ind(self) -> int:
        """The last recall point with a non-zero confidence: the highest recall reached (0 if none)."""
        non_zero = np.nonzero(self.confidence)[0]
        return int(non_zero[-1]) if len(non_zero) else 0


@dataclass(frozen=True)
class ClassMetrics:
    """One class: ``ap`` by distance threshold (m), and ATE (m), ASE, AOE (rad) at ``TP_THRESHOLD``."""

    ap: dict[float, float]
    ate: float
    ase: float
    aoe: float

    @property
    def mean_ap(self) -> float:
        """The mean of ``ap`` over the thresholds."""
        return float(np.mean(list(self.ap.values())))


@dataclass(frozen=True)
class DetectionMetrics:
    """Per-class metrics (by class name) and their mAP."""

    classes: dict[str, ClassMetrics]

    @property
    def mean_ap(self) -> float:
        """mAP: the mean over classes of each class's mean AP."""
        return float(np.mean([c.mean_ap for c in self.classes.values()]))

    def table(self, title: str = "nuScenes detection metrics") -> Table:
        """One row per class and one for the mean: AP at each threshold, mean AP, ATE (m), ASE, AOE (rad)."""
        rows = [
            (name, *(c.ap[t] for t in DIST_THRESHOLDS), c.mean_ap, c.ate, c.ase, c.aoe)
            for name, c in self.classes.items()
        ]
        means = [float(np.mean([row[i] for row in rows])) for i in range(1, len(DIST_THRESHOLDS) + 5)]
        rows.append(("mean", *means))
        columns = ("class", *(f"AP@{t:g}m" for t in DIST_THRESHOLDS), "AP", "ATE (m)", "ASE", "AOE (rad)")
        return Table(rows, columns, title)


def _as_numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def accumulate(
    predictions: Sequence[dict[str, Tensor]], ground_truth: Sequence[dict[str, Tensor]], label: int, dist_th: float
) -> MetricData:
    """The devkit's ``accumulate`` for class ``label`` (a ``CLASS_NAMES`` index) at ``dist_th`` (m).

    ``predictions[s]``: ``boxes [K, ≥7]``, ``scores [K]``, ``labels [K]`` of sample ``s``; ``ground_truth[s]``:
    ``boxes [G, ≥7]``, ``labels [G]`` of the same sample.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} samples of predictions against {len(ground_truth)} of ground truth")
    gts = [_as_numpy(g["boxes"][g["labels"] == label]) for g in ground_truth]
    npos = sum(len(g) for g in gts)
    if npos == 0:
        return MetricData.no_predictions()
    preds = [(s, box) for s, p in enumerate(predictions) for box in _as_numpy(p["boxes"][p["labels"] == label])]
    scores = np.array([float(v) for p in predictions for v in p["scores"][p["labels"] == label]])
    order = np.lexsort((np.arange(len(scores)), scores))[::-1]  # score, then position, both descending

    taken = [np.zeros(len(g), dtype=bool) for g in gts]
    tp, conf, matches = [], [], {name: [] for name in (*TP_ERRORS, "conf")}
    period = np.pi if CLASS_NAMES[label] == "barrier" else 2 * np.pi
    for k in order:
        sample, box = preds[k]
        distances = np.linalg.norm(gts[sample][:, :2] - box[:2], axis=1)
        distances[taken[sample]] = np.inf
        nearest = int(np.argmin(distances)) if len(distances) else -1
        is_match = nearest >= 0 and distances[nearest] < dist_th
        tp.append(int(is_match))
        conf.append(scores[k])
        if is_match:
            taken[sample][nearest] = True
            gt = gts[sample][nearest]
            matches["trans_err"].append(distances[nearest])
            matches["scale_err"].append(1 - _aligned_iou(gt[3:6], box[3:6]))
            matches["orient_err"].append(abs(_angle_diff(gt[6], box[6], period)))
            matches["conf"].append(scores[k])
    if not matches["conf"]:
        return MetricData.no_predictions()

    tp_sum = np.cumsum(tp).astype(float)
    fp_sum = np.cumsum(1 - np.array(tp)).astype(float)
    recall = tp_sum / float(npos)
    recall_points = np.linspace(0, 1, RECALL_POINTS)
    precision = np.interp(recall_points, recall, tp_sum / (fp_sum + tp_sum), right=0)
    confidence = np.interp(recall_points, recall, np.array(conf), right=0)
    match_conf = np.array(matches["conf"])
    errors = {}
    for name in TP_ERRORS:
        running_mean = np.cumsum(matches[name]) / np.arange(1, len(matches[name]) + 1)
        errors[name] = np.interp(confidence[::-1], match_conf[::-1], running_mean[::-1])[::-1]
    return MetricData(recall_points, precision, confidence, **errors)


def _aligned_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boxes of sizes ``a``, ``b`` ``[3]`` moved to the same centre and yaw (the devkit's
    ``scale_iou``)."""
    intersection = np.prod(np.minimum(a, b))
    return float(intersection / (np.prod(a) + np.prod(b) - intersection))


def _angle_diff(x: float, y: float, period: float) -> float:
    """The devkit's ``angle_diff``: the smallest signed angle from ``y`` to ``x`` for the given period."""
    diff = (x - y + period / 2) % period - period / 2
    return diff - 2 * np.pi if diff > np.pi else diff


def average_precision(md: MetricData, min_recall: float = MIN_RECALL, min_precision: float = MIN_PRECISION) -> float:
    """The devkit's ``calc_ap``: mean of the precision above ``min_precision`` (rescaled to [0, 1]) over the recall
    points above ``min_recall``."""
    precision = md.precision[round(100 * min_recall) + 1 :] - min_precision
    return float(np.mean(np.clip(precision, 0, None))) / (1.0 - min_precision)


def tp_error(md: MetricData, name: str, min_recall: float = MIN_RECALL) -> float:
    """The devkit's ``calc_tp``: the mean of error ``name`` (``TP_ERRORS``) from recall ``min_recall`` (excluded)
    up to the highest recall reached; 1 when that is not above ``min_recall``."""
    first, last = round(100 * min_recall) + 1, md.max_recall_ind
    return 1.0 if last < first else float(np.mean(getattr(md, name)[first : last + 1]))


def evaluate(
    predictions: Sequence[dict[str, Tensor]],
    ground_truth: Sequence[dict[str, Tensor]],
    class_names: Sequence[str] = ("car", "pedestrian"),
) -> DetectionMetrics:
    """AP at every threshold, ATE, ASE and AOE of each class in ``class_names``, over all samples at once.

    ``predictions[s]``: ``boxes [K, ≥7]``, ``scores [K]``, ``labels [K]`` (``decode``'s output for sample ``s``);
    ``ground_truth[s]``: ``boxes [G, ≥7]``, ``labels [G]`` (a synthetic sample's ``gt_boxes[0]``,
    ``gt_labels[0]``).
    """
    classes = {}
    for name in class_names:
        label = CLASS_NAMES.index(name)
        data = {th: accumulate(predictions, ground_truth, label, th) for th in DIST_THRESHOLDS}
        errors = [tp_error(data[TP_THRESHOLD], error) for error in TP_ERRORS]
        classes[name] = ClassMetrics({th: average_precision(md) for th, md in data.items()}, *errors)
    return DetectionMetrics(classes)
