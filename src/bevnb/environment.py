"""What this machine runs bevnb with: versions, CPU/GPU, and how Triton kernels will execute."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

from .tables import Table

PACKAGES = ("torch", "onnx", "onnxruntime", "onnxsim", "pytorch-quantization", "triton", "netron", "matplotlib")


def device() -> torch.device:
    """The CUDA device when there is one, else the CPU (d2l's ``try_gpu``)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def triton_mode() -> str:
    """How ``@triton.jit`` kernels run here: compiled for the GPU, or Triton's CPU interpreter."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "interpreter (TRITON_INTERPRET=1): numpy on the CPU, one program instance at a time"
    return "compiled for CUDA" if torch.cuda.is_available() else "unavailable (no GPU and TRITON_INTERPRET unset)"


def environment_report() -> Table:
    """Python, package versions, CPU and GPU, ONNX Runtime providers, Triton mode."""
    rows = [("python", platform.python_version())]
    for name in PACKAGES:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    rows.append(("CPU", f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    rows.append(("GPU", gpu))
    try:
        import onnxruntime

        rows.append(("onnxruntime providers", ", ".join(onnxruntime.get_available_providers())))
    except ImportError:
        pass
    rows.append(("triton kernels run", triton_mode()))
    return Table(rows, ("component", "version / state"), title="bevnb environment")
