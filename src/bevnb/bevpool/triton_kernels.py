"""bev_pool as two Triton kernels over the plan: the interval kernel (sorted, no atomics) and the point-block kernel
(atomic adds).

Both read depth weights ``[N, D, fH, fW]`` and NHWC features ``[N, fH, fW, C]`` (fp16 or fp32) as the backbone graph
emits them, accumulate in fp32, and write the BEV features ``[1, Z·C, X, Y]`` (NCHW, rows x, columns y) directly.

Without CUDA, Triton runs kernels through its interpreter: numpy, one program instance after the other, so the cost
is set by the number of programs and loop iterations, not by FLOPs. Triton reads ``TRITON_INTERPRET`` when it is
imported (its own ``tl.zeros``, ``tl.max``… are jit functions too), so ``bevnb.bevpool`` sets it on ``import bevnb``,
before anything imports triton, and imports this module only when a Triton backend is asked for.
"""

from __future__ import annotations

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
def bev_pool_interval_kernel(
    depth_ptr,  # [N·D·fH·fW] depth weights
    feat_ptr,  # [N·fH·fW, C] features
    out_ptr,  # [Z·C·X·Y] output, zero-filled
    ranks_depth_ptr,
    ranks_feat_ptr,
    ranks_bev_ptr,
    interval_starts_ptr,
    interval_lengths_ptr,
    num_intervals,
    plane,  # X·Y: the stride between output channels
    C: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program = BLOCK_I intervals (BEV cells) × BLOCK_C channels; each cell is written once, no atomics."""
    intervals = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    live, c_ok = intervals < num_intervals, channels < C
    start = tl.load(interval_starts_ptr + intervals, mask=live, other=0)
    length = tl.load(interval_lengths_ptr + intervals, mask=live, other=0)
    acc = tl.zeros((BLOCK_I, BLOCK_C), dtype=tl.float32)
    for k in range(0, tl.max(length, axis=0)):  # walk all BLOCK_I intervals in step, masking the short ones
        on = k < length
        rd = tl.load(ranks_depth_ptr + start + k, mask=on, other=0)
        rf = tl.load(ranks_feat_ptr + start + k, mask=on, other=0)
        w = tl.load(depth_ptr + rd, mask=on, other=0.0).to(tl.float32)
        f = tl.load(feat_ptr + rf[:, None] * C + channels[None, :], mask=on[:, None] & c_ok[None, :], other=0.0)
        acc += w[:, None] * f.to(tl.float32)
    cell = tl.load(ranks_bev_ptr + start, mask=live, other=0)  # channel-0 offset of the cell in the output
    out = out_ptr + cell[:, None] + channels[None, :] * plane
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=live[:, None] & c_ok[None, :])


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
# at 4 warps). `benchmarks/bev_pool.py --sweep` times the alternatives on a GPU. The interpreter's time grows with
# the number of programs and loop iterations (toolchain notes §4.1); measured on a 2-core CPU, the atomic kernel is
# fastest with the largest block Triton allows (2^20 elements) and BLOCK_C = 16, which divides C = 80 (no masked
# lanes), and the interval kernel with 256 cells per program (bigger blocks wait on their longest cell).
INTERVAL_LAUNCH = {
    "gpu": {"BLOCK_I": 16, "BLOCK_C": 128, "num_warps": 4},
    "interpreter": {"BLOCK_I": 256, "BLOCK_C": 128},
}
ATOMIC_LAUNCH = {
    "gpu": {"BLOCK_N": 64, "BLOCK_C": 128, "num_warps": 4},
    "interpreter": {"BLOCK_N": 65536, "BLOCK_C": 16},
}


def _launch(table: dict[str, dict[str, int]], overrides: dict[str, int], block: str, n: int) -> dict[str, int]:
    """This machine's launch shape with ``overrides``; the ``block`` size no larger than ``n`` items need."""
    cfg = {**table["interpreter" if INTERPRETED else "gpu"], **overrides}
    cfg[block] = min(cfg[block], max(16, triton.next_power_of_2(n)))
    return cfg


def _check_device(t: Tensor) -> None:
    if not INTERPRETED and t.device.type != "cuda":
        raise ValueError(f"compiled Triton kernels need CUDA tensors, got tensors on {t.device}")


def bev_pool_interval(depth: Tensor, feat: Tensor, plan: BevPoolPlan, **launch: int) -> Tensor:
    """BEV ``[1, Z·C, X, Y]`` in the input dtype from the interval kernel; ``launch`` overrides ``INTERVAL_LAUNCH``
    (``BLOCK_I``, ``BLOCK_C``, ``num_warps``). Inputs are checked by ``bevnb.bev_pool``."""
    _check_device(feat)
    plan = plan.to(feat.device)
    cfg = _launch(INTERVAL_LAUNCH, launch, "BLOCK_I", plan.num_intervals)
    out = torch.zeros(plan.output_shape, dtype=feat.dtype, device=feat.device)
    X, Y, _ = plan.grid_size
    C = plan.channels
    grid = (triton.cdiv(plan.num_intervals, cfg["BLOCK_I"]), triton.cdiv(C, cfg["BLOCK_C"]))
    if plan.num_intervals:
        bev_pool_interval_kernel[grid](
            depth.contiguous(),
            feat.contiguous(),
            out,
            plan.ranks_depth,
            plan.ranks_feat,
            plan.ranks_bev,
            plan.interval_starts,
            plan.interval_lengths,
            plan.num_intervals,
            X * Y,
            C=C,
            **cfg,
        )
    return out


def bev_pool_atomic(depth: Tensor, feat: Tensor, plan: BevPoolPlan, **launch: int) -> Tensor:
    """BEV ``[1, Z·C, X, Y]`` in the input dtype from the point-block kernel; ``launch`` overrides ``ATOMIC_LAUNCH``
    (``BLOCK_N``, ``BLOCK_C``, ``num_warps``). Atomics add into an fp32 buffer, cast afterwards for fp16 inputs."""
    _check_device(feat)
    plan = plan.to(feat.device)
    cfg = _launch(ATOMIC_LAUNCH, launch, "BLOCK_N", plan.num_points)
    out = torch.zeros(plan.output_shape, dtype=torch.float32, device=feat.device)
    X, Y, _ = plan.grid_size
    C = plan.channels
    grid = (triton.cdiv(plan.num_points, cfg["BLOCK_N"]), triton.cdiv(C, cfg["BLOCK_C"]))
    if plan.num_points:
        bev_pool_atomic_kernel[grid](
            depth.contiguous(),
            feat.contiguous(),
            out,
            plan.ranks_depth,
            plan.ranks_feat,
            plan.ranks_bev,
            plan.num_points,
            X * Y,
            C=C,
            **cfg,
        )
    return out.to(feat.dtype)
