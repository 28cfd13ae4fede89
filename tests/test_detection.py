"""The nuScenes detection metric on hand-made boxes, and against nuscenes-devkit's own code (slow)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bevnb.config import CLASS_NAMES
from bevnb.detection import DIST_THRESHOLDS, accumulate, evaluate, tp_error
from bevnb.scene import random_scene

CAR, PEDESTRIAN = CLASS_NAMES.index("car"), CLASS_NAMES.index("pedestrian")
CHECK = Path(__file__).parents[1] / "benchmarks" / "check_metric_against_devkit.py"


def _scenes(seeds=range(4)) -> list[dict]:
    return [{"boxes": s.boxes, "labels": s.labels} for s in map(random_scene, seeds)]


def _spread_out() -> list[dict]:
    """Two samples of cars (y = 0) and pedestrians (y = 20 m), 10 m apart: no box within 4 m of another."""
    x = torch.arange(-40.0, 41.0, 10.0)
    cars = torch.stack((x, 0 * x, -1.8 + 0 * x, 4.5 + 0 * x, 1.9 + 0 * x, 1.6 + 0 * x, 0.1 * x), dim=1)
    pedestrians = cars[::2] * torch.tensor([1, 1, 1, 0.15, 0.35, 1.05, 1]) + torch.tensor([0, 20.0, 0, 0, 0, 0, 0])
    labels = torch.tensor([CAR] * len(cars) + [PEDESTRIAN] * len(pedestrians))
    return [{"boxes": torch.cat((cars, pedestrians))[k::2], "labels": labels[k::2]} for k in range(2)]


def _predict(gt: dict, shift: tuple[float, float] = (0.0, 0.0), **changes: torch.Tensor) -> dict:
    boxes = gt["boxes"].clone()
    boxes[:, :2] += torch.tensor(shift)
    for column, value in changes.items():
        boxes[:, {"dz": 5, "yaw": 6}[column]] = value
    scores = torch.linspace(0.9, 0.5, len(boxes))
    return {"boxes": boxes, "scores": scores, "labels": gt["labels"]}


def test_a_perfect_prediction_scores_map_1_and_no_error():
    gts = _scenes()
    metrics = evaluate([_predict(g) for g in gts], gts)
    assert metrics.mean_ap == pytest.approx(1.0, abs=1e-12)  # (1 - 0.1) / 0.9 is 1 + 4e-16 in float64
    for c in metrics.classes.values():
        assert list(c.ap.values()) == pytest.approx([1.0] * 4, abs=1e-12)
        assert (c.ate, c.ase, c.aoe) == (0.0, 0.0, 0.0)
    assert metrics.table().rows[-1][0] == "mean" and len(metrics.table().rows) == 3


def test_boxes_shifted_by_1_5_m_lose_exactly_the_thresholds_below_1_5_m():
    gts = _spread_out()
    metrics = evaluate([_predict(g, shift=(0.9, 1.2)) for g in gts], gts)  # |(0.9, 1.2)| = 1.5 m
    for c in metrics.classes.values():
        assert [c.ap[t] for t in DIST_THRESHOLDS] == pytest.approx([0.0, 0.0, 1.0, 1.0], abs=1e-12)
        assert c.ate == pytest.approx(1.5, abs=1e-5)  # float32 boxes
    assert metrics.mean_ap == pytest.approx((0 + 0 + 1 + 1) / 4, abs=1e-12)


def test_scale_and_orientation_errors_align_centre_and_yaw_first():
    gts = _scenes()
    # height doubled: IoU = 1/2 whatever the rest; yaw off by 2π - 0.1 is 0.1 rad off
    preds = [_predict(g, dz=2 * g["boxes"][:, 5], yaw=g["boxes"][:, 6] + 2 * math.pi - 0.1) for g in gts]
    metrics = evaluate(preds, gts)
    assert metrics.mean_ap == pytest.approx(1.0, abs=1e-12)
    for c in metrics.classes.values():
        assert (c.ate, c.ase) == (0.0, pytest.approx(0.5)) and c.aoe == pytest.approx(0.1, abs=1e-5)


def test_recall_interpolation_and_running_mean_errors_by_hand():
    # 4 cars, 2 found (0.2 m and 0.4 m off, scores 0.9 and 0.8): precision 1 up to recall 0.5, 0 beyond
    gt = {"boxes": torch.tensor([[10.0 * k, 0, 0, 4, 2, 1.5, 0] for k in range(4)]), "labels": torch.zeros(4).long()}
    pred = {"boxes": gt["boxes"][:2] + torch.tensor([[0.2, 0, 0, 0, 0, 0, 0], [0, 0.4, 0, 0, 0, 0, 0]]),
            "scores": torch.tensor([0.9, 0.8]), "labels": torch.zeros(2).long()}  # fmt: skip
    metrics = evaluate([pred], [gt], ("car",))
    # AP: recall points 0.11 … 1 (90); precision (1 - 0.1) / 0.9 = 1 at the 40 points up to recall 0.5
    assert metrics.classes["car"].ap[2.0] == pytest.approx(40 / 90, abs=1e-12)
    # ATE: 0.2 up to recall 0.25 (15 points from 0.11), then the running mean 0.2 → 0.3 interpolated by
    # confidence, linear in recall up to 0.5 (25 points averaging 0.252)
    assert metrics.classes["car"].ate == pytest.approx((15 * 0.2 + 25 * 0.252) / 40, abs=1e-6)
    assert metrics.classes["car"].ap[0.5] == pytest.approx(40 / 90)  # both are within 0.5 m


def test_matching_is_greedy_by_score_and_each_truth_matches_once():
    gt = {"boxes": torch.tensor([[0.0, 0, 0, 4, 2, 1.5, 0]]), "labels": torch.tensor([CAR])}
    # the higher score takes the only car even though the other prediction is closer; the other is a false positive
    pred = {"boxes": torch.tensor([[0.8, 0, 0, 4, 2, 1.5, 0], [0.1, 0, 0, 4, 2, 1.5, 0]]),
            "scores": torch.tensor([0.9, 0.5]), "labels": torch.tensor([CAR, CAR])}  # fmt: skip
    car = evaluate([pred], [gt], ("car",)).classes["car"]
    # ≥ 1 m: recall 1 at the first prediction, precision 1 then 1/2 at recall 1 (the 90th point)
    assert car.ap[1.0] == pytest.approx((89 + (0.5 - 0.1) / 0.9) / 90, abs=1e-12)
    assert car.ate == pytest.approx(0.8)  # the matched one, at 2 m
    # 0.5 m: the first is a false positive, the second a match, so precision rises as 0.5·recall: AP = 0.2
    assert car.ap[0.5] == pytest.approx(0.2, abs=1e-12)
    md = accumulate([pred], [gt], CAR, 0.5)
    assert tp_error(md, "trans_err") == pytest.approx(0.1) and md.max_recall_ind == 100


def test_a_class_without_predictions_or_without_truth_scores_0_with_unit_errors():
    gts = _scenes(range(2))
    cars_only = [{k: v[p["labels"] == CAR] for k, v in p.items()} for p in (_predict(g) for g in gts)]
    metrics = evaluate(cars_only, gts)
    pedestrian = metrics.classes["pedestrian"]
    assert pedestrian.ap == dict.fromkeys(DIST_THRESHOLDS, 0.0) and (pedestrian.ate, pedestrian.ase) == (1.0, 1.0)
    assert metrics.mean_ap == pytest.approx(0.5, abs=1e-12)
    assert evaluate(cars_only, gts, ("bus",)).classes["bus"].ap[4.0] == 0.0
    with pytest.raises(ValueError, match="1 samples of predictions against 2"):
        evaluate(cars_only[:1], gts)


@pytest.mark.slow
def test_the_metric_equals_nuscenes_devkits_on_random_boxes():
    """Builds (once, ~20 s) nuscenes-devkit 1.2.0 in its own venv and compares every AP, ATE, ASE and AOE."""
    run = subprocess.run([sys.executable, str(CHECK), "--tolerance", "1e-9"], capture_output=True, text=True)
    if run.returncode == 2:
        pytest.skip(f"nuscenes-devkit could not be installed: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "max abs differences" in run.stdout
