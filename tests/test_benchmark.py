"""The bev_pool benchmark harness, ``benchmarks/bev_pool.py`` (a script of the repository, not package code)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from bevnb.bevpool import traffic
from bevnb.bevpool.triton_kernels import INTERPRETED
from bevnb.data import make_sample
from bevnb.geometry import plan_bev_pool
from bevnb.rig import FIVE_CAMERA_RIG_PATH

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "bev_pool.py"


def _load_harness():
    spec = importlib.util.spec_from_file_location("bev_pool_benchmark", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_harness()


def test_benchmark_writes_json_named_by_device(tmp_path):
    sample = make_sample("zeros")
    result = bench.run_benchmark(
        backends=("torch", "triton-cells", "triton-atomic"),
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
        ("triton-cells", "float16"),
        ("triton-atomic", "float16"),
    ]
    sub = plan.select_intervals(torch.arange(0, plan.num_intervals, 500))
    models = {(m["backend"], m["dtype"]): m for m in stored["traffic_model"]}
    assert list(models) == [(r["backend"], r["dtype"]) for r in stored["results"]]
    for model in models.values():
        assert model["floor"] == traffic.floor_bytes(sub, torch.float16)
        assert model["moved"] == sum(model["passes"].values()) > model["floor"] / 2
        assert model["us_at"]["H200"] == pytest.approx(1e6 * model["moved"] / 4.8e12)
    if INTERPRETED:
        cells = stored["results"][1]
        assert cells["skipped"] == "Triton interpreter: skipped (every cell)"
        assert cells["model_bytes"] == models["triton-cells", "float16"]["moved"]
    for row in stored["results"]:
        if "skipped" in row:
            continue
        assert row["bytes_moved"] == traffic.floor_bytes(sub, torch.float16)
        assert row["model_bytes"] == models[row["backend"], row["dtype"]]["moved"]
        assert row["points"] == workload["kept_points"]
        assert row["max_abs_err"] == 0.0 or not INTERPRETED
        assert row["gb_per_s"] == pytest.approx(row["bytes_moved"] / row["us"] / 1e3)
        assert row["fraction_of_copy"] == pytest.approx(row["gb_per_s"] / stored["copy_gb_per_s"])
    points = [r["points"] for r in stored["scaling"]]
    assert points == [points[0]] * 3 + [points[3]] * 3 and points[0] < points[3] < workload["kept_points"]
    assert "bev_pool on" in str(bench.results_table(stored)) and "points" in str(bench.scaling_table(stored))


def test_benchmark_rejects_unknown_names():
    with pytest.raises(ValueError, match="backends must be among"):
        bench.run_benchmark(backends=("cuda",))
    with pytest.raises(ValueError, match="dtypes must be among"):
        bench.run_benchmark(dtypes=("bfloat16",))


def test_benchmark_pools_the_plan_of_another_rig(tmp_path, five_rig):
    result = bench.run_benchmark(
        five_rig, backends=("torch",), dtypes=("float32",), repeat=1, scaling_strides=(8,), cell_stride=64
    )
    workload = result["workload"]
    assert (workload["rig"], workload["cameras"], workload["feature_size"]) == ("five_camera_rig", 5, [48, 132])
    assert workload["grid_size"] == [256, 128, 1] and workload["output_shape"] == [1, 80, 256, 128]
    assert workload["candidate_points"] == 5 * 118 * 48 * 132
    assert result["results"][0]["max_abs_err"] == 0.0
    argv = ["--rig", str(FIVE_CAMERA_RIG_PATH), "--backends", "torch", "--dtypes", "float32", "--repeat", "1"]
    assert bench.main([*argv, "--cell-stride", "256", "--out", str(tmp_path)]) == 0
    assert "five_camera_rig" in (tmp_path / f"{bench.device_slug(DEVICE)}.json").read_text()
