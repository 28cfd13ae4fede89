"""CUDA-BEVFusion's int8 recipe with TensorRT Model Optimizer (``nvidia-modelopt``), the successor of
pytorch-quantization, beside ``bevnb.quant``: the same quantized tensors, the same shared scales, the same export.

ModelOpt's torch API (``modelopt.torch.quantization``, ``mtq``) turns each supported module into a generated class
(named ``QuantConv2d``, but not an instance of ModelOpt's own ``QuantConv2d``) that holds an ``input_quantizer`` and
a ``weight_quantizer``; bevnb finds quantized modules by those attributes. The steps, and where ModelOpt stops:

1. ``quantize_camera_modelopt``: fold BatchNorm (before calibration, as upstream), then ``mtq.quantize`` with
   ``int8_config``: per-channel (axis 0) int8 weights and per-tensor int8 inputs for every Conv2d of the backbone,
   the neck, ``dtransform`` and ``depthnet``. Where upstream's placement needs more than a config:

   * ``mtq.INT8_DEFAULT_CFG`` also quantizes MaxPool's input (ModelOpt registers ``nn.MaxPool2d``) and
     ``vtransform.downsample``; ``int8_config`` switches both off, as upstream quantizes neither;
   * ModelOpt quantizes no Add and no Concat of plain torch code (NVIDIA/Model-Optimizer#121). bevnb registers
     quantized versions of its ``Bottleneck`` (a ``residual_quantizer`` on the identity input of the Add) and of its
     neck ``Concat`` (one ``input_quantizer`` for both inputs) with ``mtq.register``, ModelOpt's documented way to
     quantize a custom module;
   * a config names quantizers one by one: it cannot say "these five sites share one scale". bevnb assigns one
     quantizer object to every site of a group (``quant.share_quantizers``, the rule ``bevnb.quant`` applies).
     Calibration and ONNX export honour the sharing; ModelOpt's own checkpoint does not: restoring a
     ``mto.modelopt_state`` fails on the later names of each shared quantizer ("Extra keys in quantizer
     state_dict"; "Unmatched keys" already without bevnb's registered classes, which ``quantize_camera_modelopt``
     registers only while it quantizes). Keep the amax with bevnb instead (``upstream_amax`` → ``quant.load_amax``
     → ``quant.save_calibration``).

2. ``calibrate_modelopt``: ``max`` is ``mtq.calibrate(model, "max", forward_loop)``, ModelOpt's default. ``mse`` and
   ``percentile`` use ModelOpt's ``HistogramCalibrator`` (the histogram code of pytorch-quantization), which
   ``mtq.calibrate`` cannot drive: its algorithms call ``compute_amax()`` without a method and fail
   (Model-Optimizer#63), so bevnb collects and loads the amax itself. ModelOpt 0.47's histogram MSE search
   (``modelopt_mse_amax``) passes ``num_bits`` positionally into ``fake_tensor_quant``'s ``bias`` slot, so it scores
   a constant instead of the quantized histogram; bevnb takes ``quant.mse_amax`` over ModelOpt's histogram, which is
   bit for bit pytorch-quantization's.

3. Export: ModelOpt's fake quant is an autograd Function with an ONNX ``symbolic``, so the TorchScript exporter
   (``dynamo=False``) writes QuantizeLinear/DequantizeLinear for it with no switch to flip (pytorch-quantization
   needs ``use_fb_fake_quant``): ``bevnb.export_camera(model, out, "int8")`` takes a ModelOpt model as it is.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from . import quant
from .inputs import Frames, frames_for
from .model import CameraBranch, fold_batchnorm
from .model.neck import Concat
from .model.resnet import Bottleneck

with warnings.catch_warnings():  # on import ModelOpt warns about optional packages (transformers, Jupyter widgets)
    warnings.simplefilter("ignore")
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization.calib import HistogramCalibrator
    from modelopt.torch.quantization.nn import QuantModuleRegistry, TensorQuantizer

CALIBRATORS = {"max": "max", "mse": "histogram", "percentile": "histogram"}  # method → ModelOpt calibrator


class _QuantConcat(Concat):
    """bevnb's neck Concat with one ``input_quantizer`` for every input (registered with ``mtq.register``)."""

    def _setup(self) -> None:
        self.input_quantizer = TensorQuantizer()

    def forward(self, tensors: list[Tensor]) -> Tensor:
        return torch.cat([self.input_quantizer(t) for t in tensors], dim=1)


class _QuantBottleneck(Bottleneck):
    """A Bottleneck whose ``residual_quantizer`` (called on the identity input of the Add) is a quantizer."""

    def _setup(self) -> None:
        self.residual_quantizer = TensorQuantizer()


def int8_config(method: str = "max") -> dict:
    """The ``mtq.quantize`` config of upstream's placement: int8 weights per output channel (axis 0), int8 inputs,
    residual and concat inputs per tensor, with the calibrator ``method`` needs; MaxPool, ``vtransform.downsample``
    and all output quantizers off. No calibration algorithm: ``calibrate_modelopt`` runs after the sharing."""
    _check_method(method)
    activation = {"num_bits": 8, "axis": None, "calibrator": CALIBRATORS[method]}
    return {
        "quant_cfg": [
            {"quantizer_name": "*", "enable": False},
            {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}},
            {"quantizer_name": "*input_quantizer", "cfg": activation},
            {"quantizer_name": "*residual_quantizer", "cfg": activation},
            {"quantizer_name": "*maxpool*", "enable": False},
            {"quantizer_name": "vtransform.downsample.*", "enable": False},
        ],
        "algorithm": None,
    }


def quantize_camera_modelopt(model: CameraBranch, method: str = "max") -> CameraBranch:
    """In place: fold BatchNorm, insert ModelOpt quantizers as ``int8_config(method)`` says, share them as
    upstream does, and return the model, uncalibrated."""
    if is_quantized(model) or quant.is_quantized(model):
        raise ValueError("the model is already quantized; quantize a float camera branch")
    fold_batchnorm(model)
    with _quiet(), _registered({Concat: _QuantConcat, Bottleneck: _QuantBottleneck}):
        mtq.quantize(model, int8_config(method))
    quant.share_quantizers(model, "input_quantizer")
    return model


def is_quantized(model: nn.Module) -> bool:
    """Whether ModelOpt quantized the model: some module's ``input_quantizer`` and ``weight_quantizer`` are ModelOpt
    quantizers (pytorch-quantization's QuantConv2d has attributes of those names too, holding its own)."""
    return any(
        isinstance(getattr(m, "input_quantizer", None), TensorQuantizer)
        and isinstance(getattr(m, "weight_quantizer", None), TensorQuantizer)
        for m in model.modules()
    )


def quantizers(model: nn.Module) -> dict[str, TensorQuantizer]:
    """Every enabled ModelOpt quantizer once, under the first name it has."""
    return {n: m for n, m in model.named_modules() if isinstance(m, TensorQuantizer) and m.is_enabled}


def is_calibrated(model: nn.Module) -> bool:
    """Whether every enabled quantizer has a finite amax."""
    found = quantizers(model).values()
    return bool(found) and all(q.amax is not None and bool(torch.isfinite(q.amax).all()) for q in found)


def calibrate_modelopt(
    model: CameraBranch,
    data: int | Iterable[tuple[Tensor, Tensor]] = quant.DEFAULT_CALIB_SAMPLES,
    method: str = "max",
    percentile: float = 99.99,
    progress: bool = True,
) -> float:
    """Calibrate a ``quantize_camera_modelopt`` model in place over ``data`` (a number of synthetic scenes of the
    model's rig, ``Frames``, or ``(img, depth)`` pairs, as ``quant.calibrate``, which it names when ``progress``) and
    return the wall time in seconds. ``max``:
    ``mtq.calibrate``; ``mse`` / ``percentile``: ModelOpt's histograms, amax chosen as the module docstring says.
    Weights take their per-channel max either way."""
    _check_method(method)
    found = quantizers(model)
    if not found:
        raise ValueError("the model has no ModelOpt quantizers; run quantize_camera_modelopt first")
    histogram = any(isinstance(q._calibrator, HistogramCalibrator) for q in found.values())
    if histogram != (CALIBRATORS[method] == "histogram"):
        raise ValueError(f"the model was quantized for another calibrator than {method!r} needs; quantize it again")

    def forward_loop(module: nn.Module) -> None:
        quant.run_scenes(module, data, progress)

    if isinstance(data, int):
        data = frames_for(model.config, data)
    start = time.perf_counter()
    with _quiet():
        if method == "max":
            mtq.calibrate(model, "max", forward_loop)
        else:
            _calibrate_histograms(model, forward_loop, method, percentile)
    seconds = time.perf_counter() - start
    if progress:
        print(f"calibrated ({method}, ModelOpt) on {data if isinstance(data, Frames) else 'given (img, depth) pairs'}")
    return seconds


def _calibrate_histograms(model: nn.Module, forward_loop, method: str, percentile: float) -> None:
    found = list(quantizers(model).values())
    for q in found:
        if isinstance(q._calibrator, HistogramCalibrator):
            q._calibrator.reset()
        q.disable_quant()
        q.enable_calib()
    try:
        forward_loop(model)
    finally:
        for q in found:
            q.enable_quant()
            q.disable_calib()
    for q in found:
        if not isinstance(q._calibrator, HistogramCalibrator):
            q.load_calib_amax()
    compute_amax_modelopt(model, method, percentile)


def compute_amax_modelopt(model: nn.Module, method: str = "mse", percentile: float = 99.99) -> None:
    """Set every histogram quantizer's amax from the histogram it collected (``calibrate_modelopt`` with ``mse`` or
    ``percentile`` did): ``mse`` by ``quant.mse_amax``, ``percentile`` by ModelOpt's own percentile."""
    if CALIBRATORS.get(method) != "histogram":
        raise ValueError(f"compute_amax_modelopt picks from histograms: mse or percentile, got {method!r}")
    for q in quantizers(model).values():
        calibrator = q._calibrator
        if not isinstance(calibrator, HistogramCalibrator):
            continue
        if calibrator._calib_hist is None:
            raise ValueError("a quantizer has no histogram: calibrate_modelopt with mse or percentile first")
        if method == "mse":
            hist, edges = calibrator._calib_hist.float().cpu(), calibrator._calib_bin_edges.float().cpu()
            q.amax = quant.mse_amax(hist, edges, q.num_bits)
        else:
            q.load_calib_amax("percentile", percentile=percentile)


def modelopt_mse_amax(model: nn.Module, names: Sequence[str]) -> list[float]:
    """What ModelOpt's own ``HistogramCalibrator.compute_amax("mse")`` returns for the named quantizers of a model
    calibrated with ``mse`` (to set beside the amax in use, ``quant.mse_amax`` on the same histogram). Slow: a
    Python loop over the histogram's bins."""
    return [float(model.get_submodule(name)._calibrator.compute_amax("mse")) for name in names]


def upstream_amax(model: nn.Module) -> dict[str, Tensor]:
    """Every enabled quantizer's amax under the names pytorch-quantization (and so a CUDA-BEVFusion PTQ checkpoint
    and ``quant.amax_state``) uses: ``backbone.conv1._input_quantizer._amax`` ``[]``,
    ``backbone.conv1._weight_quantizer._amax`` ``[64, 1, 1, 1]``, a shared quantizer under each of its names."""
    out = {}
    for name, q in model.named_modules(remove_duplicate=False):
        if isinstance(q, TensorQuantizer) and q.is_enabled and q.amax is not None:
            module, _, role = name.rpartition(".")
            role = {"input_quantizer": "_input_quantizer", "weight_quantizer": "_weight_quantizer"}.get(role, role)
            amax = q.amax.detach().float().clone()
            out[f"{module}.{role}._amax"] = amax.reshape(-1, 1, 1, 1) if amax.numel() > 1 else amax.reshape(())
    return out


@contextlib.contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[None]:
    """Every ModelOpt quantizer bypassed (the float model, for an fp16 export); restored after."""
    found = [m for m in model.modules() if isinstance(m, TensorQuantizer)]
    before = [q.is_enabled for q in found]
    for q in found:
        q.disable()
    try:
        yield
    finally:
        for q, enabled in zip(found, before, strict=True):
            if enabled:
                q.enable()


@contextlib.contextmanager
def _registered(classes: dict[type[nn.Module], type[nn.Module]]) -> Iterator[None]:
    """``mtq.register`` for the duration of one ``mtq.quantize`` (the registry is global: a model quantized later
    with ModelOpt's own configs should meet ModelOpt's defaults)."""
    added = [original for original in classes if original not in QuantModuleRegistry]
    for original in added:
        mtq.register(original_cls=original, quantized_cls=classes[original])
    try:
        yield
    finally:
        for original in added:
            mtq.unregister(original)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ModelOpt prints ("Inserted 218 quantizers") and warns about optional packages bevnb does not use."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", module=r"modelopt\.")
        yield


def _check_method(method: str) -> None:
    if method not in CALIBRATORS:
        raise ValueError(f"calibration method must be one of {', '.join(CALIBRATORS)}, got {method!r}")
