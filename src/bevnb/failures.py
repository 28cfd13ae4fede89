"""The int8 and fp16 failures users report, made on purpose on a camera branch, each beside its fix.

Chapter 13 runs each through ``diagnosis`` against the float graphs and counts the boxes it costs:

* **calibrated on the export sample** (``calibrated_on_export_sample``): chapter 02's all-zero sample, the one at hand
  when the int8 export is written; every activation it shows the calibrator is what the biases alone make
  (Lidar_AI_Solution #348, #252). Fix: calibrate on the rig's frames (chapter 04).
* **calibrated on another rig's frames**: ``quant.calibrate`` on ``quant.synthetic_inputs(n, rig=other)``, no code of
  its own here. Fix: the deployed rig's frames.
* **a Concat whose inputs do not share one scale** (``concat_scales_unshared``): each neck Concat's upsampled input
  quantized by a quantizer of its own, as a toolkit without CUDA-BEVFusion's sharing rule leaves it. In Q/DQ
  arithmetic each input is still quantized to its own range; what TensorRT loses is the concat in int8 (it must
  requantize one input). ``diagnosis.unshared_scales`` finds such nodes in any graph. Fix: ``quant.share_quantizers``'s
  rule (``QuantConcat``: one quantizer for both inputs).
* **an fp16 overflow** (``features_scaled``): the depth net's feature channels ×``factor`` and the vtransform's
  first conv ÷``factor``. In fp32 the network is the same (both layers are linear there), but bev_pool sums many
  feature pixels into one cell, and ``factor`` times those sums pass float16's 65504: the cell becomes inf, and the
  boxes read from it NaN or nothing (Lidar_AI_Solution #149, #193). Fix: the same rescale the other way, by a power
  of two (``fp16_rescale``) chosen from the peak the diagnosis measured.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from . import quant
from .data import make_sample
from .model import CameraBranch
from .rig import Rig

FP16_MAX = 65504.0  # float16's largest finite value
FP16_HEADROOM = 64.0  # the peak ``fp16_rescale`` aims below: FP16_MAX / FP16_HEADROOM


def calibrated_on_export_sample(model: CameraBranch, rig: Rig) -> CameraBranch:
    """A copy of the float ``model``, quantized (``quant.quantize_camera``) and calibrated (MSE) on ``rig``'s export
    sample (``make_sample("zeros")``: images, depth and matrices all zero)."""
    zeros = quant.quantize_camera(copy.deepcopy(model))
    sample = make_sample("zeros", rig=rig)
    quant.calibrate(zeros, [quant.backbone_inputs(sample, model.config)], "mse", progress=False)
    return zeros


class UnsharedConcat(nn.Module):
    """``cat([lateral, upsampled], dim=1)`` with a quantizer per input: ``_input_quantizer`` (the lateral's, shared
    with the backbone block that reads the same tensor) and ``_upsampled_quantizer`` of its own."""

    def __init__(self, shared: quant.TensorQuantizer) -> None:
        super().__init__()
        self._input_quantizer = shared
        self._upsampled_quantizer = quant.activation_quantizer()

    def forward(self, tensors: list[Tensor]) -> Tensor:
        lateral, upsampled = tensors
        return torch.cat([self._input_quantizer(lateral), self._upsampled_quantizer(upsampled)], dim=1)


def concat_scales_unshared(model: CameraBranch) -> CameraBranch:
    """In place, on a ``quant.quantize_camera`` model before calibration: both neck Concats (``quant_concat0``,
    ``quant_concat1``) become ``UnsharedConcat`` (two scales per Concat); returns the model."""
    if quant.is_calibrated(model) or not quant.is_quantized(model):
        raise ValueError("unshare the Concat scales of a quantized model before calibrating it")
    for name in ("quant_concat0", "quant_concat1"):
        setattr(model.neck, name, UnsharedConcat(getattr(model.neck, name)._input_quantizer))
    return model


@torch.no_grad()
def features_scaled(model: CameraBranch, factor: float) -> CameraBranch:
    """A copy of the float ``model`` whose ``camera_feature`` ``[N, fH, fW, C]`` is ``factor`` times larger (the depth
    net's last conv: its C feature rows and biases) and whose vtransform's first conv weights are ``factor`` times
    smaller (``vtransform.downsample[0]``, no bias, read by its BatchNorm): the same network in exact arithmetic,
    with a BEV ``[1, C, X, Y]`` ``factor`` times larger in between."""
    if quant.is_quantized(model):
        raise ValueError("rescale the float camera branch, before quantizing it")
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"the rescale factor must be finite and positive, got {factor}")
    scaled = copy.deepcopy(model)
    D = model.config.depth_bins
    last = scaled.vtransform.depthnet[-1]
    last.weight[D:] *= factor
    last.bias[D:] *= factor
    scaled.vtransform.downsample[0].weight /= factor
    return scaled


def fp16_rescale(peak: float) -> float:
    """The power of two that brings a tensor whose largest |value| is ``peak`` to at most ``FP16_MAX /
    FP16_HEADROOM`` (1 when it already is): the ``features_scaled`` factor that takes bev_pool back into float16's
    range with room for other scenes."""
    if not math.isfinite(peak) or peak <= 0:
        raise ValueError(f"the peak must be finite and positive, got {peak}")
    return 2.0 ** min(0, math.floor(math.log2(FP16_MAX / FP16_HEADROOM / peak)))
