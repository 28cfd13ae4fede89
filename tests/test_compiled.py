"""Every Triton kernel of the package compiles for real GPUs on this CPU-only machine, without register spills."""

from __future__ import annotations

import inspect

import torch
import triton

from bevnb.bevpool import compiled, triton_kernels
from bevnb.data import make_sample
from bevnb.geometry import plan_bev_pool


def test_every_kernel_compiles_for_gpus_without_spilling(capsys):
    rows = compiled.compile_report(plan_bev_pool(make_sample("zeros")))
    with capsys.disabled():
        print("\n" + str(compiled.compile_table(rows)))
    kernels = {
        name
        for name, fn in inspect.getmembers(triton_kernels)
        if isinstance(fn, triton.runtime.JITFunction | triton.runtime.interpreter.InterpretedFunction)
        and name.endswith("_kernel")
    }
    assert kernels == {"bev_pool_interval_kernel", "bev_pool_cells_kernel", "bev_pool_atomic_kernel"}
    assert {r["kernel"] for r in rows} == kernels
    targets = {r["target"] for r in rows}
    assert {"sm_80", "sm_90a"} <= targets
    assert len(rows) == len(kernels) * len(compiled.DTYPES) * len(targets)
    assert [r for r in rows if r["spill_bytes"]] == []
    assert all(0 < r["registers"] <= 255 for r in rows)
    # The launch shapes are the package's GPU ones, and the stores are what the traffic model assumes.
    for r in rows:
        table = {"triton-interval": "INTERVAL_LAUNCH", "triton-cells": "CELLS_LAUNCH", "triton-atomic": "ATOMIC_LAUNCH"}
        shape = getattr(triton_kernels, table[r["backend"]])["gpu"]
        assert r["launch"] == " ".join(f"{k}={v}" for k, v in shape.items())
        if r["backend"] == "triton-interval":
            assert (
                r["stores"] == f"16× st.global.b{8 * torch.empty((), dtype=getattr(torch, r['dtype'])).element_size()}"
            )
        if r["backend"] == "triton-cells":
            assert r["stores"].endswith("× st.global.v4.b32")  # 16-byte contiguous stores
        if r["backend"] == "triton-atomic":
            assert "red.global" in r["stores"] and "st.global" not in r["stores"]
