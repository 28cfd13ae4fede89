"""The split runtime: ONNX Runtime → bev_pool → ONNX Runtime, and its comparison with the PyTorch model.

This is CUDA-BEVFusion's camera path in Python: ``camera-depth.cu`` (depth map from lidar points),
``camera-backbone.cu`` (TensorRT engine of camera.backbone.onnx), ``camera-bevpool.cu`` (the pooling kernel over a
plan made once per calibration) and ``camera-vtransform.cu`` (TensorRT engine of camera.vtransform.onnx), each timed
like upstream's stage timer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .bevpool import bev_pool, resolve_backend
from .config import R50, CameraConfig
from .export import BACKBONE_FILE, BACKBONE_IO, VTRANSFORM_FILE, VTRANSFORM_IO
from .geometry import depth_map_from_points, plan_bev_pool
from .metrics import compare
from .model import CameraBranch
from .tables import Table


def onnx_providers() -> list[str]:
    """ONNX Runtime's CUDA provider when this install has one and a GPU is present, else the CPU provider."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxGraph:
    """One ONNX file in an ONNX Runtime session, called with torch tensors and returning torch tensors."""

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file (export it with `bevnb export`)")
        self.session = ort.InferenceSession(str(self.path), providers=providers or onnx_providers())
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(self.input_names, inputs, strict=True)}
        return tuple(torch.from_numpy(np.asarray(o)) for o in self.session.run(self.output_names, feeds))


@dataclass
class SplitResult:
    """What one split forward produced: every stage's output and its wall time in milliseconds."""

    outputs: dict[str, Tensor]
    timings_ms: dict[str, float]

    @property
    def bev(self) -> Tensor:
        """The final camera BEV ``[1, C, X/2, Y/2]``."""
        return self.outputs["bev_downsampled"]


class SplitCamera:
    """The deployed camera branch: ``camera.backbone.onnx`` → bev_pool → ``camera.vtransform.onnx``.

    ``SplitCamera(onnx_dir)(sample)`` → ``SplitResult`` with ``depth_map``, ``features`` ``[N, fH, fW, C]``,
    ``depth_weights`` ``[N, D, fH, fW]``, ``bev`` ``[1, C, X, Y]`` and ``bev_downsampled`` ``[1, C, X/2, Y/2]``.
    """

    def __init__(
        self,
        onnx_dir: str | Path,
        bev_pool_backend: str = "auto",
        config: CameraConfig = R50,
        providers: list[str] | None = None,
    ) -> None:
        onnx_dir = Path(onnx_dir)
        self.backbone = OnnxGraph(onnx_dir / BACKBONE_FILE, providers)
        self.vtransform = OnnxGraph(onnx_dir / VTRANSFORM_FILE, providers)
        _check_io(self.backbone, BACKBONE_IO)
        _check_io(self.vtransform, VTRANSFORM_IO)
        resolve_backend(bev_pool_backend, "cpu")  # an unknown name fails here, not after the backbone has run
        self.bev_pool_backend = bev_pool_backend
        self.config = config

    def __call__(self, sample: dict) -> SplitResult:
        timings: dict[str, float] = {}
        out: dict[str, Tensor] = {}

        def timed(stage: str, fn, *args):
            start = time.perf_counter()
            result = fn(*args)
            timings[stage] = (time.perf_counter() - start) * 1e3
            return result

        plan = timed("plan (once per calibration)", plan_bev_pool, sample, self.config)
        out["depth_map"] = timed(
            "depth map",
            depth_map_from_points,
            sample["points"],
            sample["lidar2image"],
            sample["img_aug_matrix"],
            sample["lidar_aug_matrix"],
            self.config.image_size,
        )
        out["features"], out["depth_weights"] = timed("backbone", self.backbone, sample["img"], out["depth_map"])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        depth_weights, features = out["depth_weights"].to(device), out["features"].to(device)
        out["bev"] = timed("bev_pool", bev_pool, depth_weights, features, plan.to(device), self.bev_pool_backend).cpu()
        (out["bev_downsampled"],) = timed("vtransform", self.vtransform, out["bev"])
        return SplitResult(out, timings)


def _check_io(graph: OnnxGraph, io: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
    if (tuple(graph.input_names), tuple(graph.output_names)) != io:
        raise ValueError(
            f"{graph.path.name}: expected inputs {list(io[0])} and outputs {list(io[1])}, "
            f"got {graph.input_names} and {graph.output_names}"
        )


def graph_parity(model: CameraBranch, onnx_dir: str | Path, samples: dict[str, dict]) -> Table:
    """ONNX Runtime on each graph against PyTorch on the same inputs, per named sample: the backbone graph on the
    sample's image and depth map, the vtransform graph on the BEV that PyTorch pooled. One row per output."""
    backbone = OnnxGraph(Path(onnx_dir) / BACKBONE_FILE)
    vtransform = OnnxGraph(Path(onnx_dir) / VTRANSFORM_FILE)
    rows = []
    for name, sample in samples.items():
        with torch.no_grad():
            stages = model.forward_stages(sample)
            torch_outputs = {
                "camera_feature": stages["features"],
                "camera_depth_weights": stages["depth_weights"],
                "feat_out": stages["bev_downsampled"],
            }
        ort_outputs = dict(zip(backbone.output_names, backbone(sample["img"], stages["depth_map"]), strict=True))
        ort_outputs["feat_out"] = vtransform(stages["bev"])[0]
        for output, reference in torch_outputs.items():
            m = compare(reference, ort_outputs[output])
            rows.append((name, output, list(reference.shape), m["max_abs"], m["rel"], f"{m['cosine']:.9f}"))
    return Table(rows, ("sample", "output", "shape", "max abs err", "rel err", "cosine"), "ONNX Runtime vs PyTorch")


# --- the split against the monolithic model -----------------------------------------------------------------------

# Stage outputs compared, in pipeline order, with the name each has in the split (CUDA-BEVFusion's stage names).
STAGES = {
    "depth_map": "camera depth",
    "features": "camera_feature",
    "depth_weights": "camera_depth_weights",
    "bev": "bev_pool",
    "bev_downsampled": "vtransform (final)",
}
FP16_MAX_REL = 1e-3  # the float split must equal PyTorch to 1e-3 of the output scale at the end
INT8_MIN_COSINE = 0.98  # the int8 split must keep the final BEV's direction (fake-quant noise only)


@dataclass
class Validation:
    """Per sample, precision and stage: the errors of the split against the monolithic PyTorch model, and which
    tolerance checks failed (empty when the split is right)."""

    rows: list[tuple]
    timings_ms: dict[str, dict[str, float]]
    failures: list[str]
    outputs: dict[tuple[str, str], dict[str, Tensor]]  # (sample, "pytorch" | precision) → stage outputs

    @property
    def ok(self) -> bool:
        return not self.failures

    def table(self) -> Table:
        return Table(
            self.rows,
            ("sample", "precision", "stage", "shape", "max abs err", "rel err", "cosine", "SQNR dB"),
            "split pipeline vs PyTorch (rel err: max abs error / max |PyTorch|)",
        )

    def timing_table(self) -> Table:
        stages = list(next(iter(self.timings_ms.values())))
        rows = [(stage, *(t[stage] for t in self.timings_ms.values())) for stage in stages]
        return Table(rows, ("stage", *(f"{k} ms" for k in self.timings_ms)), "stage timings (first run)")


def validate(model: CameraBranch, splits: dict[str, SplitCamera], samples: dict[str, dict]) -> Validation:
    """Run each split (``{"fp16": SplitCamera(dir), "int8": …}``) on each named sample, compare every stage with
    ``model.forward_stages`` and check the tolerances: fp16 final rel err ≤ ``FP16_MAX_REL``, int8 final cosine
    ≥ ``INT8_MIN_COSINE``."""
    rows, timings, failures, outputs = [], {}, [], {}
    for name, sample in samples.items():
        with torch.no_grad():
            reference = outputs[name, "pytorch"] = model.forward_stages(sample)
        for precision, split in splits.items():
            result = split(sample)
            outputs[name, precision] = result.outputs
            timings.setdefault(precision, result.timings_ms)
            for stage, label in STAGES.items():
                m = compare(reference[stage], result.outputs[stage])
                cosine = f"{m['cosine']:.6f}"
                rows.append(
                    (name, precision, label, list(reference[stage].shape), m["max_abs"], m["rel"], cosine, m["sqnr_db"])
                )
            final = compare(reference["bev_downsampled"], result.bev)
            if precision == "fp16" and not final["rel"] <= FP16_MAX_REL:
                failures.append(f"{name}/fp16: final rel err {final['rel']:.3g} > {FP16_MAX_REL:g}")
            if precision == "int8" and not final["cosine"] >= INT8_MIN_COSINE:
                failures.append(f"{name}/int8: final cosine {final['cosine']:.4f} < {INT8_MIN_COSINE:g}")
    return Validation(rows, timings, failures, outputs)
