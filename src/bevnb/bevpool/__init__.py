"""bev_pool: depth-weighted sum of camera features into BEV cells, over a precomputed plan.

``bev_pool(depth [N, D, fH, fW], feat [N, fH, fW, C], plan)`` → ``[1, Z·C, X, Y]`` (``[1, 80, 360, 360]`` for R50),
taking the backbone graph's two outputs exactly as they come. Backends:

* ``"torch"``: gather and ``index_add_`` in chunks (the reference every other backend is checked against);
* ``"naive"``: MIT's path, the 638 MB outer product first, then the pool (what the split avoids);
* ``"triton-interval"``: one Triton program per block of BEV cells of similar length, no atomics (CUDA-BEVFusion's
  scheme);
* ``"triton-cells"``: one Triton program per tile of the output in memory order: every element written once, with
  contiguous stores and no zero-fill pass;
* ``"triton-atomic"``: one Triton program per block of points, atomic adds into the cells;
* ``"triton"``: the better Triton kernel for this machine: interval on a GPU, atomic in the CPU interpreter, where
  big point blocks mean few programs;
* ``"auto"`` (default): ``"triton"`` on a GPU, ``"torch"`` on a CPU (faster than any kernel in the interpreter).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..geometry import BevPoolPlan
from .reference import bev_pool_naive, bev_pool_reference

# Triton reads TRITON_INTERPRET when it is imported; decide here, on `import bevnb`, before anything imports it. A
# TRITON_INTERPRET=0 set by the caller is kept: kernels then compile for a GPU (what `bevpool.compiled` does on a CPU).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

BACKENDS = ("auto", "torch", "naive", "triton", "triton-interval", "triton-cells", "triton-atomic")
DTYPES = (torch.float16, torch.float32)


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend that ``backend`` (``"auto"``, ``"triton"`` or a concrete name) means on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown bev_pool backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    on_gpu = torch.device(device).type == "cuda"
    if backend == "auto":
        return "triton-interval" if on_gpu else "torch"
    if backend == "triton":
        return "triton-interval" if on_gpu else "triton-atomic"
    return backend


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
    if depth.dtype != feat.dtype or feat.dtype not in DTYPES:
        raise ValueError(f"depth and features must both be float16 or float32, got {depth.dtype} and {feat.dtype}")


def bev_pool(depth: Tensor, feat: Tensor, plan: BevPoolPlan, backend: str = "auto") -> Tensor:
    """Pool into BEV ``[1, Z·C, X, Y]`` with the chosen backend (see ``BACKENDS``).

    Every backend accumulates in fp32 and returns the input dtype (fp16 in, fp16 out, like CUDA-BEVFusion). A plan
    on another device is copied to the inputs' device on every call: on a GPU, move it once with ``plan.to("cuda")``.
    """
    check_inputs(depth, feat, plan)
    backend = resolve_backend(backend, feat.device)
    if backend == "torch":
        return bev_pool_reference(depth, feat, plan)
    if backend == "naive":
        return bev_pool_naive(depth, feat, plan)
    from .triton_kernels import bev_pool_triton  # imports triton; only when a kernel is asked for

    return bev_pool_triton(backend, depth, feat, plan)
