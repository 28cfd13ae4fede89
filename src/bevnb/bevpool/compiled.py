"""What the compiler makes of bevnb's Triton kernels for a GPU, learnt on a machine without one.

``compile_report(plan)`` compiles every kernel of ``triton_kernels.LAUNCHERS`` ahead of time, for each GPU target
and dtype, at the launch shapes the package uses on a GPU for ``plan`` (the block sizes of ``INTERVAL_LAUNCH["gpu"]``
and friends, and the argument specialisations Triton's JIT would apply at that launch: 16-byte aligned pointers,
integers divisible by 16), and returns one row per kernel, target and dtype: registers per thread, spill bytes,
shared memory per program and the global stores each thread issues. Registers and spills come from ``ptxas -v`` on
the emitted PTX (the ptxas Triton ships and uses, same architecture), shared memory from Triton's own metadata, the
stores from the PTX (``st.global.b16``: one 2-byte element; ``st.global.v4.b32``: 16 contiguous bytes;
``red.global…add.f32``: an atomic add).

Triton compiles only when ``TRITON_INTERPRET`` is off at import, and ``import bevnb`` turns it on without CUDA, so
the compile runs in a child process started with ``TRITON_INTERPRET=0`` (``python -m bevnb.bevpool.compiled``),
which needs no GPU, only the plan's sizes. ``compile_table`` prints the rows.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..geometry import BevPoolPlan
from ..tables import Table

if TYPE_CHECKING:
    from .triton_kernels import KernelLaunch

TARGETS = (80, 90, 100)
"""Compute capabilities: A100 (sm_80), H100/H200 (sm_90a), B200 (sm_100a, when the installed ptxas knows it)."""
DTYPES = ("float16", "float32")


def compile_report(
    plan: BevPoolPlan, targets: tuple[int, ...] = TARGETS, dtypes: tuple[str, ...] = DTYPES
) -> list[dict]:
    """Compile every Triton kernel for ``targets`` × ``dtypes`` at ``plan``'s GPU launch shapes, in a child process;
    rows of kernel, backend, dtype, target, launch shape, registers, spill bytes, shared memory and stores.

    Raises RuntimeError with the compiler's message when a kernel does not compile."""
    X, Y, Z = plan.grid_size
    sizes = {
        "points": plan.num_points,
        "intervals": plan.num_intervals,
        "num_cameras": plan.num_cameras,
        "depth_bins": plan.depth_bins,
        "feature_size": list(plan.feature_size),
        "channels": plan.channels,
        "grid_size": [X, Y, Z],
    }
    request = json.dumps({"sizes": sizes, "targets": list(targets), "dtypes": list(dtypes)})
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the bevnb package
    env = {
        **os.environ,
        "TRITON_INTERPRET": "0",
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.run(
        [sys.executable, "-m", "bevnb.bevpool.compiled"], input=request, capture_output=True, text=True, env=env
    )
    if child.returncode != 0:
        raise RuntimeError(f"compiling the Triton kernels failed:\n{child.stderr.strip()[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def compile_table(rows: list[dict]) -> Table:
    """The rows of ``compile_report`` as a table."""
    columns = ("kernel", "dtype", "target", "launch", "registers", "spill bytes", "shared memory (B)", "stores")
    keys = ("kernel", "dtype", "target", "launch", "registers", "spill_bytes", "shared_bytes", "stores")
    title = "Triton kernels compiled ahead of time: per thread registers, spills and global stores; shared memory"
    return Table([tuple(r[k] for k in keys) for r in rows], columns, title)


def _shaped_plan(sizes: dict) -> BevPoolPlan:
    """A plan with ``sizes``' array lengths and meta data and uninitialised contents: all a compile needs."""
    X, Y, Z = sizes["grid_size"]
    P, K = sizes["points"], sizes["intervals"]

    def i32(n: int) -> torch.Tensor:
        return torch.empty(n, dtype=torch.int32)

    return BevPoolPlan(
        ranks_depth=i32(P),
        ranks_feat=i32(P),
        ranks_bev=i32(P),
        interval_starts=i32(K),
        interval_lengths=i32(K),
        interval_order=i32(K),
        cell_offsets=i32(Z * X * Y + 1),
        num_cameras=sizes["num_cameras"],
        depth_bins=sizes["depth_bins"],
        feature_size=tuple(sizes["feature_size"]),
        channels=sizes["channels"],
        grid_size=(X, Y, Z),
    )


def _ptxas_report(ptx: str, capability: int) -> dict[str, int]:
    """Registers and spill bytes of a kernel's PTX from ``ptxas -v`` for ``capability``."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        command = [get_ptxas(capability).path, "-v", f"--gpu-name={sm_arch_from_capability(capability)}"]
        done = subprocess.run([*command, str(source), "-o", str(Path(tmp) / "kernel.cubin")], capture_output=True)
    log = done.stderr.decode()
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed for sm_{capability}: {log.strip()}")
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {
        "registers": int(re.search(r"Used (\d+) registers", log).group(1)),
        "spill_bytes": sum(map(int, spills.groups())),
    }


@functools.cache
def _knows(capability: int) -> bool:
    """Whether the ptxas Triton uses for ``capability`` can build it (sm_100 needs CUDA 12.8 or newer)."""
    from triton.backends.nvidia.compiler import get_ptxas

    release = re.search(
        r"release (\d+)\.(\d+)",
        subprocess.run([get_ptxas(capability).path, "--version"], capture_output=True, text=True).stdout,
    )
    return capability < 100 or tuple(map(int, release.groups())) >= (12, 8)


def _stores(ptx: str) -> str:
    """The global store and atomic instructions of a kernel's PTX, counted: ``16× st.global.b16``."""
    found = re.findall(r"\b((?:st|red|atom)\.global[\w.]*)", ptx)
    return ", ".join(f"{found.count(op)}× {op}" for op in dict.fromkeys(found))


def _compile(launch: KernelLaunch, capability: int) -> dict:
    """Compile one ``KernelLaunch`` for ``capability`` as the JIT would at that launch; its resource usage."""
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend

    kernel = launch.kernel
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(kernel.params):
        value = launch.args[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
            continue
        kind, spec = native_specialize_impl(CUDABackend, value, False, True, True)  # what the JIT's binder does
        signature[param.name] = kind
        if kind == "constexpr":  # an integer equal to 1
            constexprs[param.name] = spec
        else:
            attrs[(i,)] = CUDABackend.parse_attr(spec)
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=launch.options)
    ptx = compiled.asm["ptx"]
    return {**_ptxas_report(ptx, capability), "shared_bytes": compiled.metadata.shared, "stores": _stores(ptx)}


def _compile_all(sizes: dict, targets: list[int], dtypes: list[str]) -> list[dict]:
    """Every kernel × dtype × known target at the GPU launch shapes of a plan of ``sizes`` (child process only)."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    from .triton_kernels import INTERPRETED, LAUNCHERS

    if INTERPRETED:
        raise RuntimeError("Triton is in interpreter mode: start this with TRITON_INTERPRET=0")
    plan = _shaped_plan(sizes)
    fH, fW = plan.feature_size
    rows = []
    for backend, launcher in LAUNCHERS.items():
        for dtype in dtypes:
            depth = torch.empty(plan.num_cameras, plan.depth_bins, fH, fW, dtype=getattr(torch, dtype))
            feat = torch.empty(plan.num_cameras, fH, fW, plan.channels, dtype=depth.dtype)
            launch = launcher(depth, feat, plan, machine="gpu")
            blocks = {k: v for k, v in launch.args.items() if k.startswith("BLOCK_")}
            shape = " ".join(f"{k}={v}" for k, v in {**blocks, **launch.options}.items())
            for capability in filter(_knows, targets):
                row = {"kernel": launch.kernel.__name__, "backend": backend, "dtype": dtype, "launch": shape}
                rows.append({**row, "target": sm_arch_from_capability(capability), **_compile(launch, capability)})
    return rows


if __name__ == "__main__":
    request = json.loads(sys.stdin.read())
    print(json.dumps(_compile_all(request["sizes"], request["targets"], request["dtypes"])))
