"""The traffic-and-work model of bev_pool (``bevnb.bevpool.traffic``) and the balanced interval order it measures."""

from __future__ import annotations

import pytest
import torch

from bevnb.bevpool import traffic
from bevnb.bevpool.triton_kernels import CELLS_LAUNCH, INTERVAL_LAUNCH
from bevnb.config import CameraConfig
from bevnb.data import make_sample
from bevnb.geometry import plan_bev_pool, plan_from_geometry

BLOCK_I = INTERVAL_LAUNCH["gpu"]["BLOCK_I"]
DTYPES = (torch.float16, torch.float32)


@pytest.fixture(scope="module")
def rig_plan():
    return plan_bev_pool(make_sample("zeros"))


@pytest.fixture(scope="module")
def models(rig_plan):
    return {(m.backend, m.dtype): m for m in traffic.traffic_models(rig_plan, DTYPES)}


def tiny_plan():
    """3 points kept from 2 feature rows into 2 cells of a 3 × 2 grid, C = 4 (one point dropped)."""
    geometry = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [1.5, 0.5, 0.5], [9.0, 0.5, 0.5]]).view(1, 2, 1, 2, 3)
    config = CameraConfig(xbound=(0.0, 3.0, 1.0), ybound=(0.0, 2.0, 1.0), zbound=(0.0, 1.0, 1.0), out_channels=4)
    return plan_from_geometry(geometry, config)


def test_block_utilisation_counts_lanes_times_steps():
    lengths = torch.tensor([4, 1, 1, 1, 3])
    assert traffic.block_utilisation(lengths, 2) == pytest.approx(10 / (2 * 4 + 2 * 1 + 2 * 3))  # last block padded
    assert traffic.block_utilisation(lengths, 1) == 1.0
    assert traffic.block_utilisation(torch.zeros(3, dtype=torch.long), 2) == 1.0


def test_balanced_order_keeps_the_interval_kernels_lanes_busy(rig_plan):
    """Issue 13: in cell order, 16 intervals walked in step leave ~31 % of the lanes idle; longest first, < 5 %."""
    in_cell_order = traffic.block_utilisation(rig_plan.interval_lengths, BLOCK_I)
    balanced = traffic.traffic(rig_plan, "triton-interval", torch.float16).lane_utilisation
    assert in_cell_order == pytest.approx(0.688, abs=0.001)
    assert balanced == traffic.block_utilisation(rig_plan.interval_lengths[rig_plan.interval_order.long()], BLOCK_I)
    assert balanced >= 0.95
    for stride in (4, 2):  # the larger sub-plans the tests build stay balanced too
        sub = rig_plan.select_intervals(torch.arange(0, rig_plan.num_intervals, stride))
        assert traffic.traffic(sub, "triton-interval", torch.float16).lane_utilisation >= 0.95


def test_balanced_order_never_loses_to_cell_order(rig_plan):
    """On every sub-plan, longest-first blocks need no more steps than cell-order blocks. (A sub-plan of a few
    hundred cells cannot reach 95 %: its longest intervals share a block with shorter ones whatever the order.)"""
    for stride in (500, 97, 16):
        sub = rig_plan.select_intervals(torch.arange(0, rig_plan.num_intervals, stride))
        balanced = traffic.traffic(sub, "triton-interval", torch.float32).lane_utilisation
        assert balanced >= traffic.block_utilisation(sub.interval_lengths, BLOCK_I)


def test_floor_counts_indices_gathers_and_output_once(rig_plan):
    tiny = tiny_plan()
    assert (tiny.num_points, tiny.num_intervals) == (3, 2)
    # int32: 2 × 3 ranks + 3 × 2 per cell; the 4 depth weights and 2 feature rows (8 or 16 B each) share one
    # 32-byte sector each; the output [1, 4, 3, 2] is written once.
    assert traffic.floor_bytes(tiny, torch.float16) == 4 * (6 + 6) + 32 + 32 + 2 * 24
    assert traffic.floor_bytes(tiny, torch.float32) == 4 * (6 + 6) + 32 + 32 + 4 * 24
    P, K = rig_plan.num_points, rig_plan.num_intervals
    weights, rows = traffic.gathered_bytes(rig_plan, torch.float16)
    assert 2 * P <= weights <= 2 * 6 * 118 * 32 * 88 and rows == 2 * 80 * 6 * 32 * 88  # every feature row is used
    assert traffic.floor_bytes(rig_plan, torch.float16) == 4 * (2 * P + 3 * K) + weights + rows + 2 * 80 * 360 * 360
    assert traffic.floor_bytes(rig_plan, torch.float16) / 1e6 == pytest.approx(42.4, abs=0.1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_what_each_kernel_moves_beyond_the_floor(rig_plan, models, dtype):
    """Interval kernel: a zero-fill of the whole output, then each hit cell written again, and its order array.
    Cell-tile kernel: the floor with its index as CSR offsets instead of an interval table. Point-block kernel: an
    fp32 buffer, zero-filled, read-modify-written by atomics and cast for fp16."""
    e = torch.empty((), dtype=dtype).element_size()
    name = str(dtype).removeprefix("torch.")
    P, K, C, cells = rig_plan.num_points, rig_plan.num_intervals, 80, 360 * 360
    interval, tiles, atomic = (models[b, name] for b in ("triton-interval", "triton-cells", "triton-atomic"))
    floor = interval.floor
    assert interval.moved - floor == e * K * C + 4 * K
    assert tiles.moved - floor == 4 * (cells + 1) - 12 * K
    cast = (4 + e) * C * cells if e == 2 else 0  # fp32 buffer read, fp16 output written
    staging = 4 * C * cells + 8 * K * C  # zero-fill of the fp32 buffer, read-modify-write of its hit cells
    assert atomic.moved - floor == staging + 4 * P - 12 * K + cast - e * C * cells  # a cell index per point
    # Stores: the cell-tile kernel's 16-cell runs are whole sectors in fp16 (two in fp32): the output once.
    assert tiles.store_sectors == e * C * cells // 32
    assert interval.store_sectors == e * C * cells // 32 + K * C  # zero-fill, then one sector per stored element
    assert atomic.atomics == P * C and interval.atomics == tiles.atomics == 0
    assert interval.longest_walk == tiles.longest_walk == int(rig_plan.interval_lengths.max())


def test_cell_tiles_trade_lanes_for_stores(rig_plan, models):
    """Tiles of neighbouring cells walk up to their longest cell, empty cells included: most lanes idle."""
    tiles = models["triton-cells", "float16"]
    dense = rig_plan.cell_offsets.diff()
    assert tiles.lane_utilisation == traffic.block_utilisation(dense[None], CELLS_LAUNCH["gpu"]["BLOCK_R"])
    assert 0.3 < tiles.lane_utilisation < 0.4


def test_pytorch_backends_are_counted_from_their_ops(rig_plan, models):
    """The reference and MIT's path materialise per-point products in fp32 and add them with index_add_ (atomic on
    a GPU): tens of times the floor."""
    for backend in ("torch", "naive"):
        m = models[backend, "float16"]
        assert m.atomics == rig_plan.num_points * 80
        assert m.moved > 40 * m.floor and "aten.index_add_" in m.passes
    naive = models["naive", "float32"]
    outer_product = 4 * 80 * 6 * 118 * 32 * 88  # MIT's [N, D, fH, fW, C] fp32, written then gathered
    assert naive.passes["aten.mul"] >= outer_product


def test_times_follow_bandwidth_and_table_lists_every_backend(rig_plan, models):
    m = models["triton-interval", "float16"]
    assert m.microseconds(traffic.BANDWIDTHS["H200"]) == pytest.approx(1e6 * m.moved / 4.8e12)
    floor_us = 1e6 * m.floor / traffic.BANDWIDTHS["H200"]
    assert floor_us == pytest.approx(8.8, abs=0.1)
    table = traffic.traffic_table(list(models.values()))
    assert [row[0] for row in table.rows] == ["floor", *traffic.MODELLED] * 2
    assert "µs at H100" in table.columns and "µs at H200" in table.columns
    with pytest.raises(ValueError, match="no traffic model for backend 'triton'"):
        traffic.traffic(rig_plan, "triton", torch.float16)
