"""bev_pool in plain PyTorch: the reference every other backend is checked against, and MIT's naive path.

Both return the BEV features ``[1, Z·C, X, Y]`` (rows x, columns y) from depth weights ``[N, D, fH, fW]`` and
NHWC features ``[N, fH, fW, C]``, accumulating in fp32 and returning the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..geometry import BevPoolPlan


def _to_output(cells: Tensor, plan: BevPoolPlan) -> Tensor:
    """``[Z·X·Y, C]`` → ``[1, Z·C, X, Y]``: MIT's ``[B, C, Z, X, Y]`` with Z collapsed as ``cat(unbind(dim=2), 1)``."""
    X, Y, Z = plan.grid_size
    return cells.view(Z, X, Y, plan.channels).permute(0, 3, 1, 2).reshape(plan.output_shape)


def bev_pool_reference(depth: Tensor, feat: Tensor, plan: BevPoolPlan, chunk: int = 1 << 18) -> Tensor:
    """Gather ``depth[ranks_depth] * feat[ranks_feat]`` and ``index_add_`` them into their cells, ``chunk`` points at
    a time, so the peak extra memory is ``chunk × C × 4`` bytes instead of the whole outer product."""
    X, Y, Z = plan.grid_size
    C = plan.channels
    out = torch.zeros(Z * X * Y, C, dtype=torch.float32, device=feat.device)
    d, f = depth.reshape(-1), feat.reshape(-1, C)
    cells = plan.point_cells().to(feat.device)  # rows of a cell-major [Z·X·Y, C] buffer
    rd, rf = plan.ranks_depth.to(feat.device).long(), plan.ranks_feat.to(feat.device).long()
    for s in range(0, plan.num_points, chunk):
        e = s + chunk
        out.index_add_(0, cells[s:e], d[rd[s:e]].float()[:, None] * f[rf[s:e]].float())
    return _to_output(out, plan).to(feat.dtype)


def bev_pool_naive(depth: Tensor, feat: Tensor, plan: BevPoolPlan) -> Tensor:
    """MIT's path: materialise the outer product ``[N, D, fH, fW, C]`` (638 MB fp32 for R50), keep the planned
    points, then sum per cell. Slow and memory-hungry on purpose: it is what the split avoids."""
    C = plan.channels
    frustum_features = (depth.float().unsqueeze(-1) * feat.float().unsqueeze(1)).reshape(-1, C)
    X, Y, Z = plan.grid_size
    out = torch.zeros(Z * X * Y, C, dtype=torch.float32, device=feat.device)
    out.index_add_(0, plan.point_cells().to(feat.device), frustum_features[plan.ranks_depth.to(feat.device).long()])
    return _to_output(out, plan).to(feat.dtype)
