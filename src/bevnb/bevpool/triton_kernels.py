"""bev_pool as three Triton kernels over the plan: the interval kernel (CUDA-BEVFusion's scheme: a program per block
of cells, no atomics), the cell-tile kernel (a program per tile of the output in memory order, every element written
once) and the point-block kernel (atomic adds).

All read depth weights ``[N, D, fH, fW]`` and NHWC features ``[N, fH, fW, C]`` (fp16 or fp32) as the backbone graph
emits them, accumulate in fp32, and write the BEV features ``[1, Z·C, X, Y]`` (NCHW, rows x, columns y) directly.
Each backend is a ``KernelLaunch`` (kernel, grid, arguments, options) built by a function of ``LAUNCHERS``, so the
calls here and the ahead-of-time compile of ``bevpool.compiled`` use the same launch.

Without CUDA, Triton runs kernels through its interpreter: numpy, one program instance after the other, so the cost
is set by the number of programs and loop iterations, not by FLOPs. Triton reads ``TRITON_INTERPRET`` when it is
imported (its own ``tl.zeros``, ``tl.max``… are jit functions too), so ``bevnb.bevpool`` sets it on ``import bevnb``,
before anything imports triton, and imports this module only when a Triton backend is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

from ..geometry import BevPoolPlan

INTERPRETED: bool = triton.knobs.runtime.interpret
"""True when kernels run in Triton's CPU interpreter (no CUDA, or TRITON_INTERPRET=1 set by the user)."""
if isinstance(tl.zeros, InterpretedFunction) != INTERPRETED:
    raise RuntimeError("triton was imported before TRITON_INTERPRET was set: import bevnb before triton")


@triton.jit
def _gather_sum(
    depth_ptr, feat_ptr, ranks_depth_ptr, ranks_feat_ptr, start, length, channels, ROWS: tl.constexpr, C: tl.constexpr
):
    """``[ROWS, BLOCK_C]`` fp32: per row, the sum over its points ``start + k``, ``k < length``, of
    ``depth[ranks_depth] · feat[ranks_feat, channels]``, added in plan order. The rows walk in step up to the longest
    one; shorter rows are masked (the lanes the plan's ``interval_order`` keeps busy)."""
    acc = tl.zeros((ROWS, channels.shape[0]), dtype=tl.float32)
    c_ok = channels < C
    for k in range(0, tl.max(length, axis=0)):
        on = k < length
        rd = tl.load(ranks_depth_ptr + start + k, mask=on, other=0)
        rf = tl.load(ranks_feat_ptr + start + k, mask=on, other=0)
        w = tl.load(depth_ptr + rd, mask=on, other=0.0).to(tl.float32)
        f = tl.load(feat_ptr + rf[:, None] * C + channels[None, :], mask=on[:, None] & c_ok[None, :], other=0.0)
        acc += w[:, None] * f.to(tl.float32)
    return acc


@triton.jit
def bev_pool_interval_kernel(
    depth_ptr,  # [N·D·fH·fW] depth weights
    feat_ptr,  # [N·fH·fW, C] features
    out_ptr,  # [Z·C·X·Y] output, zero-filled
    ranks_depth_ptr,
    ranks_feat_ptr,
    ranks_bev_ptr,
    interval_starts_ptr,
    interval_lengths_ptr,
    interval_order_ptr,  # [K] interval ids by decreasing length
    num_intervals,
    plane,  # X·Y: the stride between output channels
    C: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program = BLOCK_I intervals (BEV cells) of similar length × BLOCK_C channels; each cell is written once,
    no atomics."""
    slots = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    live = slots < num_intervals
    interval = tl.load(interval_order_ptr + slots, mask=live, other=0)
    start = tl.load(interval_starts_ptr + interval, mask=live, other=0)
    length = tl.load(interval_lengths_ptr + interval, mask=live, other=0)
    acc = _gather_sum(depth_ptr, feat_ptr, ranks_depth_ptr, ranks_feat_ptr, start, length, channels, BLOCK_I, C)
    cell = tl.load(ranks_bev_ptr + start, mask=live, other=0)  # channel-0 offset of the cell in the output
    out = out_ptr + cell[:, None] + channels[None, :] * plane
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=live[:, None] & (channels < C)[None, :])


@triton.jit
def bev_pool_cells_kernel(
    depth_ptr,  # [N·D·fH·fW] depth weights
    feat_ptr,  # [N·fH·fW, C] features
    out_ptr,  # [Z·C·X·Y] output, not initialised: every element is written here
    ranks_depth_ptr,
    ranks_feat_ptr,
    cell_offsets_ptr,  # [Z·X·Y + 1] CSR row pointer: the points of each cell
    plane,  # X·Y: the cells of one z-slice, and the stride between output channels
    C: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program = BLOCK_R consecutive cells of one z-slice × BLOCK_C channels, in output memory order: each
    channel's BLOCK_R values are stored contiguously, and empty cells get their zeros here (no zero-fill pass)."""
    z = tl.program_id(2)
    cells = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # x·Y + y inside the slice
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    live = cells < plane
    start = tl.load(cell_offsets_ptr + z * plane + cells, mask=live, other=0)
    end = tl.load(cell_offsets_ptr + z * plane + cells + 1, mask=live, other=0)
    acc = _gather_sum(depth_ptr, feat_ptr, ranks_depth_ptr, ranks_feat_ptr, start, end - start, channels, BLOCK_R, C)
    out = out_ptr + z * C * plane + channels[None, :] * plane + cells[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=live[:, None] & (channels < C)[None, :])


@triton.jit
def bev_pool_atomic_kernel(
    depth_ptr,  # [N·D·fH·fW] depth weights
    feat_ptr,  # [N·fH·fW, C] features
    out_ptr,  # [Z·C·X·Y] fp32 output, zero-filled
    ranks_depth_ptr,
    ranks_feat_ptr,
    ranks_bev_ptr,
    num_points,
    plane,  # X·Y: the stride between output channels
    C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program = BLOCK_N points × BLOCK_C channels, scattered into their cells with atomic adds (no intervals)."""
    points = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    live = points < num_points
    on = live[:, None] & (channels < C)[None, :]
    rd = tl.load(ranks_depth_ptr + points, mask=live, other=0)
    rf = tl.load(ranks_feat_ptr + points, mask=live, other=0)
    cell = tl.load(ranks_bev_ptr + points, mask=live, other=0)
    w = tl.load(depth_ptr + rd, mask=live, other=0.0).to(tl.float32)
    f = tl.load(feat_ptr + rf[:, None] * C + channels[None, :], mask=on, other=0.0).to(tl.float32)
    tl.atomic_add(out_ptr + cell[:, None] + channels[None, :] * plane, w[:, None] * f, mask=on, sem="relaxed")


# Launch shapes. The GPU values are first-principles choices, NOT tuned on hardware (no GPU was available when they
# were written): one channel block covers all C = 80 channels (BLOCK_C = 128, 48 lanes masked), so each index and
# depth weight is loaded once per point, and a program holds a 16 × 128 fp32 accumulator (16 registers per thread
# at 4 warps); the cell-tile kernel's 16 fp16 cells are one 32-byte sector per channel. `benchmarks/bev_pool.py
# --sweep` times the alternatives on a GPU. The interpreter's time grows with the number of programs and loop
# iterations (toolchain notes §4.1); measured on a 2-core CPU, the atomic kernel is fastest with the largest block
# Triton allows (2^20 elements) and BLOCK_C = 16, which divides C = 80 (no masked lanes), the interval kernel with
# 256 cells per program (bigger blocks wait on their longest cell), and the cell-tile kernel, which visits every
# cell of the grid, with tiles of 1024 cells (each program costs milliseconds there, even on empty cells).
INTERVAL_LAUNCH = {
    "gpu": {"BLOCK_I": 16, "BLOCK_C": 128, "num_warps": 4},
    "interpreter": {"BLOCK_I": 256, "BLOCK_C": 128},
}
CELLS_LAUNCH = {
    "gpu": {"BLOCK_R": 16, "BLOCK_C": 128, "num_warps": 4},
    "interpreter": {"BLOCK_R": 1024, "BLOCK_C": 128},
}
ATOMIC_LAUNCH = {
    "gpu": {"BLOCK_N": 64, "BLOCK_C": 128, "num_warps": 4},
    "interpreter": {"BLOCK_N": 65536, "BLOCK_C": 16},
}


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel call: the kernel, its grid, its arguments by parameter name (tensors, ints and the constexpr block
    sizes) and the launch options (``num_warps`` on a GPU). ``args["out_ptr"]`` is the output it writes."""

    kernel: Callable
    grid: tuple[int, ...]
    args: dict[str, Tensor | int]
    options: dict[str, int]

    def __call__(self) -> Tensor:
        """Run it (nothing to run on an empty grid) and return the output buffer."""
        if all(self.grid):
            self.kernel[self.grid](**self.args, **self.options)
        return self.args["out_ptr"]


def launch_shape(
    table: dict[str, dict[str, int]], block: str, n: int, overrides: dict[str, int] | None = None, machine: str = ""
) -> dict[str, int]:
    """The launch shape of ``table`` for ``machine`` (``"gpu"`` or ``"interpreter"``; default: this machine's) with
    ``overrides``, its ``block`` size no larger than ``n`` items need."""
    cfg = {**table[machine or ("interpreter" if INTERPRETED else "gpu")], **(overrides or {})}
    cfg[block] = min(cfg[block], max(16, triton.next_power_of_2(n)))
    return cfg


def _split(cfg: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """Block sizes (constexpr arguments) and launch options of a launch shape."""
    options = {k: v for k, v in cfg.items() if k == "num_warps"}
    return {k: v for k, v in cfg.items() if k not in options}, options


def interval_launch(
    depth: Tensor, feat: Tensor, plan: BevPoolPlan, machine: str = "", **overrides: int
) -> KernelLaunch:
    """The interval kernel over ``plan.interval_order``, into a zero-filled output in the input dtype, with the launch
    shape of ``machine`` (see ``launch_shape``); ``overrides`` replace ``INTERVAL_LAUNCH`` entries (``BLOCK_I``,
    ``BLOCK_C``, ``num_warps``)."""
    blocks, options = _split(launch_shape(INTERVAL_LAUNCH, "BLOCK_I", plan.num_intervals, overrides, machine))
    X, Y, _ = plan.grid_size
    args = {
        "depth_ptr": depth,
        "feat_ptr": feat,
        "out_ptr": torch.zeros(plan.output_shape, dtype=feat.dtype, device=feat.device),
        "ranks_depth_ptr": plan.ranks_depth,
        "ranks_feat_ptr": plan.ranks_feat,
        "ranks_bev_ptr": plan.ranks_bev,
        "interval_starts_ptr": plan.interval_starts,
        "interval_lengths_ptr": plan.interval_lengths,
        "interval_order_ptr": plan.interval_order,
        "num_intervals": plan.num_intervals,
        "plane": X * Y,
        "C": plan.channels,
        **blocks,
    }
    grid = (triton.cdiv(plan.num_intervals, blocks["BLOCK_I"]), triton.cdiv(plan.channels, blocks["BLOCK_C"]))
    return KernelLaunch(bev_pool_interval_kernel, grid, args, options)


def cells_launch(depth: Tensor, feat: Tensor, plan: BevPoolPlan, machine: str = "", **overrides: int) -> KernelLaunch:
    """The cell-tile kernel over every cell, into an uninitialised output in the input dtype, with the launch shape of
    ``machine``; ``overrides`` replace ``CELLS_LAUNCH`` entries (``BLOCK_R``, ``BLOCK_C``, ``num_warps``)."""
    X, Y, Z = plan.grid_size
    blocks, options = _split(launch_shape(CELLS_LAUNCH, "BLOCK_R", X * Y, overrides, machine))
    args = {
        "depth_ptr": depth,
        "feat_ptr": feat,
        "out_ptr": torch.empty(plan.output_shape, dtype=feat.dtype, device=feat.device),
        "ranks_depth_ptr": plan.ranks_depth,
        "ranks_feat_ptr": plan.ranks_feat,
        "cell_offsets_ptr": plan.cell_offsets,
        "plane": X * Y,
        "C": plan.channels,
        **blocks,
    }
    grid = (triton.cdiv(X * Y, blocks["BLOCK_R"]), triton.cdiv(plan.channels, blocks["BLOCK_C"]), Z)
    return KernelLaunch(bev_pool_cells_kernel, grid, args, options)


def atomic_launch(depth: Tensor, feat: Tensor, plan: BevPoolPlan, machine: str = "", **overrides: int) -> KernelLaunch:
    """The point-block kernel, adding into a zero-filled fp32 output (cast to the input dtype afterwards), with the
    launch shape of ``machine``; ``overrides`` replace ``ATOMIC_LAUNCH`` entries (``BLOCK_N``, ``BLOCK_C``,
    ``num_warps``)."""
    blocks, options = _split(launch_shape(ATOMIC_LAUNCH, "BLOCK_N", plan.num_points, overrides, machine))
    X, Y, _ = plan.grid_size
    args = {
        "depth_ptr": depth,
        "feat_ptr": feat,
        "out_ptr": torch.zeros(plan.output_shape, dtype=torch.float32, device=feat.device),
        "ranks_depth_ptr": plan.ranks_depth,
        "ranks_feat_ptr": plan.ranks_feat,
        "ranks_bev_ptr": plan.ranks_bev,
        "num_points": plan.num_points,
        "plane": X * Y,
        "C": plan.channels,
        **blocks,
    }
    grid = (triton.cdiv(plan.num_points, blocks["BLOCK_N"]), triton.cdiv(plan.channels, blocks["BLOCK_C"]))
    return KernelLaunch(bev_pool_atomic_kernel, grid, args, options)


LAUNCHERS: dict[str, Callable[..., KernelLaunch]] = {
    "triton-interval": interval_launch,
    "triton-cells": cells_launch,
    "triton-atomic": atomic_launch,
}
"""The launch of each Triton backend, by backend name."""


def bev_pool_triton(backend: str, depth: Tensor, feat: Tensor, plan: BevPoolPlan, **overrides: int) -> Tensor:
    """BEV ``[1, Z·C, X, Y]`` in the input dtype from the Triton ``backend`` (a ``LAUNCHERS`` key); ``overrides``
    change its launch shape. Inputs are checked by ``bevnb.bev_pool``."""
    if not INTERPRETED and feat.device.type != "cuda":
        raise ValueError(f"compiled Triton kernels need CUDA tensors, got tensors on {feat.device}")
    launch = LAUNCHERS[backend](depth.contiguous(), feat.contiguous(), plan.to(feat.device), **overrides)
    return launch().to(feat.dtype)
