"""The split runtime: ONNX Runtime → bev_pool → ONNX Runtime (its proofs against PyTorch are in ``validation``), and
after it the head graph and the decoding to boxes (``SplitDetector``).

This is CUDA-BEVFusion's camera path in Python: ``camera-depth.cu`` (depth map from lidar points),
``camera-backbone.cu`` (TensorRT engine of camera.backbone.onnx), ``camera-bevpool.cu`` (the pooling kernel over a
plan made once per calibration) and ``camera-vtransform.cu`` (TensorRT engine of camera.vtransform.onnx), each timed
like upstream's stage timer; then ``head.bbox.onnx`` (the head's TensorRT engine) and the box decoding on the host.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .bevpool import bev_pool, resolve_backend
from .config import R50, CameraConfig
from .geometry import depth_map, plan_bev_pool
from .model import SMALL_WIDTHS, BoxCoder, HeadConfig, decode
from .subclass import (
    BACKBONE_FILE,
    BACKBONE_IO,
    HEAD_FILE,
    VTRANSFORM_FILE,
    VTRANSFORM_IO,
    head_io,
    head_io_shapes,
    io_shapes,
)


def onnx_providers() -> list[str]:
    """ONNX Runtime's CUDA provider when this install has one and a GPU is present, else the CPU provider."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxGraph:
    """One ONNX file in an ONNX Runtime session (``onnx_providers``), called with torch tensors and returning torch
    tensors: ``graph(*inputs)`` → the graph's outputs, in order.

    * ``extra_outputs``: names of inner tensors to expose as well (after the graph's own outputs), e.g. a block's
      output in the int8 backbone; they are added to an in-memory copy of the graph;
    * ``optimize=False``: ONNX Runtime's graph rewrites off, so QuantizeLinear/DequantizeLinear/Conv run as written
      instead of being fused into int8 kernels;
    * ``half=True``: half-precision numerics (``numerics.half_rounded``: every float tensor stored in float16,
      computed in float32), a CPU stand-in for TensorRT's fp16 layers.
    """

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        extra_outputs: Iterable[str] = (),
        optimize: bool = True,
        half: bool = False,
    ) -> None:
        import onnx
        import onnxruntime as ort

        from .numerics import half_rounded

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file (export it with `bevnb export`)")
        options = ort.SessionOptions()
        # No CPU memory arena: an arena keeps each session's peak allocation for good, and a diagnosis holds a dozen
        # sessions at once (with arenas, ten sides of benchmarks/precision_by_detection.py outgrew 24 GiB).
        options.enable_cpu_mem_arena = False
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        extra_outputs = list(extra_outputs)
        if extra_outputs or half:
            graph = half_rounded(onnx.load(str(self.path))) if half else onnx.load(str(self.path))
            for name in extra_outputs:
                graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            source: str | bytes = graph.SerializeToString()
        else:
            source = str(self.path)
        self.session = ort.InferenceSession(source, options, providers=providers or onnx_providers())
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.own_output_names = self.output_names[: len(self.output_names) - len(extra_outputs)]  # the file's
        self.shapes = {t.name: tuple(t.shape) for t in (*self.session.get_inputs(), *self.session.get_outputs())}

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(self.input_names, inputs, strict=True)}
        return tuple(torch.from_numpy(np.asarray(o)) for o in self.session.run(self.output_names, feeds))

    def outputs(self, *inputs: Tensor) -> dict[str, Tensor]:
        """``graph(*inputs)`` by output name."""
        return dict(zip(self.output_names, self(*inputs), strict=True))


@dataclass
class SplitResult:
    """What one split forward produced: every stage's output and its wall time in milliseconds; ``detections``
    (``boxes [K, 9]``, ``scores [K]``, ``labels [K]``) when the head ran (``SplitDetector``)."""

    outputs: dict[str, Tensor]
    timings_ms: dict[str, float]
    detections: dict[str, Tensor] | None = None

    @property
    def bev(self) -> Tensor:
        """The final camera BEV ``[1, C, X/2, Y/2]``."""
        return self.outputs["bev_downsampled"]


class SplitCamera:
    """The deployed camera branch: ``camera.backbone.onnx`` → bev_pool → ``camera.vtransform.onnx``.

    ``SplitCamera(onnx_dir, config=rig.config)(sample)`` → ``SplitResult`` with ``depth_map``, ``features``
    ``[N, fH, fW, C]``, ``depth_weights`` ``[N, D, fH, fW]``, ``bev`` ``[1, C, X, Y]`` and ``bev_downsampled``
    ``[1, C, X/2, Y/2]``. The graphs' names and static shapes must be those ``config`` implies
    (``subclass.io_shapes``): graphs exported for another rig fail here, in one line.

    ``half``: both graphs with half-precision numerics (``OnnxGraph``), and bev_pool's output rounded to float16 as
    CUDA-BEVFusion's ``bevpool_half_pack10_kernel`` stores it (half in, float32 sums, half out: a sum beyond ±65504
    becomes ±inf there); ``extra_outputs``:
    inner tensors to expose (``{file name: tensor names}``), added to ``outputs`` under their tensor names.
    """

    def __init__(
        self,
        onnx_dir: str | Path,
        bev_pool_backend: str = "auto",
        config: CameraConfig = R50,
        providers: list[str] | None = None,
        half: bool = False,
        extra_outputs: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        onnx_dir = Path(onnx_dir)
        extra = extra_outputs or {}
        self.backbone = OnnxGraph(onnx_dir / BACKBONE_FILE, providers, extra.get(BACKBONE_FILE, ()), half=half)
        self.vtransform = OnnxGraph(onnx_dir / VTRANSFORM_FILE, providers, extra.get(VTRANSFORM_FILE, ()), half=half)
        shapes = io_shapes(config)
        _check_io(self.backbone, BACKBONE_IO, shapes[BACKBONE_FILE])
        _check_io(self.vtransform, VTRANSFORM_IO, shapes[VTRANSFORM_FILE])
        resolve_backend(bev_pool_backend, "cpu")  # an unknown name fails here, not after the backbone has run
        self.bev_pool_backend = bev_pool_backend
        self.config = config
        self.half = half

    def __call__(self, sample: dict) -> SplitResult:
        timings: dict[str, float] = {}
        out: dict[str, Tensor] = {}

        def timed(stage: str, fn, *args):
            start = time.perf_counter()
            result = fn(*args)
            timings[stage] = (time.perf_counter() - start) * 1e3
            return result

        plan = timed("plan (once per calibration)", plan_bev_pool, sample, self.config)
        out["depth_map"] = timed("depth map", depth_map, sample, self.config)
        out["features"], out["depth_weights"], *inner = timed(
            "backbone", self.backbone, sample["img"], out["depth_map"]
        )
        out.update(zip(self.backbone.output_names[2:], inner, strict=True))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        depth_weights, features = out["depth_weights"].to(device), out["features"].to(device)
        out["bev"] = timed("bev_pool", bev_pool, depth_weights, features, plan.to(device), self.bev_pool_backend).cpu()
        if self.half:
            out["bev"] = out["bev"].half().float()
        out["bev_downsampled"], *inner = timed("vtransform", self.vtransform, out["bev"])
        out.update(zip(self.vtransform.output_names[1:], inner, strict=True))
        return SplitResult(out, timings)


class SplitDetector:
    """The deployed detector: ``SplitCamera`` (backbone graph → bev_pool → vtransform graph), then ``head.bbox.onnx``
    and ``box_coder.decode`` on its maps, as CUDA-BEVFusion decodes on the host after the head's engine.

    ``SplitDetector(onnx_dir, config=rig.config)(sample)`` → ``SplitResult`` whose ``outputs`` add the head's maps
    by their graph names (``heatmap_0 [1, 1, X', Y']`` …) and whose ``detections`` are the boxes. ``head_dir`` is
    where ``head.bbox.onnx`` lies (default ``onnx_dir``); its names and static shapes must be those of
    ``subclass.head_io_shapes(config, head)``. ``half`` and ``extra_outputs``: as ``SplitCamera``'s, for all three
    graphs.
    """

    def __init__(
        self,
        onnx_dir: str | Path,
        bev_pool_backend: str = "auto",
        config: CameraConfig = R50,
        head: HeadConfig = SMALL_WIDTHS,
        head_dir: str | Path | None = None,
        providers: list[str] | None = None,
        half: bool = False,
        extra_outputs: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.camera = SplitCamera(onnx_dir, bev_pool_backend, config, providers, half, extra_outputs)
        extra = (extra_outputs or {}).get(HEAD_FILE, ())
        self.head = OnnxGraph(Path(head_dir or onnx_dir) / HEAD_FILE, providers, extra, half=half)
        _check_io(self.head, head_io(head), head_io_shapes(config, head))
        self.head_config = head
        self.coder = BoxCoder.for_config(config, head)

    @property
    def config(self) -> CameraConfig:
        return self.camera.config

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes the head detects, one task each (nuScenes names)."""
        return self.head_config.class_names

    def __call__(self, sample: dict) -> SplitResult:
        result = self.camera(sample)
        start = time.perf_counter()
        flat = self.head.outputs(result.bev)
        result.timings_ms["head"] = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        tasks = self.head_config.tasks
        maps = [{name: flat[f"{name}_{t}"] for name, _ in self.head_config.heads(t)} for t in range(len(tasks))]
        result.detections = decode(maps, self.coder)[0]
        result.timings_ms["decode"] = (time.perf_counter() - start) * 1e3
        result.outputs.update(flat)
        return result


def _check_io(
    graph: OnnxGraph, io: tuple[tuple[str, ...], tuple[str, ...]], shapes: dict[str, tuple[int, ...]]
) -> None:
    if (tuple(graph.input_names), tuple(graph.own_output_names)) != io:
        raise ValueError(
            f"{graph.path.name}: expected inputs {list(io[0])} and outputs {list(io[1])}, "
            f"got {graph.input_names} and {graph.own_output_names}"
        )
    wrong = [f"{k} {list(graph.shapes[k])}≠{list(v)}" for k, v in shapes.items() if graph.shapes[k] != v]
    if wrong:
        raise ValueError(f"{graph.path.name} was exported for another configuration (rig): {', '.join(wrong)}")
