"""Benchmark every bev_pool backend on the canonical workload, and write the results as JSON.

    python benchmarks/bev_pool.py [--backends torch triton-atomic] [--dtypes float16] [--cell-stride 16] [--sweep]
                                  [--rig RIG.json]
    bevnb bench bevpool [the same options]          (from a checkout: runs this script)

The workload is the plan of ``make_sample("zeros")``'s rig (6 × 118 × 32 × 88 candidate points, C = 80, a 360 × 360
grid), or of another rig file's (``--rig``; its results go to ``build/benchmarks/<rig>/`` unless ``--out`` says). First
the traffic model of every backend on that plan (``bevnb.bevpool.traffic``: the bytes each moves, its store sectors,
atomics and lane utilisation, and the time that traffic needs on an H100 and an H200). Then, for each backend and dtype:
time, bytes moved, effective bandwidth, its fraction of the device's measured copy bandwidth, and peak extra memory;
then time against the number of points. On a GPU, ``--sweep`` also times the Triton kernels' launch shapes.

``run_benchmark(...) -> dict`` measures, ``results_table`` / ``scaling_table`` print, ``write_results`` stores the
JSON as ``benchmarks/results/<device-slug>.json`` (chapter 06 reads them); ``main(argv)`` is the command line.

How each number is taken:

* time: GPU, ``triton.testing.do_bench`` (median, L2 flushed before each call: a cold-cache number); CPU, the
  fastest of ``repeat`` wall-clock calls, the estimate least disturbed by other processes on a shared machine (one
  call for the naive path and the Triton interpreter, which are slow), with the process's CPU time of that call
  (steadier than wall time when other processes share the cores) and the 1-minute load average;
* bytes moved: what any kernel must read and write at least, the model's floor (``traffic.floor_bytes``), the same
  count for every backend, so effective GB/s compares like with like; the model's bytes for the backend itself are
  stored beside it (``model_bytes``);
* copy bandwidth: ``dst.copy_(src)`` of 256 MiB on the same device, read + write bytes over time;
* peak extra memory: GPU, ``torch.cuda.max_memory_allocated`` above the pre-call level; CPU, the process's
  resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) above the pre-call RSS, which
  counts zero-filled pages only once they are touched. Both exclude the output tensor itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from bevnb import Rig, make_sample
from bevnb.bevpool import BACKENDS, bev_pool
from bevnb.bevpool.compare import canonical_inputs, timed_call
from bevnb.bevpool.traffic import BANDWIDTHS, MODELLED, Traffic, floor_bytes, traffic_models, traffic_table
from bevnb.environment import device as default_device
from bevnb.geometry import BevPoolPlan, plan_bev_pool
from bevnb.paths import build_dir
from bevnb.rig import as_rig
from bevnb.tables import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CONCRETE_BACKENDS = tuple(b for b in BACKENDS if b not in ("auto", "triton"))
DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16}
SCALING_STRIDES = (256, 64, 16, 4, 1)  # every k-th BEV cell of the plan: from ~0.4 % of the points to all of them
# The interpreter runs one program instance at a time; above these sizes a backend is skipped on the CPU. The
# cell-tile kernel always is: it visits every cell of the grid, however few points the plan has.
INTERPRETER_MAX_POINTS = {"triton-interval": 120_000, "triton-cells": 0, "triton-atomic": 2_500_000}


def device_name(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3``-style name of a GPU, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """File-name form of the device: ``nvidia-h100-80gb-hbm3``, ``cpu-amd-epyc-2t``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu {device_name(device).split(' (')[0]} {torch.get_num_threads()}t"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def repeated_us(fn: Callable[[], object], device: torch.device, repeat: int = 5) -> float:
    """Microseconds of ``fn()`` over ``repeat`` calls on ``device``: GPU median, CPU minimum (module docstring)."""
    if device.type == "cuda":
        import triton.testing

        return 1e3 * triton.testing.do_bench(fn, warmup=10, rep=max(20, 20 * repeat), return_mode="median")
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e6 * min(times)


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20) -> float:
    """Measured device copy bandwidth in GB/s: (read + write bytes) / time of ``dst.copy_(src)``."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch
    us = repeated_us(lambda: dst.copy_(src), device, repeat=5)
    return 2 * nbytes / us / 1e3


def _rss_kib() -> tuple[int, int]:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def call_measured(fn: Callable[[], Tensor], device: torch.device) -> tuple[Tensor, float, float, int | None]:
    """Call ``fn()`` once: its output, its wall time and this process's CPU time in µs, and the peak memory it needed
    on top of what was allocated before and of its own output (None where that cannot be read)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            before = 1024 * _rss_kib()[0]
        except OSError:
            before = None
    cpu = time.process_time()
    out, seconds = timed_call(fn, device)
    us, cpu_us = 1e6 * seconds, 1e6 * (time.process_time() - cpu)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = None if before is None else 1024 * _rss_kib()[1]
    extra = None if before is None else max(0, peak - before - out.numel() * out.element_size())
    return out, us, cpu_us, extra


def _skip_reason(backend: str, plan: BevPoolPlan, device: torch.device) -> str | None:
    from bevnb.bevpool.triton_kernels import INTERPRETED

    if not backend.startswith("triton"):
        return None
    if not INTERPRETED:
        return None if device.type == "cuda" else "Triton compiles for CUDA here: it cannot run on CPU tensors"
    limit = INTERPRETER_MAX_POINTS[backend]
    if plan.num_points <= limit:
        return None
    return (
        f"Triton interpreter: skipped above {limit:,} points" if limit else "Triton interpreter: skipped (every cell)"
    )


def _repeat(backend: str, device: torch.device, repeat: int) -> int:
    return 1 if device.type == "cpu" and (backend.startswith("triton") or backend == "naive") else repeat


def measure(
    backend: str, plan: BevPoolPlan, depth: Tensor, feat: Tensor, reference: Tensor, copy_gbs: float, repeat: int = 5
) -> dict:
    """One row: µs, GB/s of the floor's bytes, fraction of copy bandwidth, peak extra MB and max |error| against
    ``reference``."""
    device = feat.device
    row = {"backend": backend, "dtype": str(feat.dtype).removeprefix("torch."), "points": plan.num_points}
    reason = _skip_reason(backend, plan, device)
    if reason:
        return {**row, "skipped": reason}
    fn = lambda: bev_pool(depth, feat, plan, backend=backend)
    out, wall, cpu, extra = call_measured(fn, device)  # also the warm-up (compiles on a GPU) and the parity check
    if device.type == "cuda":
        us, cpu_us = repeated_us(fn, device, repeat), None
    else:  # the fastest call, with its CPU time: on a shared machine the CPU time is the steadier number
        n = _repeat(backend, device, repeat)
        us, cpu_us = min([(wall, cpu)] + [call_measured(fn, device)[1:3] for _ in range(n - 1)])
    nbytes = floor_bytes(plan, feat.dtype)
    return {
        **row,
        "us": us,
        "cpu_us": cpu_us,
        "bytes_moved": nbytes,
        "gb_per_s": nbytes / us / 1e3,
        "fraction_of_copy": nbytes / us / 1e3 / copy_gbs,
        "peak_extra_mb": None if extra is None else extra / 1e6,
        "max_abs_err": (out.float() - reference.float()).abs().max().item() if out.numel() else 0.0,
    }


def run_benchmark(
    rig: Rig | str | Path | None = None,
    backends: Sequence[str] = CONCRETE_BACKENDS,
    dtypes: Sequence[str] = ("float32", "float16"),
    device: torch.device | str | None = None,
    repeat: int = 5,
    scaling_strides: Sequence[int] = SCALING_STRIDES,
    cell_stride: int = 1,
    log: Callable[[str], None] = lambda line: None,
) -> dict:
    """Time ``backends`` on the plan of ``rig`` (default: the nuScenes-like rig) for each dtype, then the time
    against the number of points on every ``scaling_strides``-th cell of the plan (first dtype only).

    ``cell_stride > 1`` keeps every k-th cell of the plan only: a quick run, not the canonical workload."""
    from bevnb.bevpool.triton_kernels import INTERPRETED

    unknown = sorted(set(backends) - set(CONCRETE_BACKENDS))
    if unknown or not backends:
        raise ValueError(f"backends must be among {', '.join(CONCRETE_BACKENDS)}; got {', '.join(backends) or 'none'}")
    if set(dtypes) - set(DTYPE_NAMES) or not dtypes:
        raise ValueError(f"dtypes must be among {', '.join(DTYPE_NAMES)}; got {', '.join(dtypes) or 'none'}")
    device = torch.device(device) if device is not None else default_device()
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"device must be cpu or an available cuda device, got {device}")
    wall, cpu = time.perf_counter(), time.process_time()
    rig = as_rig(rig)
    plan = plan_bev_pool(make_sample("zeros", rig=rig), rig.config, use_cache=False)
    plan_s, plan_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    if cell_stride > 1:
        plan = plan.select_intervals(torch.arange(0, plan.num_intervals, cell_stride))
    plan = plan.to(device)
    models = traffic_models(
        plan.to("cpu"), tuple(DTYPE_NAMES[d] for d in dtypes), tuple(b for b in backends if b in MODELLED)
    )
    log(str(traffic_table(models)))
    copy_gbs = copy_bandwidth(device)
    log(f"{device_name(device)}: copy bandwidth {copy_gbs:.1f} GB/s, plan {plan_s:.2f} s")
    results = []
    for name in dtypes:
        depth, feat = canonical_inputs(plan, DTYPE_NAMES[name], device)
        reference = bev_pool(depth, feat, plan, backend="torch")
        for backend in backends:
            model = {(m.backend, m.dtype): m.moved for m in models}.get((backend, name))
            results.append({**measure(backend, plan, depth, feat, reference, copy_gbs, repeat), "model_bytes": model})
            log(_row_text(results[-1]))
    scaling = []
    depth, feat = canonical_inputs(plan, DTYPE_NAMES[dtypes[0]], device)
    for stride in scaling_strides:
        sub = plan.select_intervals(torch.arange(0, plan.num_intervals, stride, device=device))
        reference = bev_pool(depth, feat, sub, backend="torch")
        for backend in backends:
            scaling.append(measure(backend, sub, depth, feat, reference, copy_gbs, repeat))
            log(_row_text(scaling[-1]))
    return {
        "device": {
            "name": device_name(device),
            "slug": device_slug(device),
            "type": device.type,
            "triton": "interpreter" if INTERPRETED else "compiled",
            "torch": torch.__version__,
            "load_average_1min": os.getloadavg()[0] if device.type == "cpu" else None,
        },
        "workload": {
            "rig": rig.name,
            "cameras": plan.num_cameras,
            "depth_bins": plan.depth_bins,
            "feature_size": list(plan.feature_size),
            "channels": plan.channels,
            "grid_size": list(plan.grid_size),
            "output_shape": list(plan.output_shape),
            **{k.replace(" ", "_").replace("%", "pct").replace("/", "_per_"): v for k, v in plan.summary().items()},
            "cell_stride": cell_stride,
            "plan_seconds": plan_s,
            "plan_cpu_seconds": plan_cpu_s,
        },
        "copy_gb_per_s": copy_gbs,
        "traffic_model": [_model_record(m) for m in models],
        "results": results,
        "scaling": scaling,
    }


def _model_record(model: Traffic) -> dict:
    """A traffic model as JSON: its fields, the bytes moved, and the µs they need at each of ``BANDWIDTHS``."""
    us = {name: model.microseconds(bandwidth) for name, bandwidth in BANDWIDTHS.items()}
    return {**dataclasses.asdict(model), "moved": model.moved, "us_at": us}


def sweep_launch(rig: Rig | str | Path | None = None, dtype: str = "float16") -> list[dict]:
    """GPU only: time each Triton kernel over a grid of block sizes and warps on the plan of ``rig`` (default: the
    canonical plan)."""
    from bevnb.bevpool.triton_kernels import INTERPRETED, bev_pool_triton

    if INTERPRETED:
        raise ValueError("the launch sweep needs a CUDA GPU (the interpreter has no block sizes to tune)")
    device = torch.device("cuda")
    rig = as_rig(rig)
    plan = plan_bev_pool(make_sample("zeros", rig=rig), rig.config).to(device)
    depth, feat = canonical_inputs(plan, DTYPE_NAMES[dtype], device)
    rows = []
    for warps in (1, 2, 4, 8):
        for block_c in (16, 32, 128):
            for block in (8, 16, 32, 64, 128):
                cfg = {"BLOCK_C": block_c, "num_warps": warps}
                shapes = {
                    "triton-interval": {"BLOCK_I": block, **cfg},
                    "triton-cells": {"BLOCK_R": block, **cfg},
                    "triton-atomic": {"BLOCK_N": 4 * block, **cfg},
                }
                for kernel, kw in shapes.items():
                    us = repeated_us(lambda k=kernel, kw=kw: bev_pool_triton(k, depth, feat, plan, **kw), device)
                    rows.append({"kernel": kernel, **kw, "us": us})
    return sorted(rows, key=lambda r: r["us"])


def _row_text(row: dict) -> str:
    head = f"{row['backend']:16s} {row['dtype']:8s} {row['points']:>9,} points"
    if "skipped" in row:
        return f"{head}  {row['skipped']}"
    return f"{head}  {row['us']:>12,.1f} µs  {row['gb_per_s']:8.2f} GB/s"


def _us(us: float | None) -> object:
    """µs for a table: whole numbers from 1 ms up, two decimals below, 'n/a' when not measured."""
    if us is None:
        return "n/a"
    return round(us) if us >= 1000 else round(us, 2)


def results_table(result: dict) -> Table:
    """The canonical-workload rows of a ``run_benchmark`` result."""
    rows = []
    for r in result["results"]:
        model = "—" if r.get("model_bytes") is None else r["model_bytes"] / 1e6
        if "skipped" in r:
            rows.append((r["backend"], r["dtype"], r["points"], "—", "—", "—", model, *["—"] * 4, r["skipped"]))
            continue
        peak = "n/a" if r["peak_extra_mb"] is None else r["peak_extra_mb"]
        frac = 100 * r["fraction_of_copy"]
        cols = (_us(r["us"]), _us(r.get("cpu_us")), r["bytes_moved"] / 1e6, model, r["gb_per_s"], frac, peak)
        rows.append((r["backend"], r["dtype"], r["points"], *cols, r["max_abs_err"], ""))
    columns = ("backend", "dtype", "points", "µs", "CPU µs", "floor MB", "model MB", "GB/s of floor", "% of copy")
    columns += ("peak extra MB", "max |err|", "note")
    dev = result["device"]
    title = f"bev_pool on {dev['name']} (Triton {dev['triton']}), copy bandwidth {result['copy_gb_per_s']:.1f} GB/s"
    return Table(rows, columns, title)


def scaling_table(result: dict) -> Table:
    """Time against the number of points, one column per backend (µs; '—' where skipped)."""
    backends = list(dict.fromkeys(r["backend"] for r in result["scaling"]))
    by_points: dict[int, dict[str, object]] = {}
    for r in result["scaling"]:
        by_points.setdefault(r["points"], {})[r["backend"]] = _us(r["us"]) if "us" in r else "—"
    rows = [(p, *(cells.get(b, "—") for b in backends)) for p, cells in sorted(by_points.items())]
    return Table(rows, ("points", *(f"{b} µs" for b in backends)), "bev_pool time against the number of points")


def write_results(result: dict, directory: str | Path = RESULTS_DIR) -> Path:
    """Write ``<directory>/<device-slug>.json`` and return its path."""
    path = Path(directory) / f"{result['device']['slug']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def load_results(directory: str | Path = RESULTS_DIR) -> dict[str, dict]:
    """Every stored result, by device slug."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(directory).glob("*.json"))}


def main(argv: Sequence[str] | None = None) -> int:
    """``bevnb bench bevpool``: run the benchmark, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(prog="bevnb bench bevpool", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(CONCRETE_BACKENDS), metavar="NAME")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"], metavar="DTYPE")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per measurement on the CPU")
    parser.add_argument("--cell-stride", type=int, default=1, help="keep every k-th BEV cell (a quick, smaller run)")
    parser.add_argument("--out", type=Path, help="folder for <device-slug>.json (default: benchmarks/results)")
    parser.add_argument("--sweep", action="store_true", help="GPU only: also time the Triton kernels' launch grid")
    parser.add_argument("--rig", type=Path, help="rig file whose plan to pool (default: data/nuscenes_rig.json)")
    args = parser.parse_args(argv)
    try:
        rig = as_rig(args.rig)
        result = run_benchmark(
            rig,
            backends=args.backends,
            dtypes=args.dtypes,
            device=args.device,
            repeat=args.repeat,
            cell_stride=args.cell_stride,
            log=print,
        )
        if args.sweep:
            result["sweep"] = sweep_launch(rig, dtype=args.dtypes[-1])
    except (ValueError, RuntimeError) as exc:
        print(f"bevnb bench bevpool: {exc}", file=sys.stderr)
        return 2
    print(results_table(result), scaling_table(result), sep="\n\n")
    out = args.out or (RESULTS_DIR if args.rig is None else build_dir("benchmarks", rig.name))
    print(f"\nwrote {write_results(result, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
