"""A traffic-and-work model of each bev_pool backend on a GPU, computed from a plan: how to reason about a kernel
before you have a GPU to time it.

For a plan of P kept points in K cells (intervals), F distinct feature rows, C channels and an output of
O = Z·C·X·Y elements of e bytes, ``traffic(plan, backend, dtype)`` counts:

* **floor**: what any implementation must move at least: two int32 indices per point (``ranks_depth``,
  ``ranks_feat``), three per interval (start, length, cell), each kept depth weight and each used feature row once,
  and the whole output written once: ``4·(2P + 3K) + e·(P + F·C + O)`` bytes;
* **moved**: the DRAM bytes of the backend as implemented, pass by pass. Each pass (a Triton launch or a PyTorch op)
  reads its inputs and writes its outputs once; inside a pass, a gather reads at most its whole source once (the
  feature table that every point of a row re-reads, 2.7 MB in fp16, stays in L2), and each channel block of a Triton
  grid reads the indices again. Zero-fill passes, fp32 staging buffers and casts count in full. The PyTorch backends
  are counted from the ATen ops they actually dispatch (run on ``meta`` tensors, so nothing is computed); the
  Triton kernels from their launch (``triton_kernels.LAUNCHERS``, GPU shapes);
* **store sectors**: 32-byte sectors the output stores touch, the unit L2 serves: an element stored alone (as the
  interval kernel stores, one channel per lane, ``X·Y`` elements apart; see the PTX in ``bevpool.compiled``) costs a
  whole sector, a contiguous run costs its length in sectors;
* **atomics**: atomic adds issued (one per element added; ``index_add_`` is atomic on a GPU);
* **lane utilisation**: for kernels whose programs walk their rows in step up to the longest one, the share of
  lanes × steps that add a point (``block_utilisation``);
* **µs at a bandwidth**: moved bytes over a DRAM bandwidth (``BANDWIDTHS``): the time that traffic needs at least.

It is a model: caches, overlap and latency are left out, and only a GPU measures the time.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..geometry import BevPoolPlan
from ..tables import Table
from .reference import bev_pool_naive, bev_pool_reference

BANDWIDTHS = {"H100": 3.35e12, "H200": 4.8e12}
"""Peak DRAM bandwidth in bytes/s from NVIDIA's data sheets: H100 SXM (HBM3), H200 (HBM3e)."""
MODELLED = ("torch", "naive", "triton-interval", "triton-cells", "triton-atomic")
SECTOR = 32


@dataclass(frozen=True)
class Traffic:
    """The model's numbers for one backend and dtype on one plan (see the module docstring)."""

    backend: str
    dtype: str
    floor: int
    passes: dict[str, int] = field(default_factory=dict)
    store_sectors: int = 0
    atomics: int = 0
    lane_utilisation: float | None = None
    longest_walk: int | None = None

    @property
    def moved(self) -> int:
        """DRAM bytes of all passes."""
        return sum(self.passes.values())

    def microseconds(self, bandwidth: float) -> float:
        """The time ``moved`` bytes need at ``bandwidth`` bytes/s."""
        return 1e6 * self.moved / bandwidth


def floor_bytes(plan: BevPoolPlan, dtype: torch.dtype) -> int:
    """The least a bev_pool call must move (see the module docstring)."""
    X, Y, Z = plan.grid_size
    indices = 4 * (2 * plan.num_points + 3 * plan.num_intervals)
    return indices + sum(gathered_bytes(plan, dtype)) + _size(dtype) * Z * plan.channels * X * Y


def gathered_bytes(plan: BevPoolPlan, dtype: torch.dtype) -> tuple[int, int]:
    """DRAM bytes of the depth weights and of the feature rows the plan reads, each read once: the 32-byte sectors
    that hold a kept weight or a used row (DRAM moves whole sectors)."""
    e = _size(dtype)
    fH, fW = plan.feature_size
    weights = plan.num_cameras * plan.depth_bins * fH * fW
    kept = torch.bincount(plan.ranks_depth.long(), minlength=weights) > 0
    used = torch.bincount(plan.ranks_feat.long(), minlength=plan.num_cameras * fH * fW) > 0
    return _sector_bytes(kept, e), _sector_bytes(used, e * plan.channels)


def _sector_bytes(used: Tensor, item_bytes: int) -> int:
    """Bytes of the 32-byte sectors holding a used item of an array of ``used [n]`` items of ``item_bytes`` each."""
    per_byte = used.repeat_interleave(item_bytes)
    per_byte = torch.nn.functional.pad(per_byte, (0, -per_byte.numel() % SECTOR))
    return SECTOR * int(per_byte.view(-1, SECTOR).any(1).sum())


def block_utilisation(lengths: Tensor, block: int) -> float:
    """Share of lanes × steps doing work when blocks of ``block`` consecutive rows of ``lengths [..., n]`` each walk
    in step up to their longest row (the last block of each leading index padded with idle lanes); 1.0 if no row
    has work."""
    lengths = lengths.long().reshape(-1, lengths.shape[-1])
    padded = torch.nn.functional.pad(lengths, (0, -lengths.shape[-1] % block))
    issued = block * padded.view(padded.shape[0], -1, block).amax(-1).sum().item()
    return lengths.sum().item() / issued if issued else 1.0


def traffic(plan: BevPoolPlan, backend: str, dtype: torch.dtype) -> Traffic:
    """The model of ``backend`` (one of ``MODELLED``) pooling ``plan`` in ``dtype`` on a GPU."""
    if backend not in MODELLED:
        raise ValueError(f"no traffic model for backend {backend!r}; choose one of {', '.join(MODELLED)}")
    floor = floor_bytes(plan, dtype)
    name = str(dtype).removeprefix("torch.")
    if backend in ("torch", "naive"):
        return Traffic(backend, name, floor, **_eager(plan, backend, dtype))
    return Traffic(backend, name, floor, **_triton(plan, backend, dtype))


def traffic_models(
    plan: BevPoolPlan, dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.float32), backends: tuple = MODELLED
) -> list[Traffic]:
    """``traffic(plan, backend, dtype)`` for every dtype, then every backend."""
    return [traffic(plan, backend, dtype) for dtype in dtypes for backend in backends]


def traffic_table(models: list[Traffic]) -> Table:
    """The models as a table: MB moved and against the floor, store sectors, atomics, lane utilisation, the longest
    walk, and the µs each implies at every ``BANDWIDTHS`` entry; a floor row heads each dtype."""
    rows = []
    for dtype in dict.fromkeys(m.dtype for m in models):
        mine = [m for m in models if m.dtype == dtype]
        floor = mine[0].floor
        rows.append(("floor", dtype, floor / 1e6, 1.0, *["—"] * 4, *_times(floor)))
        for m in mine:
            lanes = "—" if m.lane_utilisation is None else round(100 * m.lane_utilisation, 1)
            walk = "—" if m.longest_walk is None else m.longest_walk
            counts = (m.store_sectors / 1e6, m.atomics / 1e6, lanes, walk)
            rows.append((m.backend, m.dtype, m.moved / 1e6, m.moved / floor, *counts, *_times(m.moved)))
    columns = ("backend", "dtype", "MB moved", "× floor", "store sectors (M)", "atomics (M)", "lanes busy %")
    columns += ("longest walk", *(f"µs at {name}" for name in BANDWIDTHS))
    return Table(rows, columns, "bev_pool traffic model, per call on a GPU: DRAM bytes and the time they need")


def _times(nbytes: int) -> list[float]:
    return [round(1e6 * nbytes / bw, 1) for bw in BANDWIDTHS.values()]


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _triton(plan: BevPoolPlan, backend: str, dtype: torch.dtype) -> dict:
    """Passes, sectors, atomics and lanes of a Triton backend's GPU launch on ``plan``."""
    from .triton_kernels import LAUNCHERS  # imports triton

    e, C, P, K = _size(dtype), plan.channels, plan.num_points, plan.num_intervals
    X, Y, Z = plan.grid_size
    out = Z * C * X * Y
    fH, fW = plan.feature_size
    depth = torch.empty(plan.num_cameras, plan.depth_bins, fH, fW, dtype=dtype, device="meta")
    feat = torch.empty(plan.num_cameras, fH, fW, C, dtype=dtype, device="meta")
    launch = LAUNCHERS[backend](depth, feat, plan.to("meta"), machine="gpu")
    weights, features = gathered_bytes(plan, dtype)
    per_block = weights + 8 * P  # depth weights and two int32 indices per point, read by each channel block
    channel_blocks = -(-C // launch.args["BLOCK_C"])
    lengths = plan.interval_lengths
    if backend == "triton-interval":
        walked = lengths[plan.interval_order.long()]
        reads = channel_blocks * (per_block + 16 * K) + features  # order, start, length and cell per interval
        return {
            "passes": {"zero-fill": e * out, "kernel reads": reads, "kernel writes": e * K * C},
            "store_sectors": out * e // SECTOR + K * C,  # the zero-fill streams; each stored element is its own sector
            "lane_utilisation": block_utilisation(walked, launch.args["BLOCK_I"]),
            "longest_walk": int(lengths.max()) if K else 0,
        }
    if backend == "triton-cells":
        block_r = launch.args["BLOCK_R"]
        reads = channel_blocks * (per_block + 4 * (Z * X * Y + 1)) + features  # CSR offsets of every cell
        cells = plan.cell_offsets.diff().view(Z, X * Y)
        return {
            "passes": {"kernel reads": reads, "kernel writes": e * out},
            "store_sectors": _run_sectors(Z, C, X * Y, block_r, e),
            "lane_utilisation": block_utilisation(cells, block_r),
            "longest_walk": int(lengths.max()) if K else 0,
        }
    reads = channel_blocks * (per_block + 4 * P) + features  # plus the cell of every point
    passes = {"zero-fill (fp32)": 4 * out, "kernel reads": reads, "atomic adds (fp32 cells)": 2 * 4 * K * C}
    if e != 4:
        passes["cast to " + str(dtype).removeprefix("torch.")] = 4 * out + e * out
    block_n = launch.args["BLOCK_N"]
    return {
        "passes": passes,
        "store_sectors": 4 * out // SECTOR + P * C + (e * out // SECTOR if e != 4 else 0),
        "atomics": P * C,
        "lane_utilisation": P / (-(-P // block_n) * block_n) if P else 1.0,
        "longest_walk": 1,
    }


def _run_sectors(Z: int, C: int, plane: int, block: int, e: int) -> int:
    """Sectors the cell-tile kernel's stores touch: per z-slice, channel and tile, its run of ``block`` consecutive
    cells (shorter at the end of a slice), from byte ``e·(z·C·plane + c·plane + r0)``."""
    r0 = torch.arange(0, plane, block)
    r1 = torch.clamp(r0 + block, max=plane)
    base = (torch.arange(Z * C) * plane)[:, None]
    first, last = e * (base + r0), e * (base + r1) - 1
    return int((last // SECTOR - first // SECTOR + 1).sum())


class _CountTraffic(TorchDispatchMode):
    """Counts, per ATen op, the bytes each dispatched op reads and writes, its store sectors and atomics."""

    def __init__(self) -> None:
        super().__init__()
        self.passes: dict[str, int] = defaultdict(int)
        self.store_sectors = 0
        self.atomics = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        schema = func._schema
        if schema.returns and schema.returns[0].alias_info is not None and not schema.returns[0].alias_info.is_write:
            return out  # a view: nothing moves
        ins = [a for a in tree_leaves((args, kwargs)) if isinstance(a, Tensor)]
        outs = [o for o in tree_leaves(out) if isinstance(o, Tensor)]
        op = str(func.overloadpacket)
        if op == "aten.index_add_":  # dest.index_add_(0, index, source): read-modify-write of the rows it adds into
            dest, index, source = ins
            rows = min(index.numel(), dest.shape[0]) * _nbytes(dest) // dest.shape[0]
            self.passes[op] += _nbytes(index) + _nbytes(source) + 2 * rows
            row_bytes = _nbytes(source) // max(1, source.shape[0])
            self.store_sectors += index.numel() * -(-row_bytes // SECTOR)
            self.atomics += source.numel()
            return out
        if op == "aten.index":  # a gather reads the index and at most its whole source once
            source, index = ins[0], ins[1:]
            read = sum(map(_nbytes, index)) + min(_nbytes(source), sum(map(_nbytes, outs)))
        elif op == "aten.empty":
            return out
        else:
            read = sum(map(_nbytes, ins))
        written = sum(map(_nbytes, outs))
        self.passes[op] += read + written
        self.store_sectors += -(-written // SECTOR)
        return out


def _eager(plan: BevPoolPlan, backend: str, dtype: torch.dtype) -> dict:
    """Passes, sectors and atomics of a PyTorch backend, from the ops it dispatches on ``meta`` tensors."""
    fH, fW = plan.feature_size
    depth = torch.empty(plan.num_cameras, plan.depth_bins, fH, fW, dtype=dtype, device="meta")
    feat = torch.empty(plan.num_cameras, fH, fW, plan.channels, dtype=dtype, device="meta")
    pool = bev_pool_reference if backend == "torch" else bev_pool_naive
    meta_plan = plan.to("meta")
    with _CountTraffic() as counted:
        pool(depth, feat, meta_plan)
    return {"passes": dict(counted.passes), "store_sectors": counted.store_sectors, "atomics": counted.atomics}
