"""bev_pool: depth-weighted sum of camera features into BEV cells, over a precomputed plan.

``bev_pool(depth [N, D, fH, fW], feat [N, fH, fW, C], plan)`` → ``[1, Z·C, X, Y]`` (``[1, 80, 360, 360]`` for R50),
taking the backbone graph's two outputs exactly as they come.
"""

from __future__ import annotations

from torch import Tensor

from ..geometry import BevPoolPlan
from .reference import bev_pool_naive, bev_pool_reference

BACKENDS = ("torch", "naive")


def check_inputs(depth: Tensor, feat: Tensor, plan: BevPoolPlan) -> None:
    """Raise a one-line ValueError when the tensors do not match the plan."""
    fH, fW = plan.feature_size
    want_depth = (plan.num_cameras, plan.depth_bins, fH, fW)
    want_feat = (plan.num_cameras, fH, fW, plan.channels)
    if tuple(depth.shape) != want_depth:
        raise ValueError(f"depth weights must be [N, D, fH, fW] = {list(want_depth)}, got {list(depth.shape)}")
    if tuple(feat.shape) != want_feat:
        raise ValueError(f"features must be NHWC [N, fH, fW, C] = {list(want_feat)}, got {list(feat.shape)}")
    if depth.device != feat.device:
        raise ValueError(f"depth is on {depth.device} but features are on {feat.device}")


def bev_pool(depth: Tensor, feat: Tensor, plan: BevPoolPlan, backend: str = "torch") -> Tensor:
    """Pool into BEV ``[1, Z·C, X, Y]`` fp32 with the chosen backend (see ``BACKENDS``)."""
    check_inputs(depth, feat, plan)
    if backend == "torch":
        return bev_pool_reference(depth, feat, plan)
    if backend == "naive":
        return bev_pool_naive(depth, feat, plan)
    raise ValueError(f"unknown bev_pool backend {backend!r}; choose one of {', '.join(BACKENDS)}")
