"""Backends side by side on the same inputs: parity with the torch reference and the time of one call.

``canonical_inputs(plan, dtype, device)`` gives inputs with the backbone graph's shapes, ``compare_backends`` a table.
The benchmark harness (repeated timings, bandwidth, memory, JSON per device) is ``benchmarks/bev_pool.py`` in the
repository, not part of the package.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..geometry import BevPoolPlan
from ..metrics import compare
from ..tables import Table
from . import bev_pool


def canonical_inputs(
    plan: BevPoolPlan, dtype: torch.dtype, device: torch.device | str, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Backbone-like inputs: depth weights ``[N, D, fH, fW]`` (softmax over D) and features ``[N, fH, fW, C]``
    (standard normal), drawn on the CPU from ``seed`` so every device gets the same numbers."""
    g = torch.Generator().manual_seed(seed)
    fH, fW = plan.feature_size
    depth = torch.randn(plan.num_cameras, plan.depth_bins, fH, fW, generator=g).softmax(dim=1)
    feat = torch.randn(plan.num_cameras, fH, fW, plan.channels, generator=g)
    return depth.to(device, dtype), feat.to(device, dtype)


def timed_call(fn: Callable[[], Tensor], device: torch.device) -> tuple[Tensor, float]:
    """``fn()`` once: its output and its wall time in seconds (the GPU synchronised before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def compare_backends(
    depth: Tensor,
    feat: Tensor,
    plan: BevPoolPlan,
    backends: Sequence[str] = ("naive", "triton-interval", "triton-atomic"),
) -> Table:
    """Each backend against the torch reference on the same inputs: output shape and dtype, wall time of one call
    (the first: on a GPU it includes compiling the kernel), the largest absolute error (``bevnb.metrics.compare``)
    and whether the output is bit-identical."""
    reference = bev_pool(depth, feat, plan, backend="torch")
    rows = []
    for backend in backends:
        out, seconds = timed_call(lambda b=backend: bev_pool(depth, feat, plan, backend=b), feat.device)
        max_abs = compare(reference, out)["max_abs"]
        same = torch.equal(out, reference)
        rows.append((backend, list(out.shape), str(out.dtype), plan.num_points, seconds, max_abs, same))
    columns = ("backend", "output", "dtype", "points", "seconds", "max |err| vs torch", "bit-identical")
    return Table(rows, columns, f"parity with the torch reference on {feat.device}")
