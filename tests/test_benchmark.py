"""The bev_pool benchmark harness, ``benchmarks/bev_pool.py`` (a script of the repository, not package code)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from bevnb.bevpool.triton_kernels import INTERPRETED
from bevnb.config import CameraConfig
from bevnb.data import make_sample
from bevnb.geometry import plan_bev_pool, plan_from_geometry

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "bev_pool.py"


def _load_harness():
    spec = importlib.util.spec_from_file_location("bev_pool_benchmark", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_harness()


def test_bytes_moved_counts_each_tensor_once():
    geometry = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [1.5, 0.5, 0.5], [9.0, 0.5, 0.5]]).view(1, 2, 1, 2, 3)
    grid = CameraConfig(xbound=(0.0, 3.0, 1.0), ybound=(0.0, 2.0, 1.0), zbound=(0.0, 1.0, 1.0), out_channels=4)
    plan = plan_from_geometry(geometry, grid)  # 3 points kept, from 2 feature rows, 2 cells
    assert (plan.num_points, plan.num_intervals, plan.ranks_feat.unique().numel()) == (3, 2, 2)
    # fp16: 3 weights + 2 rows × 4 channels + 4 × 3 × 2 outputs, 2 bytes each; int32: 2 × 3 ranks + 3 × 2 per cell
    assert bench.bytes_moved(plan, torch.float16) == 2 * (3 + 8 + 24) + 4 * (6 + 6)
    assert bench.bytes_moved(plan, torch.float32) == 4 * (3 + 8 + 24) + 4 * (6 + 6)


def test_benchmark_writes_json_named_by_device(tmp_path):
    sample = make_sample("zeros")
    result = bench.run_benchmark(
        sample,
        backends=("torch", "triton-atomic"),
        dtypes=("float16",),
        repeat=1,
        scaling_strides=(4, 2),
        cell_stride=500,
    )
    path = bench.write_results(result, tmp_path)
    assert path.name == f"{bench.device_slug(DEVICE)}.json"
    stored = bench.load_results(tmp_path)[path.stem]
    workload = stored["workload"]
    plan = plan_bev_pool(sample)
    assert workload["cell_stride"] == 500 and workload["cells_hit"] == len(range(0, plan.num_intervals, 500))
    assert workload["candidate_points"] == 1_993_728 and workload["plan_seconds"] > 0
    assert [(r["backend"], r["dtype"]) for r in stored["results"]] == [
        ("torch", "float16"),
        ("triton-atomic", "float16"),
    ]
    for row in stored["results"]:
        assert row["points"] == workload["kept_points"]
        assert row["max_abs_err"] == 0.0 or not INTERPRETED
        assert row["gb_per_s"] == pytest.approx(row["bytes_moved"] / row["us"] / 1e3)
        assert row["fraction_of_copy"] == pytest.approx(row["gb_per_s"] / stored["copy_gb_per_s"])
    points = [r["points"] for r in stored["scaling"]]
    assert points[0] == points[1] < points[2] == points[3] < workload["kept_points"]
    assert "bev_pool on" in str(bench.results_table(stored)) and "points" in str(bench.scaling_table(stored))


def test_benchmark_rejects_unknown_names():
    with pytest.raises(ValueError, match="backends must be among"):
        bench.run_benchmark(backends=("cuda",))
    with pytest.raises(ValueError, match="dtypes must be among"):
        bench.run_benchmark(dtypes=("bfloat16",))
