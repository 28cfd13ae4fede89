"""Post-training quantization (PTQ) of the camera branch with pytorch-quantization: CUDA-BEVFusion's int8 recipe
(``qat/ptq.py`` and ``qat/lean/quantize.py``), rebuilt.

1. ``quantize_camera``: fold every BatchNorm into its conv, then swap each ``Conv2d`` of the backbone, the neck,
   ``vtransform.dtransform`` and ``vtransform.depthnet`` for a ``QuantConv2d`` (``vtransform.downsample`` stays
   float). Activations: per-tensor int8, histogram calibrator. Weights: per-channel int8 on axis 0 (output
   channels), max calibrator. Then the sharing rules, which decide where TensorRT can fuse:

   * each Bottleneck gets a ``residual_quantizer`` on the identity input of its Add, so only that input carries
     Q/DQ and TensorRT fuses conv3 + add + relu. With a downsample, ``downsample[0]`` shares conv1's input
     quantizer (both read ``x``) and the residual quantizer is new; without one, the identity *is* ``x``, so the
     residual quantizer is conv1's input quantizer;
   * each neck concat becomes a ``QuantConcat`` whose one quantizer serves both inputs (one scale, so TensorRT
     concatenates int8 tensors in place, no reformat);
   * the tensor layer2 → ``[512, 32, 88]`` is read by ``layer3[0].conv1``, ``layer3[0].downsample[0]`` and
     ``neck.quant_concat1``, which feeds ``neck.lateral_convs[0].conv``: all four share
     ``layer3[0].conv1._input_quantizer``. Likewise layer3 → ``[1024, 16, 44]`` with ``layer4[0]``,
     ``quant_concat0`` and ``lateral_convs[1]``.

2. ``calibrate``: run the float model (quantizers collecting, not quantizing) over calibration frames (synthetic
   scenes of the model's rig or frames the user supplies, ``bevnb.inputs.Frames``; it says which), then pick each
   activation's amax from its histogram: ``mse`` (upstream), ``percentile`` or ``max``; weights take their
   per-channel max. pytorch-quantization 2.1.3 hard-codes ``.cuda()`` in its MSE search, so bevnb computes the same
   MSE search itself (``mse_amax``), on any device.

3. ``amax_state`` / ``save_calibration`` / ``load_calibration`` / ``load_amax``: the calibrated state is the set of
   ``_amax`` buffers under upstream names (``backbone.layer1.0.conv1._input_quantizer._amax`` …, a shared quantizer
   under each of its names), so the amax of a CUDA-BEVFusion PTQ checkpoint (``read_checkpoint(path).amax``) loads
   as is. ``prepare_int8`` does quantize + calibrate-or-load in one call.

4. ``bevnb.export_camera(model, out, precision="int8")`` exports the fake quant as QuantizeLinear/DequantizeLinear
   through ``export_mode`` (``TensorQuantizer.use_fb_fake_quant``). The exporter writes one Q/DQ pair per quantizer
   *call*, so a shared quantizer that reads one tensor twice gives two identical pairs; onnxsim merges them, and
   ``export.simplify_graph`` checks that the distinct quantized tensors (weights and activations) stay the same.
   ``expected_qdq`` predicts the count from the placement, ``placement_table`` / ``shared_table`` show it.

What int8 costs is measured by ``bevnb.validation.evaluate_int8``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from absl import logging as absl_logging
from pytorch_quantization import nn as quant_nn
from pytorch_quantization.calib import HistogramCalibrator
from pytorch_quantization.tensor_quant import QuantDescriptor
from torch import Tensor, nn

from .inputs import DEFAULT_CALIB_SAMPLES, Frames, Inputs, config_tag, current, frames_for
from .inputs import backbone_inputs as backbone_inputs  # re-exported: quant.backbone_inputs(sample, config)
from .model import CameraBranch, fold_batchnorm, state_digest
from .model.checkpoint import key_mismatch
from .model.resnet import Bottleneck
from .paths import build_dir
from .rig import Rig, as_rig
from .subclass import SubclassCameraModule
from .tables import Table

TensorQuantizer = quant_nn.TensorQuantizer
QuantConv2d = quant_nn.QuantConv2d

ACTIVATION = QuantDescriptor(num_bits=8, calib_method="histogram")  # per-tensor
WEIGHT = QuantDescriptor(num_bits=8, axis=(0,), calib_method="max")  # per output channel
CALIB_METHODS = ("mse", "percentile", "max")
HELD_OUT_SEED = 1000  # synthetic scenes from this seed on are never used for calibration


# --- placement ---------------------------------------------------------------------------------------------------


class QuantConcat(nn.Module):
    """``cat(tensors, dim=1)`` with one ``_input_quantizer`` applied to every input."""

    def __init__(self) -> None:
        super().__init__()
        self._input_quantizer = activation_quantizer()

    def forward(self, tensors: list[Tensor]) -> Tensor:
        return torch.cat([self._input_quantizer(t) for t in tensors], dim=1)


def quantize_camera(model: CameraBranch) -> CameraBranch:
    """In place: fold BatchNorm, insert the quantizers of CUDA-BEVFusion's recipe (see the module docstring) and
    return the model, uncalibrated. A model from a PTQ checkpoint is already folded; folding finds nothing there."""
    if is_quantized(model):
        raise ValueError("the model is already quantized; quantize a float camera branch")
    fold_batchnorm(model)
    for part in (model.backbone, model.neck, model.vtransform.dtransform, model.vtransform.depthnet):
        _swap_convs(part)
    for block in model.backbone.modules():
        if isinstance(block, Bottleneck) and block.downsample is not None:
            block.residual_quantizer = activation_quantizer()  # the downsample's output: a tensor of its own
    model.neck.quant_concat0, model.neck.quant_concat1 = QuantConcat(), QuantConcat()
    share_quantizers(model)
    return model


def share_quantizers(model: CameraBranch, input_attribute: str = "_input_quantizer") -> None:
    """In place, CUDA-BEVFusion's sharing rule: in each group of ``(module, attribute)`` sites that read one tensor,
    every site gets the quantizer of the first (a conv1's, under ``input_attribute``):

    * a Bottleneck without downsample: conv1's input and the Add's identity input (``residual_quantizer``);
    * with a downsample: conv1's and ``downsample[0]``'s inputs; for ``layer3[0]`` (layer2's output) also
      ``neck.quant_concat1`` and ``neck.lateral_convs[0].conv``, which reads that concat; for ``layer4[0]`` (layer3's
      output) ``neck.quant_concat0`` and ``neck.lateral_convs[1].conv``.

    ``bevnb.quant`` and ``bevnb.quant_modelopt`` share by this one rule, each under its toolkit's attribute name."""
    backbone, neck = model.backbone, model.neck
    concat_users = {
        id(backbone.layer3[0]): (neck.quant_concat1, neck.lateral_convs[0].conv),
        id(backbone.layer4[0]): (neck.quant_concat0, neck.lateral_convs[1].conv),
    }
    groups = []
    for block in backbone.modules():
        if not isinstance(block, Bottleneck):
            continue
        if block.downsample is None:
            groups.append([(block.conv1, input_attribute), (block, "residual_quantizer")])
        else:
            readers = (block.downsample[0], *concat_users.get(id(block), ()))
            groups.append([(block.conv1, input_attribute), *((m, input_attribute) for m in readers)])
    for (owner, owner_attribute), *users in groups:
        for module, attribute in users:
            setattr(module, attribute, getattr(owner, owner_attribute))


def activation_quantizer() -> TensorQuantizer:
    """A per-tensor int8 quantizer with a histogram calibrator (``ACTIVATION``): every activation's."""
    quantizer = TensorQuantizer(ACTIVATION)
    quantizer._calibrator._torch_hist = True  # torch.histc instead of numpy, as upstream's set_quantizer_fast
    return quantizer


def _swap_convs(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            setattr(module, name, _quant_conv(child))
        else:
            _swap_convs(child)


def _quant_conv(conv: nn.Conv2d) -> quant_nn.QuantConv2d:
    """A QuantConv2d holding ``conv``'s own weight and bias (built on the meta device: no throwaway init)."""
    with quiet_logs(), torch.device("meta"):
        quant = quant_nn.QuantConv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            quant_desc_input=ACTIVATION,
            quant_desc_weight=WEIGHT,
        )
    quant._input_quantizer = activation_quantizer()
    quant.weight, quant.bias = conv.weight, conv.bias
    return quant


def quantizers(model: nn.Module) -> dict[str, TensorQuantizer]:
    """Every distinct quantizer once, under the first name it has (``named_modules`` order)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, TensorQuantizer)}


def quantizer_names(model: nn.Module) -> dict[int, list[str]]:
    """``id(quantizer)`` → every name it has; a shared quantizer has several."""
    names: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, TensorQuantizer):
            names.setdefault(id(m), []).append(name)
    return names


def is_quantized(model: nn.Module) -> bool:
    """Whether the model holds any quantizer."""
    return any(isinstance(m, TensorQuantizer) for m in model.modules())


def is_calibrated(model: nn.Module) -> bool:
    """Whether the model is quantized and every quantizer has a finite amax."""
    found = quantizers(model).values()
    return bool(found) and all(q.amax is not None and bool(torch.isfinite(q.amax).all()) for q in found)


# --- modes -------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def export_mode() -> Iterator[None]:
    """Fake quant through torch's ``fake_quantize_per_{tensor,channel}_affine``, which the TorchScript exporter
    writes as QuantizeLinear + DequantizeLinear (``TensorQuantizer.use_fb_fake_quant``; restored after)."""
    before = TensorQuantizer.use_fb_fake_quant
    TensorQuantizer.use_fb_fake_quant = True
    try:
        with quiet_logs():
            yield
    finally:
        TensorQuantizer.use_fb_fake_quant = before


def quantization_disabled(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Every quantizer bypassed (upstream's ``disable_quantization``, used for ``--fp16``); restored after."""
    return quantizers_disabled(quantizers(model).values())


@contextlib.contextmanager
def quantizers_disabled(chosen: Iterable[TensorQuantizer]) -> Iterator[None]:
    """The ``chosen`` quantizers bypassed (their tensors stay float, their Q/DQ pairs leave the export); restored
    after."""
    found = list(chosen)
    before = [q._disabled for q in found]
    for q in found:
        q.disable()
    try:
        yield
    finally:
        for q, disabled in zip(found, before, strict=True):
            q._disabled = disabled


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """pytorch-quantization logs a warning through absl for every amax it loads; keep notebooks readable."""
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(level)


# --- calibration -------------------------------------------------------------------------------------------------


def synthetic_inputs(count: int, first_seed: int = 0, rig: Rig | str | Path | None = None) -> Frames:
    """``backbone_inputs`` of ``count`` synthetic scenes of ``rig`` (default: the default rig), seeds
    ``first_seed …``, rendered one at a time as they are iterated."""
    return Frames(as_rig(rig), count, first_seed=first_seed)


def calibrate(
    model: CameraBranch,
    data: int | Iterable[tuple[Tensor, Tensor]] = DEFAULT_CALIB_SAMPLES,
    method: str = "mse",
    percentile: float = 99.99,
    progress: bool = True,
) -> float:
    """Calibrate a quantized model in place and return the wall time in seconds: ``collect_statistics`` over
    ``data`` (a number of synthetic scenes of the model's rig, ``frames_for``; ``Frames``; or ``(img, depth)``
    pairs), then ``compute_amax``. With ``progress`` it prints what it calibrated on."""
    _check_method(method)
    start = time.perf_counter()
    frames = frames_for(model.config, data) if isinstance(data, int) else data
    seen = collect_statistics(model, frames, progress)
    compute_amax(model, method, percentile)
    if progress:
        print(
            f"calibrated ({method}) on {frames if isinstance(frames, Frames) else f'{seen} given (img, depth) pairs'}"
        )
    return time.perf_counter() - start


@torch.no_grad()
def run_scenes(model: nn.Module, data: int | Iterable[tuple[Tensor, Tensor]], progress: bool = True) -> int:
    """The forward of ``SubclassCameraModule(model)`` over ``data`` — a number of synthetic scenes of the model's rig
    (``frames_for``), ``Frames``, or ``(img [1, N, 3, iH, iW], depth [1, N, 1, iH, iW])`` pairs — with a progress bar;
    return the number of pairs seen. Calibration's pass, for either toolkit's quantizers."""
    from tqdm import tqdm

    inputs = frames_for(model.config, data) if isinstance(data, int) else data
    total = len(inputs) if isinstance(inputs, Frames) else None
    split = SubclassCameraModule(model).eval()
    seen = 0
    for img, depth in tqdm(inputs, desc="calibrating", unit="scene", total=total, disable=not progress):
        split(img, depth)
        seen += 1
    return seen


def collect_statistics(model: CameraBranch, data: int | Iterable[tuple[Tensor, Tensor]], progress: bool = True) -> int:
    """``run_scenes`` with every activation quantizer feeding its histogram and none quantizing (upstream's
    ``disable_quant`` + ``enable_calib``); return the number of pairs seen. Nothing after the split is quantized,
    so calibration needs no bev_pool."""
    every = list(quantizers(model).values())
    activations = _activation_quantizers(model)
    if not activations:
        raise ValueError("the model has no quantizers; run quantize_camera first")
    with quiet_logs():
        for q in every:
            q.disable_quant()
        for q in activations:
            q._calibrator.reset()
            q.enable_calib()
    try:
        seen = run_scenes(model, data, progress)
    finally:
        with quiet_logs():
            for q in every:
                q.enable_quant()
            for q in activations:
                q.disable_calib()
    if seen == 0:
        raise ValueError("calibration needs at least one (img, depth) pair, got none")
    return seen


def compute_amax(model: CameraBranch, method: str = "mse", percentile: float = 99.99) -> None:
    """Set every amax from what ``collect_statistics`` gathered: activations by ``method`` over their histogram of
    |x| (``mse``: the amax with the least quantization MSE, as upstream; ``percentile``: the ``percentile``-th
    percentile; ``max``: the largest value), weights by their per-output-channel max |w|."""
    _check_method(method)
    for q in _activation_quantizers(model):
        calib = q._calibrator
        if calib._calib_hist is None:
            raise ValueError("a quantizer has no histogram: run collect_statistics before compute_amax")
        hist, edges = torch.as_tensor(calib._calib_hist).float().cpu(), torch.as_tensor(calib._calib_bin_edges).cpu()
        if method == "mse":
            amax = mse_amax(hist, edges.float(), q.num_bits)
        elif method == "percentile":
            amax = percentile_amax(hist, edges.float(), percentile)
        else:
            amax = edges[int(torch.nonzero(hist).max()) + 1]
        _set_amax(q, amax.reshape(()))
    for m in model.modules():
        if isinstance(m, quant_nn.QuantConv2d):
            _set_amax(m._weight_quantizer, m.weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True))


def mse_amax(hist: Tensor, edges: Tensor, num_bits: int = 8, start_bin: int = 128) -> Tensor:
    """The amax among the bin centres ``c[start_bin:]`` that minimises ``Σ count·(q(c) − c)²`` over a histogram of
    |x| (``hist [B]``, ``edges [B + 1]``), ``q`` being symmetric ``num_bits`` fake quant with that amax: the search
    of pytorch-quantization's ``_compute_amax_mse`` (which needs CUDA), vectorised, on any device."""
    centers = (edges[1:] + edges[:-1]) / 2
    bound = 2 ** (num_bits - 1) - 1
    errors = []
    for amax in centers[start_bin:].split(max(1, 2**22 // centers.numel())):  # ≤ 4M elements at a time
        t = centers * (bound / amax[:, None])
        t.round_().clamp_(max=bound).mul_(amax[:, None] / bound).sub_(centers).square_()
        errors.append(t @ hist)
    return centers[start_bin + int(torch.cat(errors).argmin())]


def percentile_amax(hist: Tensor, edges: Tensor, percentile: float = 99.99) -> Tensor:
    """The bin edge below which ``percentile`` % of the histogram's mass lies."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    cdf = torch.cumsum(hist.double(), 0) / hist.sum()
    return edges[int(torch.searchsorted(cdf, torch.tensor(percentile / 100, dtype=torch.float64)))]


def _check_method(method: str) -> None:
    if method not in CALIB_METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(CALIB_METHODS)}, got {method!r}")


def _activation_quantizers(model: nn.Module) -> list[TensorQuantizer]:
    return [q for q in quantizers(model).values() if isinstance(q._calibrator, HistogramCalibrator)]


def _set_amax(quantizer: TensorQuantizer, amax: Tensor) -> None:
    amax = amax.detach().float().clone()
    if quantizer.amax is None or quantizer.amax.shape != amax.shape:
        quantizer.register_buffer("_amax", amax)
    else:
        quantizer._amax.copy_(amax)


# --- amax I/O ----------------------------------------------------------------------------------------------------


def amax_state(model: nn.Module) -> dict[str, Tensor]:
    """``{upstream name: amax}`` for every quantizer, a shared one under each of its names (as in a CUDA-BEVFusion
    PTQ checkpoint): ``backbone.conv1._input_quantizer._amax`` ``[]``, ``backbone.conv1._weight_quantizer._amax``
    ``[64, 1, 1, 1]`` …"""
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith("._amax")}


def load_amax(model: nn.Module, amax: Mapping[str, Tensor]) -> None:
    """Set every quantizer's amax from ``{name: amax}`` (``amax_state``'s keys, or ``read_checkpoint(path).amax``).
    Strict: a quantizer without a value, a key without a quantizer, a wrong shape or two different values for one
    shared quantizer raise ValueError, and then nothing is loaded."""
    slots = _amax_slots(model)
    given = {k: tuple(torch.as_tensor(v).shape) for k, v in amax.items()}
    problems = key_mismatch({k: shape for k, (_, shape) in slots.items()}, given, shown=4)
    if problems:
        raise ValueError(f"amax does not fit the quantized model: {problems}")
    chosen: dict[int, tuple[str, Tensor]] = {}
    for key, (q, _) in slots.items():
        value = torch.as_tensor(amax[key]).float()
        first = chosen.setdefault(id(q), (key, value))
        if not torch.equal(first[1], value):
            raise ValueError(f"{first[0]} and {key} are one shared quantizer but hold different amax")
    for q, _ in slots.values():
        _set_amax(q, chosen[id(q)][1])


def _amax_slots(model: nn.Module) -> dict[str, tuple[TensorQuantizer, tuple[int, ...]]]:
    """``{amax key: (quantizer, amax shape)}`` under every name: ``[]`` per tensor, ``[C_out, 1, 1, 1]`` per channel."""
    slots = {
        f"{name}._amax": (m, ())
        for name, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, TensorQuantizer)
    }
    for name, m in model.named_modules():
        if isinstance(m, quant_nn.QuantConv2d):
            slots[f"{name}._weight_quantizer._amax"] = (m._weight_quantizer, (m.out_channels, 1, 1, 1))
    return slots


def save_calibration(model: nn.Module, path: str | Path, **meta: object) -> Path:
    """Write ``{"amax": amax_state(model), "weights": <digest>, "meta": meta}`` with ``torch.save``. The digest ties
    the file to the weights it was calibrated for, so ``load_calibration`` refuses it on any other model."""
    if not is_calibrated(model):
        raise ValueError("the model is not calibrated: nothing to save")
    path = Path(path)
    torch.save({"amax": amax_state(model), "weights": state_digest(model, skip_amax=True), "meta": meta}, path)
    return path


def load_calibration(model: nn.Module, path: str | Path) -> dict:
    """Load a file of ``save_calibration`` into a quantized model with the same weights; return its ``meta``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such calibration file")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError … for files it cannot read
        raise ValueError(f"{path}: not a bevnb calibration file ({type(exc).__name__})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("amax"), dict):
        raise ValueError(f"{path}: not a bevnb calibration file (expected a dict with 'amax')")
    if saved.get("weights") != state_digest(model, skip_amax=True):
        raise ValueError(f"{path}: calibrated for other weights than this model's")
    load_amax(model, saved["amax"])
    return dict(saved.get("meta", {}))


def calibration_file(inputs: Inputs | None = None, method: str = "mse", seed: int = 0) -> Path:
    """Where chapter 04 keeps the calibration of ``inputs`` (default ``bevnb.inputs.current()``) for later chapters:
    ``build/calibration/camera-{weights}-{frames}-{method}{rig}.pt``, e.g. ``camera-seed0-n2-mse.pt`` for the
    default model on two synthetic scenes of the default rig; a checkpoint is named by its file name."""
    _check_method(method)
    inputs = inputs or current()
    weights = f"seed{seed}" if inputs.checkpoint is None else f"ckpt-{inputs.checkpoint.stem}"
    name = f"camera-{weights}-{inputs.frames.tag}-{method}{config_tag(inputs.rig.config)}.pt"
    return build_dir("calibration") / name


def prepare_int8(
    model: CameraBranch,
    calibration: str | Path | Mapping[str, Tensor] | None = None,
    samples: int | Frames = DEFAULT_CALIB_SAMPLES,
    method: str = "mse",
    progress: bool = True,
) -> CameraBranch:
    """The int8 path in one call (``bevnb export --precision int8``): quantize the model in place (unless it is),
    then take its amax from ``calibration`` (a ``save_calibration`` file, or an amax dict such as
    ``read_checkpoint(ptq_checkpoint).amax``) or, without one, calibrate on ``samples`` (``Frames``, or a number of
    synthetic scenes of the model's rig). It prints where the amax came from."""
    if not is_quantized(model):
        quantize_camera(model)
    if calibration is None:
        calibrate(model, samples, method, progress=progress)
    elif isinstance(calibration, Mapping):
        load_amax(model, calibration)
        if progress:
            print(f"amax of {len(calibration)} quantizer names from the checkpoint (not calibrated here)")
    else:
        meta = load_calibration(model, calibration)
        if progress:
            print(f"amax from {calibration}, calibrated on {meta.get('frames', 'frames it does not record')}")
    return model


def default_int8_model(inputs: Inputs | None = None, progress: bool = True, seed: int = 0) -> CameraBranch:
    """``inputs.model(seed)`` (default ``bevnb.inputs.current()``: ``BEVNB_CHECKPOINT``, ``BEVNB_RIG``) quantized
    with chapter 04's calibration (``calibration_file``: MSE over ``inputs.frames``), calibrated and saved there
    first when the file is missing or was made for other weights: the int8 model later chapters, tests and CLI
    commands share."""
    inputs = inputs or current()
    model = inputs.model(seed)
    cached = calibration_file(inputs, "mse", seed)
    try:
        prepare_int8(model, calibration=cached if cached.is_file() else None, samples=inputs.frames, progress=progress)
    except ValueError:  # a file left by other weights under the same name: calibrate again
        prepare_int8(model, samples=inputs.frames, progress=progress)
        cached.unlink()
    if not cached.is_file():
        save_calibration(model, cached, frames=str(inputs.frames))
    return model


# --- the placement, reported -----------------------------------------------------------------------------------


def quantizer_calls(model: CameraBranch) -> list[tuple[str, int]]:
    """Every quantizer application of one backbone forward, in order: ``(quantizer's first name, tensor id)``,
    recorded on a one-camera 64×64 input with quantization off (so an uncalibrated model works too). Two calls of
    one quantizer on one tensor are the same Q/DQ pair once the graph's duplicates are merged. A disabled quantizer
    (a layer left in float) writes no Q/DQ and is not recorded."""
    names = {id(q): name for name, q in quantizers(model).items() if not q._disabled}
    calls: list[tuple[str, int]] = []
    seen: list[Tensor] = []  # keeps every input alive, so no id is reused during the forward

    def record(module: nn.Module, args: tuple) -> None:
        seen.append(args[0])
        calls.append((names[id(module)], id(args[0])))

    hooks = [q.register_forward_pre_hook(record) for q in quantizers(model).values() if id(q) in names]
    try:
        with torch.no_grad(), quantization_disabled(model):
            SubclassCameraModule(model)(torch.zeros(1, 1, 3, 64, 64), torch.zeros(1, 1, 1, 64, 64))
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def expected_qdq(model: CameraBranch) -> dict[str, int]:
    """The Q/DQ pairs ``camera.backbone.onnx`` must hold, from the placement alone:

    * ``weights``: one per-channel (axis 0) pair per QuantConv2d whose weight quantizer is enabled;
    * ``activations``: one per-tensor pair per distinct (quantizer, tensor) — what remains after onnxsim merges the
      duplicates the exporter writes when a shared quantizer reads one tensor twice;
    * ``activation_calls``: quantizer applications, the exporter's count before merging.
    """
    calls = quantizer_calls(model)
    weights = sum(isinstance(m, quant_nn.QuantConv2d) and not m._weight_quantizer._disabled for m in model.modules())
    activation_calls = [c for c in calls if not c[0].endswith("_weight_quantizer")]
    return {"weights": weights, "activations": len(set(activation_calls)), "activation_calls": len(activation_calls)}


def placement_table(model: CameraBranch) -> Table:
    """Where the quantizers sit: one row per conv (quantized or float) and per residual/concat quantizer: its
    input quantizer (a shared one under its first name, with the number of places using it), amax, and the weight
    quantization with its per-channel amax range."""
    names = quantizer_names(model)
    rows = []
    for name, m in model.named_modules():
        site = _site(name, m)
        if site is None:
            continue
        role, quantizer, weight = site
        if quantizer is None:
            rows.append((name, role, "float", "", "", weight))
            continue
        group = names[id(quantizer)]
        label = quantizer_owner(group[0]) if len(group) > 1 else "own"
        rows.append((name, role, label, len(group), _amax_text(quantizer.amax), weight))
    return Table(
        rows,
        ("module", "quantizes", "input quantizer", "users", "input amax", "weight (axis 0) amax"),
        title="Q/DQ placement",
    )


def shared_table(model: CameraBranch) -> Table:
    """The quantizers with more than one user, under their first name: one scale for every tensor that meets in an
    Add or a Concat, so TensorRT needs no reformat between them."""
    rows = [
        (quantizer_owner(names[0]), ", ".join(quantizer_owner(n) for n in names[1:]))
        for names in quantizer_names(model).values()
        if len(names) > 1
    ]
    return Table(rows, ("quantizer", "also used by"), title="shared quantizers")


def _site(name: str, m: nn.Module) -> tuple[str, TensorQuantizer | None, str] | None:
    if isinstance(m, quant_nn.QuantConv2d):
        return "conv input + weight", m._input_quantizer, _amax_text(m._weight_quantizer.amax)
    if isinstance(m, nn.Conv2d):
        return "—", None, "float"
    if isinstance(m, Bottleneck) and isinstance(m.residual_quantizer, TensorQuantizer):
        return "Add identity input", m.residual_quantizer, ""
    if isinstance(m, QuantConcat):
        return "both Concat inputs", m._input_quantizer, ""
    return None


def quantizer_owner(quantizer_name: str) -> str:
    """The module an input quantizer belongs to: ``backbone.layer3.0.conv1`` for
    ``backbone.layer3.0.conv1._input_quantizer`` (other names are returned as they are)."""
    return quantizer_name.removesuffix("._input_quantizer")


def _amax_text(amax: Tensor | None) -> str:
    if amax is None:
        return "—"
    if amax.numel() == 1:
        return f"{amax.item():.4g}"
    return f"{amax.min().item():.3g} … {amax.max().item():.3g}"
