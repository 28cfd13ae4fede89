"""The split pipeline equals the PyTorch model; the oracle lift puts every box where it is."""

from __future__ import annotations

import pytest
import torch

import bevnb
from bevnb.oracle import FOOTPRINT_MARGIN_M, footprint_mask, oracle_layers, oracle_lift, weighted_points
from bevnb.pipeline import SplitCamera
from bevnb.validation import FP16_MAX_REL, INT8_MIN_COSINE, validate


@pytest.fixture(scope="module")
def fp16_split(onnx_dirs):
    return SplitCamera(onnx_dirs("fp16"), bev_pool_backend="triton")


def test_fp16_split_equals_pytorch_stage_by_stage(trained, onnx_dirs, sample):
    result = validate(trained, {"fp16": SplitCamera(onnx_dirs("fp16"), "triton")}, {"synthetic": sample})
    assert result.ok, result.failures
    errors = {row[2]: float(row[5]) for row in result.rows}
    assert errors["camera depth"] == 0.0  # the same function on both sides
    assert errors["camera_feature"] <= 1e-4
    assert errors["camera_depth_weights"] <= 1e-4
    assert errors["bev_pool"] <= 1e-4
    assert errors["vtransform (final)"] <= FP16_MAX_REL
    assert set(result.timings_ms["fp16"]) == {
        "plan (once per calibration)",
        "depth map",
        "backbone",
        "bev_pool",
        "vtransform",
    }


@pytest.mark.slow
def test_int8_split_stays_close_to_fp32(trained, onnx_dirs, sample):
    result = validate(trained, {"int8": SplitCamera(onnx_dirs("int8"), "torch")}, {"synthetic": sample})
    assert result.ok, result.failures
    final = next(row for row in result.rows if row[2] == "vtransform (final)")
    assert float(final[6]) >= INT8_MIN_COSINE
    assert float(final[7]) > 15.0  # SQNR in dB


def test_split_outputs_have_the_deployed_shapes(fp16_split, sample):
    out = fp16_split(sample).outputs
    assert {k: list(v.shape) for k, v in out.items()} == {
        "depth_map": [1, 6, 1, 256, 704],
        "features": [6, 32, 88, 80],
        "depth_weights": [6, 118, 32, 88],
        "bev": [1, 80, 360, 360],
        "bev_downsampled": [1, 80, 180, 180],
    }


def test_split_refuses_a_folder_with_swapped_graphs(onnx_dirs, tmp_path):
    src = onnx_dirs("fp16")
    (tmp_path / "camera.backbone.onnx").symlink_to(src / "camera.vtransform.onnx")
    (tmp_path / "camera.vtransform.onnx").symlink_to(src / "camera.vtransform.onnx")
    with pytest.raises(ValueError, match=r"camera\.backbone\.onnx: expected inputs \['img', 'depth'\]"):
        SplitCamera(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        SplitCamera(tmp_path / "absent")


# --- the oracle lift -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_oracle_lift_puts_every_seen_box_inside_its_footprint(seed):
    sample = sample_for(seed)
    lift = oracle_lift(sample, bevnb.plan_bev_pool(sample), backend="triton")
    seen = lift.seen_pixels > 0
    assert seen.sum() >= 6  # the scene really shows several boxes to cameras and lidar
    assert (lift.lifted[seen] > 0).all(), "a box seen by a camera and the lidar got no lifted mass"
    assert (lift.share_inside[seen] >= 0.8).all(), lift.share_inside[seen]
    # No mass is invented: a box nothing sees gets none.
    assert (lift.lifted[~seen] == 0).all()


def test_oracle_layers_are_one_hot_and_pooling_the_weighted_points_changes_nothing(sample):
    plan = bevnb.plan_bev_pool(sample)
    (depth_weights, features), *_ = oracle_layers(sample)
    assert set(depth_weights.sum(1).unique().tolist()) <= {0.0, 1.0}
    subset = weighted_points(plan, depth_weights)
    assert subset.num_points < plan.num_points / 50
    full = bevnb.bev_pool(depth_weights, features, plan, backend="torch")
    assert torch.equal(bevnb.bev_pool(depth_weights, features, subset, backend="torch"), full)


def test_footprint_mask_covers_the_grown_box():
    box = torch.tensor([10.0, -5.0, -1.0, 4.5, 1.8, 1.6, 0.0])  # a car along +x at (10, -5)
    mask = footprint_mask(box)
    cells = mask.sum().item()
    expected = (4.5 + 2 * FOOTPRINT_MARGIN_M) * (1.8 + 2 * FOOTPRINT_MARGIN_M) / 0.3**2
    assert abs(cells - expected) / expected < 0.15
    rows, cols = mask.nonzero().unbind(1)
    x = -53.85 + 0.3 * rows.float()  # rows are x
    y = -53.85 + 0.3 * cols.float()
    assert x.mean().item() == pytest.approx(10.0, abs=0.3)
    assert y.mean().item() == pytest.approx(-5.0, abs=0.3)


_SAMPLES: dict[int, dict] = {}


def sample_for(seed: int) -> dict:
    if seed not in _SAMPLES:
        _SAMPLES[seed] = bevnb.make_sample("synthetic", seed=seed)
    return _SAMPLES[seed]
