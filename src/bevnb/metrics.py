"""How close two tensors are: the numbers every parity and accuracy table in bevnb reports."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def compare(reference: Tensor, test: Tensor) -> dict[str, float]:
    """Compare ``test`` against ``reference`` (same shape), in float64:

    * ``max_abs``: max |test - reference|;
    * ``rel``: max_abs / max |reference| — error relative to the output scale;
    * ``cosine``: cosine similarity of the flattened tensors;
    * ``sqnr_db``: 10·log10(Σ reference² / Σ (test - reference)²), the signal-to-quantization-noise ratio
      (inf when equal).
    """
    if reference.shape != test.shape:
        raise ValueError(f"cannot compare shapes {list(reference.shape)} and {list(test.shape)}")
    ref = torch.as_tensor(reference).detach().double().flatten()
    out = torch.as_tensor(test).detach().double().flatten()
    err = out - ref
    scale = ref.abs().max().item() if ref.numel() else 0.0
    signal, noise = ref.square().sum().item(), err.square().sum().item()
    norms = ref.norm().item() * out.norm().item()
    if noise == 0:
        sqnr = math.inf
    elif signal == 0:
        sqnr = -math.inf
    else:
        sqnr = 10 * math.log10(signal / noise)
    return {
        "max_abs": err.abs().max().item() if err.numel() else 0.0,
        "rel": err.abs().max().item() / scale if scale > 0 else 0.0,
        "cosine": (ref @ out).item() / norms if norms > 0 else 1.0,
        "sqnr_db": sqnr,
    }
