"""bev_pool backends against BEVFusion's definition and against each other.

Parity tolerances. In Triton's CPU interpreter every kernel adds the same fp32 products in the same order as the
torch reference (sorted plan order, no fused multiply-add), so they must be bit-identical, fp32 and fp16 alike. On a
GPU the compiled kernels may fuse multiply-adds (interval and cell-tile kernels) or add in any order (atomics): fp32
within 1e-5 relative to the output's scale, fp16 within one fp16 rounding step (1e-3 relative).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bevnb.bevpool import BACKENDS, bev_pool, compare, resolve_backend
from bevnb.bevpool.triton_kernels import INTERPRETED
from bevnb.config import CameraConfig
from bevnb.data import make_sample
from bevnb.geometry import plan_bev_pool, plan_from_geometry

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNELS = ("triton-interval", "triton-cells", "triton-atomic")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def unit_grid(X: int, Y: int, Z: int, C: int) -> CameraConfig:
    """X × Y × Z cells of 1 m from the origin, C channels."""
    return CameraConfig(xbound=(0.0, X, 1.0), ybound=(0.0, Y, 1.0), zbound=(0.0, Z, 1.0), out_channels=C)


def inputs(N: int, D: int, fH: int, fW: int, C: int, dtype: torch.dtype, seed: int = 0):
    """Depth weights ``[N, D, fH, fW]`` (softmax over D) and features ``[N, fH, fW, C]`` on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    depth = torch.randn(N, D, fH, fW, generator=g).softmax(1)
    feat = torch.randn(N, fH, fW, C, generator=g)
    return depth.to(DEVICE, dtype), feat.to(DEVICE, dtype)


def mit_bev_pool(geometry: torch.Tensor, depth: torch.Tensor, feat: torch.Tensor, config: CameraConfig):
    """BEVFusion's lift and bev_pool by definition (upstream notes §3.1), in float64, without any plan: the outer
    product ``[N, D, fH, fW, C]``, cells by ``.long()``, the kept mask, a sum per cell into ``[C, Z, X, Y]`` and
    Z collapsed with ``cat(unbind(dim=1), 0)``. Returns ``[1, Z·C, X, Y]``."""
    X, Y, Z = config.grid_size
    C = feat.shape[-1]
    x = (depth.double().unsqueeze(-1) * feat.double().unsqueeze(1)).reshape(-1, C)
    dx = torch.tensor(config.cell_size)
    cells = ((geometry.reshape(-1, 3) - (torch.tensor(config.cell_center0) - dx / 2)) / dx).long()
    kept = ((cells >= 0) & (cells < torch.tensor([X, Y, Z]))).all(-1)
    ix, iy, iz = cells[kept].unbind(-1)
    out = torch.zeros(Z, X, Y, C, dtype=torch.float64)
    out.index_put_((iz, ix, iy), x[kept.to(x.device)].cpu(), accumulate=True)
    return torch.cat(out.permute(3, 0, 1, 2).unbind(dim=1), 0).unsqueeze(0)


def assert_parity(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if INTERPRETED:
        assert torch.equal(out, ref)
        return
    scale = ref.float().abs().max().item()
    tol = 1e-3 if ref.dtype == torch.float16 else 1e-5
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * scale)


@st.composite
def pooling_cases(draw):
    """Small random frustums over small grids. ``spread`` sets where the points fall: 0.05 of the grid (a few long
    intervals), the grid itself, 1.5× (some dropped) or 20× (almost all dropped, often an empty plan)."""
    N, D, fH, fW = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 6))
    X, Y, Z, C = draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 2)), draw(st.integers(1, 40))
    spread = draw(st.sampled_from([0.05, 1.0, 1.5, 20.0]))
    dtype = draw(st.sampled_from([torch.float32, torch.float16]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([X, Y, Z], dtype=torch.float32)
    geometry = size / 2 + (torch.rand(N, D, fH, fW, 3, generator=g) - 0.5) * size * spread
    return geometry, unit_grid(X, Y, Z, C), inputs(N, D, fH, fW, C, dtype, seed)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pooling_cases(), st.randoms(use_true_random=False))
def test_every_backend_matches_bevfusions_definition(case, rng):
    """The reference against the definition, then every backend against the reference on the plan and on two of its
    sub-plans: a random subset of its cells, and of its points."""
    geometry, config, (depth, feat) = case
    plan = plan_from_geometry(geometry, config)
    reference = bev_pool(depth, feat, plan, backend="torch")
    expected = mit_bev_pool(geometry, depth.cpu(), feat.cpu(), config)
    assert reference.shape == expected.shape == plan.output_shape
    tol = 1e-3 if feat.dtype == torch.float16 else 1e-5
    torch.testing.assert_close(reference.cpu().double(), expected, rtol=tol, atol=tol)
    cells = torch.tensor([k for k in range(plan.num_intervals) if rng.random() < 0.5], dtype=torch.long)
    points = torch.tensor([rng.random() < 0.5 for _ in range(plan.num_points)], dtype=torch.bool)
    for sub in (plan, plan.select_intervals(cells), plan.select_points(points)):
        sub_reference = bev_pool(depth, feat, sub, backend="torch")
        for backend in ("naive", *KERNELS):
            assert_parity(bev_pool(depth, feat, sub, backend=backend), sub_reference)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_empty_plan_gives_zeros(backend, dtype):
    plan = plan_from_geometry(torch.full((2, 3, 2, 4, 3), 50.0), unit_grid(5, 4, 1, 8))
    depth, feat = inputs(2, 3, 2, 4, 8, dtype)
    out = bev_pool(depth, feat, plan, backend=backend)
    assert plan.num_points == 0 and out.shape == (1, 8, 5, 4) and out.dtype == dtype
    assert not out.any()


@pytest.mark.parametrize("backend", KERNELS)
def test_one_long_interval(backend):
    """All 600 points in one cell of a 6 × 5 grid: one interval, every other cell stays exactly zero."""
    geometry = torch.tensor([2.5, 3.5, 0.5]).expand(3, 10, 4, 5, 3)
    config = unit_grid(6, 5, 1, 24)
    plan = plan_from_geometry(geometry, config)
    assert plan.num_intervals == 1 and plan.interval_lengths.tolist() == [600]
    depth, feat = inputs(3, 10, 4, 5, 24, torch.float32)
    out = bev_pool(depth, feat, plan, backend=backend)
    assert_parity(out, bev_pool(depth, feat, plan, backend="torch"))
    expected = (depth.sum(1).unsqueeze(-1) * feat).sum((0, 1, 2))  # every point's weight × its feature row
    torch.testing.assert_close(out[0, :, 2, 3], expected, rtol=1e-5, atol=1e-5)
    out[0, :, 2, 3] = 0
    assert not out.any()


@pytest.fixture(scope="module")
def rig_plan():
    return plan_bev_pool(make_sample("zeros")).to(DEVICE)


# The interpreter's cost of the cell-tile kernel grows with the grid tiles its cells fall in: on the real grid it
# takes a run of neighbouring cells, the others every 500th cell.
RIG_SUBPLANS = {
    "triton-interval": lambda K: torch.arange(0, K, 500),
    "triton-cells": lambda K: torch.arange(K // 8, K // 8 + 90),
    "triton-atomic": lambda K: torch.arange(0, K, 500),
}


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rig_plan_subsample(rig_plan, backend, dtype):
    """The real rig's plan on ~90 of its BEV cells (a few thousand points), with the backbone's real shapes."""
    plan = rig_plan.select_intervals(RIG_SUBPLANS[backend](rig_plan.num_intervals).to(DEVICE))
    assert 80 < plan.num_intervals < 100
    depth, feat = inputs(6, 118, 32, 88, 80, dtype)
    out = bev_pool(depth, feat, plan, backend=backend)
    assert out.shape == (1, 80, 360, 360)
    assert_parity(out, bev_pool(depth, feat, plan, backend="torch"))
    hit = torch.zeros(360 * 360, dtype=torch.bool, device=DEVICE)
    hit[plan.ranks_bev.long()] = True
    assert not out[0].reshape(80, -1)[:, ~hit].any()


@pytest.mark.slow
def test_full_rig_plan_with_triton_on_this_device(rig_plan):
    """What chapter 07 runs: the whole canonical plan (~1.8 M points) through ``backend="triton"``."""
    depth, feat = inputs(6, 118, 32, 88, 80, torch.float32)
    out = bev_pool(depth, feat, rig_plan, backend="triton")
    assert_parity(out, bev_pool(depth, feat, rig_plan, backend="torch"))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_canonical_workload_on_gpu(rig_plan, backend, dtype):
    depth, feat = inputs(6, 118, 32, 88, 80, dtype)
    out = bev_pool(depth, feat, rig_plan, backend=backend)
    assert out.shape == (1, 80, 360, 360) and out.dtype == dtype and out.is_cuda
    assert_parity(out, bev_pool(depth, feat, rig_plan, backend="torch"))


def test_backend_choice_per_device():
    assert set(KERNELS) == {b for b in BACKENDS if b.startswith("triton-")}
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("triton", "cpu") == "triton-atomic"
    assert resolve_backend("auto", "cuda") == resolve_backend("triton", "cuda") == "triton-interval"
    assert all(resolve_backend(b, "cpu") == b for b in BACKENDS if b not in ("auto", "triton"))
    with pytest.raises(ValueError, match="unknown bev_pool backend 'cuda'"):
        resolve_backend("cuda", "cpu")


@pytest.mark.parametrize(
    ("shapes", "dtypes", "message"),
    [
        (
            ((2, 3, 2, 5), (2, 2, 4, 8)),
            (torch.float32,) * 2,
            r"depth weights must be \[N, D, fH, fW\] = \[2, 3, 2, 4\]",
        ),
        (
            ((2, 3, 2, 4), (2, 8, 2, 4)),
            (torch.float32,) * 2,
            r"features must be NHWC \[N, fH, fW, C\] = \[2, 2, 4, 8\]",
        ),
        (((2, 3, 2, 4), (2, 2, 4, 8)), (torch.float32, torch.float16), "both be float16 or float32"),
        (((2, 3, 2, 4), (2, 2, 4, 8)), (torch.float64,) * 2, "got torch.float64 and torch.float64"),
    ],
)
def test_bad_inputs_are_rejected(shapes, dtypes, message):
    plan = plan_from_geometry(torch.rand(2, 3, 2, 4, 3) * 4, unit_grid(4, 4, 1, 8))
    depth, feat = (torch.rand(s, dtype=d) for s, d in zip(shapes, dtypes, strict=True))
    with pytest.raises(ValueError, match=message):
        bev_pool(depth, feat, plan)


def test_canonical_inputs_have_the_backbone_outputs_shapes():
    plan = plan_from_geometry(torch.rand(2, 3, 2, 4, 3) * 4, unit_grid(4, 4, 1, 8))
    depth, feat = compare.canonical_inputs(plan, torch.float16, DEVICE)
    assert (depth.shape, feat.shape) == ((2, 3, 2, 4), (2, 2, 4, 8))
    assert depth.dtype == feat.dtype == torch.float16 and depth.device.type == feat.device.type == DEVICE.type
    torch.testing.assert_close(depth.float().sum(1), torch.ones(2, 2, 4, device=DEVICE), atol=2e-3, rtol=0)  # softmax
    assert torch.equal(feat, compare.canonical_inputs(plan, torch.float16, DEVICE)[1])  # same seed, same numbers
    assert not torch.equal(feat, compare.canonical_inputs(plan, torch.float16, DEVICE, seed=1)[1])


def test_compare_backends_reports_bit_identical_kernels():
    plan = plan_from_geometry(torch.rand(2, 3, 2, 4, 3) * 4, unit_grid(4, 4, 1, 8))
    depth, feat = inputs(2, 3, 2, 4, 8, torch.float16)
    table = compare.compare_backends(depth, feat, plan)
    assert [row[0] for row in table.rows] == ["naive", "triton-interval", "triton-atomic"]
    assert all(row[2] == "torch.float16" and row[3] == f"{plan.num_points:,}" for row in table.rows)
    if INTERPRETED:
        assert all(row[-2] == "0" and row[-1] == "True" for row in table.rows)
