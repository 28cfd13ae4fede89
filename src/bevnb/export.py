"""ONNX export of the two camera graphs, as CUDA-BEVFusion's ``qat/export-camera.py`` writes them.

* ``camera.backbone.onnx``: ``SubclassCameraModule`` — inputs ``img [1, 6, 3, 256, 704]``, ``depth [1, 6, 1, 256,
  704]``; outputs ``camera_feature [6, 32, 88, 80]`` (NHWC), ``camera_depth_weights [6, 118, 32, 88]``. Opset 13,
  constant folding, static shapes, then a simplifier (onnxsim as upstream, or onnxslim) that must keep every
  quantized tensor.
* ``camera.vtransform.onnx``: ``vtransform.downsample`` alone — ``feat_in [1, 80, 360, 360]`` →
  ``feat_out [1, 80, 180, 180]``. Opset 13, constant folding, no onnxsim (as upstream).
* ``head.bbox.onnx`` (``export_head``): the detection head, decoder + CenterHead — ``camera_bev [1, 80, 180, 180]``
  → per task ``reg_t``, ``height_t``, ``dim_t``, ``rot_t``, ``vel_t``, ``heatmap_t`` ``[1, c, 180, 180]``; decoding
  stays outside the graph. Float only, as upstream builds its head engine with ``--fp16`` only; simplified like the
  backbone graph, which folds the Shape → Slice → Concat the exporter writes for the neck's resize sizes.

Precision follows upstream: ``fp16`` is the float graph without quantizers (the TensorRT builder picks fp16 kernels
with ``--fp16``; the ONNX itself stays fp32), ``int8`` is the same graph with QuantizeLinear/DequantizeLinear pairs
from a calibrated model: ``bevnb.quant`` (pytorch-quantization) or ``bevnb.quant_modelopt`` (TensorRT Model
Optimizer), whichever quantized it.

bevnb exports with the TorchScript exporter (``dynamo=False``) on purpose: since torch 2.9 ``torch.onnx.export``
defaults to the dynamo exporter, which cannot trace pytorch-quantization's fake quant (``amax.item()`` becomes a
data-dependent value in ``torch.export``). ``dynamo_export_error`` shows the failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from . import graphs
from .config import R50, CameraConfig
from .model import CameraBranch, DetectionHead, state_digest
from .subclass import (
    BACKBONE_FILE,
    BACKBONE_IO,
    HEAD_FILE,
    VTRANSFORM_FILE,
    VTRANSFORM_IO,
    HeadGraphModule,
    SubclassCameraModule,
    head_io,
)

OPSET = 13  # the first opset with per-channel (axis) QuantizeLinear/DequantizeLinear
PRECISIONS = ("fp16", "int8")
SIMPLIFIERS = ("onnxsim", "onnxslim")
MANIFEST = "export.json"  # what the files in a folder were exported from


class ExportError(RuntimeError):
    """An export that cannot run or did not produce what it should (one-line message)."""


@dataclass(frozen=True)
class ExportedFile:
    """One written graph: where, how long the export took, how big it is."""

    path: Path
    seconds: float
    size_bytes: int
    nodes: int


def export_camera(
    model: CameraBranch,
    out_dir: str | Path,
    precision: str = "fp16",
    img: torch.Tensor | None = None,
    simplifier: str | None = "onnxsim",
    verbose: bool = True,
) -> dict[str, ExportedFile]:
    """Write ``camera.backbone.onnx`` and ``camera.vtransform.onnx`` into ``out_dir`` (which must exist and be
    writable), plus ``export.json`` (precision and a digest of the weights, read by ``ensure_exported``), and return
    the graphs by file name.

    ``img`` is the trace input (default zeros ``[1, N, 3, iH, iW]``); the depth input is all zeros, as upstream
    (the depth map is filled at run time). ``simplifier`` (``SIMPLIFIERS``) runs on the backbone graph; None keeps
    the traced graph. Each file is written to a temporary name and renamed, so an export that fails never leaves a
    broken file in place of a good one.
    """
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if simplifier is not None and simplifier not in SIMPLIFIERS:
        raise ExportError(f"simplifier must be one of {', '.join(SIMPLIFIERS)} or None, got {simplifier!r}")
    out_dir = _writable_dir(out_dir)
    cfg = model.config
    iH, iW = cfg.image_size
    img = torch.zeros(1, cfg.num_cameras, 3, iH, iW) if img is None else img
    depth = torch.zeros(1, cfg.num_cameras, 1, iH, iW)
    bev = torch.zeros(1, cfg.bev_channels, *cfg.bev_size)
    model = model.eval()
    written = {}
    with _precision_mode(model, precision):
        jobs = (
            (BACKBONE_FILE, SubclassCameraModule(model).eval(), (img, depth), BACKBONE_IO, simplifier),
            # Wrapped so that the exporter's scope names read /downsample/… as in the model.
            (
                VTRANSFORM_FILE,
                nn.Sequential(OrderedDict(downsample=model.vtransform.downsample)).eval(),
                (bev,),
                VTRANSFORM_IO,
                None,
            ),
        )
        for step, (name, module, inputs, (in_names, out_names), simp) in enumerate(jobs, 1):
            start = time.perf_counter()
            if verbose:
                print(f"[{step}/2] {name}: tracing ({precision}) …", end="", flush=True)
            graph = trace_to_onnx(module, inputs, in_names, out_names)
            if simp is not None:
                if verbose:
                    print(f" {simp} …", end="", flush=True)
                graph = simplify_graph(graph, simp)
            path = _save_atomically(graph, out_dir / name)
            seconds = time.perf_counter() - start
            written[name] = ExportedFile(path, seconds, path.stat().st_size, len(graph.graph.node))
            if verbose:
                size_mb = written[name].size_bytes / 1e6
                print(f" {seconds:.1f} s, {size_mb:.1f} MB, {len(graph.graph.node)} nodes", flush=True)
    manifest = {"precision": precision, "state": state_digest(model), "files": sorted(written)}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return written


def export_head(
    head: DetectionHead,
    out_dir: str | Path,
    config: CameraConfig = R50,
    simplifier: str | None = "onnxsim",
    verbose: bool = True,
) -> ExportedFile:
    """Write ``head.bbox.onnx`` into ``out_dir`` (which must exist and be writable): ``HeadGraphModule(head)``
    traced on an all-zero BEV ``[1, C, X/2, Y/2]`` of ``config``, with the names of ``subclass.head_io``, then
    ``simplifier`` (``SIMPLIFIERS``; None keeps the traced graph, whose resize sizes come from a Shape). Written to a
    temporary name and renamed, as ``export_camera`` does."""
    if simplifier is not None and simplifier not in SIMPLIFIERS:
        raise ExportError(f"simplifier must be one of {', '.join(SIMPLIFIERS)} or None, got {simplifier!r}")
    out_dir = _writable_dir(out_dir)
    start = time.perf_counter()
    if verbose:
        print(f"{HEAD_FILE}: tracing …", end="", flush=True)
    bev = torch.zeros(1, head.config.in_channels, *config.out_bev_size)
    graph = trace_to_onnx(HeadGraphModule(head.eval()), (bev,), *head_io(head.config))
    if simplifier is not None:
        if verbose:
            print(f" {simplifier} …", end="", flush=True)
        graph = simplify_graph(graph, simplifier)
    path = _save_atomically(graph, out_dir / HEAD_FILE)
    written = ExportedFile(path, time.perf_counter() - start, path.stat().st_size, len(graph.graph.node))
    if verbose:
        print(f" {written.seconds:.1f} s, {written.size_bytes / 1e6:.1f} MB, {written.nodes} nodes", flush=True)
    return written


def trace_to_onnx(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], input_names: tuple[str, ...], output_names: tuple[str, ...]
) -> onnx.ModelProto:
    """TorchScript-exporter trace at opset 13 with constant folding and static shapes, in memory."""
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The Python-int shapes that make the graph static are deliberate; the tracer warns about each of them.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            inputs,
            buffer,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def simplify_graph(graph: onnx.ModelProto, simplifier: str = "onnxsim") -> onnx.ModelProto:
    """Simplify with onnxsim (upstream's; its check asserted) or onnxslim (ModelOpt's since 0.40), check that the
    distinct quantized tensors (``graphs.quantization_signature``: what computes the tensor, scales, zero point,
    axis) are the same as before, and return the graph with its constants as initializers.

    Both are known to mishandle Q/DQ in some versions (onnxsim #216 folds weight Q/DQ back to float; OnnxSlim #184),
    which would silently turn int8 weights into float, hence the check. The Q/DQ node counts may drop: the exporter
    writes one Q/DQ pair per quantizer call, so a shared quantizer that reads one tensor twice (conv1 and the
    residual of a Bottleneck) gives two identical pairs, which both simplifiers merge into one.
    """
    before = graphs.quantization_signature(graph)
    simplified = run_simplifier(graph, simplifier)
    if graphs.quantization_signature(simplified) != before:
        counts = f"{graphs.count_quantized(graph)} → {graphs.count_quantized(simplified)}"
        raise ExportError(f"{simplifier} changed the quantized tensors ({counts}); the int8 graph would lose them")
    return constants_to_initializers(simplified)


def run_simplifier(graph: onnx.ModelProto, simplifier: str) -> onnx.ModelProto:
    """The simplifier alone (``SIMPLIFIERS``), no check of what it kept; ``graph`` may be changed in place."""
    if simplifier == "onnxsim":
        import onnxsim

        simplified, ok = onnxsim.simplify(graph)
        if not ok:
            raise ExportError("onnxsim's check failed: the simplified graph does not compute what the traced one does")
        return simplified
    if simplifier == "onnxslim":
        import onnxslim

        return onnxslim.slim(graph)
    raise ExportError(f"simplifier must be one of {', '.join(SIMPLIFIERS)}, got {simplifier!r}")


def constants_to_initializers(graph: onnx.ModelProto) -> onnx.ModelProto:
    """Turn ``Constant`` nodes into initializers, in place. onnxsim leaves one Constant per Q/DQ scale and zero
    point, shared by many nodes (onnxslim makes them initializers itself); as initializers they are drawn inside the
    Q/DQ boxes in Netron instead of as long edges across the whole graph (which made the int8 backbone three times
    slower to render)."""
    kept = []
    for node in graph.graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.graph.node[:]
    graph.graph.node.extend(kept)
    return graph


def dynamo_export_error(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> str | None:
    """Try the default (dynamo) exporter of torch ≥ 2.9 on ``module``; return the first line of its error, or None
    if it exported. Used by the notebooks to show why bevnb passes ``dynamo=False``."""
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # it warns about every torchvision op it cannot find
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            torch.onnx.export(module, inputs, io.BytesIO(), dynamo=True)
    except Exception as exc:  # the point is to show whatever it raises: the outer error and its root cause
        root = exc
        while root.__cause__ is not None:
            root = root.__cause__
        text = f"{type(exc).__name__}: {_first_line(exc)}"
        return text if root is exc else f"{text} ← caused by {type(root).__name__}: {_first_line(root)}"
    finally:
        onnx_logger.setLevel(level)
    return None


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch colours its messages
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


@contextlib.contextmanager
def _precision_mode(model: nn.Module, precision: str) -> Iterator[None]:
    """fp16: quantizers (if any) disabled, as upstream's ``--fp16``. int8: pytorch-quantization's fake quant
    through torch's native ops, which export as QuantizeLinear/DequantizeLinear (``use_fb_fake_quant``); a ModelOpt
    model writes its Q/DQ by itself."""
    from . import quant

    if _quantized_by_modelopt(model):
        from . import quant_modelopt

        if precision == "fp16":
            with quant_modelopt.quantization_disabled(model):
                yield
        elif not quant_modelopt.is_calibrated(model):
            raise ExportError("int8 export needs a calibrated model: run bevnb.quant_modelopt.calibrate_modelopt first")
        else:
            yield
    elif precision == "int8":
        if not quant.is_calibrated(model):
            raise ExportError(
                "int8 export needs a quantized, calibrated model: run bevnb.quant.quantize_camera "
                "and bevnb.quant.calibrate first (or load a calibration)"
            )
        with quant.export_mode():
            yield
    elif quant.is_quantized(model):
        with quant.quantization_disabled(model):
            yield
    else:
        yield


def _quantized_by_modelopt(model: nn.Module) -> bool:
    """Whether ModelOpt quantized the model, asked without importing ModelOpt: before it is loaded, no model can
    hold its quantizers."""
    if "modelopt.torch.quantization" not in sys.modules:
        return False
    from . import quant_modelopt

    return quant_modelopt.is_quantized(model)


def _writable_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        what = "is not a folder" if out_dir.exists() else "does not exist"
        raise ExportError(f"output folder {out_dir} {what}; create it first")
    try:
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise ExportError(f"output folder {out_dir} is not writable ({exc.strerror})") from None
    return out_dir


def _save_atomically(graph: onnx.ModelProto, path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(graph, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved graph should be readable like any new file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
