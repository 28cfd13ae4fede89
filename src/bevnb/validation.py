"""The proofs: what the tutorial claims, measured.

* ``graph_parity``: each exported graph in ONNX Runtime against PyTorch on the same inputs;
* ``validate``: the split pipeline (``pipeline.SplitCamera``) against the monolithic PyTorch model, stage by stage,
  with the tolerances the chapters state (``Validation``);
* ``evaluate_int8``: fp32 vs fake-quant PyTorch vs ONNX Runtime on the int8 graph, for both outputs, the pooled BEV
  and every Bottleneck (``Int8Accuracy``). Two int8 implementations never agree bit for bit: an element that rounds
  the other way is off by a whole step and tips elements of the next layer over rounding boundaries, so the
  difference between them grows through the backbone to the quantization-noise level;
* ``ensure_exported``: ``build/onnx/<precision>`` with both graphs of the model the inputs name (``bevnb.inputs``),
  exported only when stale.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import quant
from .bevpool import bev_pool
from .config import CameraConfig
from .export import MANIFEST, export_camera
from .geometry import plan_bev_pool
from .inputs import Inputs, config_tag, current
from .metrics import compare
from .model import CameraBranch, build_camera_model, state_digest
from .model.resnet import Bottleneck
from .paths import build_dir
from .pipeline import OnnxGraph, SplitCamera
from .subclass import BACKBONE_FILE, BACKBONE_IO, VTRANSFORM_FILE, SubclassCameraModule
from .tables import Table

OUTPUTS = BACKBONE_IO[1]  # (camera_feature, camera_depth_weights)


def ensure_exported(
    precision: str = "fp16",
    seed: int = 0,
    verbose: bool = True,
    config: CameraConfig | None = None,
    inputs: Inputs | None = None,
) -> Path:
    """``build/onnx/<precision>`` holding both graphs of ``inputs.model(seed)`` (default ``bevnb.inputs.current()``:
    ``BEVNB_CHECKPOINT`` or the seeded default weights, for ``BEVNB_RIG``'s configuration), exported only when the
    folder does not already hold exactly those (its ``export.json`` records the precision and a digest of the
    weights, grid buffers and amax). For int8 the model is ``quant.default_int8_model(inputs)``: calibrated on
    ``inputs.frames`` (the rig's synthetic scenes or the user's frames), reusing a saved calibration. ``config``
    (fp16 only) exports for another configuration than the rig's. A configuration other than R50 gets its own folder,
    tagged ``-<N>cam-<iH>x<iW>-<X>x<Y>``: ``build/onnx/fp16-5cam-384x1056-256x128``.

    Chapters 05, 07, 08 and 12 and the tests use it, so each can run on its own and none exports twice."""
    inputs = inputs or current()
    config = config or inputs.rig.config
    if precision == "int8":
        if config != inputs.rig.config:
            raise ValueError("an int8 export calibrates on its rig's frames: pass inputs=current(rig=...), not config")
        model = quant.default_int8_model(inputs, verbose, seed)
    else:
        model = build_camera_model(inputs.checkpoint, seed=seed, config=config)
    out_dir = build_dir("onnx", precision + config_tag(config))
    manifest = out_dir / MANIFEST
    expected = {"precision": precision, "state": state_digest(model), "files": [BACKBONE_FILE, VTRANSFORM_FILE]}
    fresh = manifest.is_file() and json.loads(manifest.read_text()) == expected
    if not (fresh and all((out_dir / name).is_file() for name in expected["files"])):
        export_camera(model, out_dir, precision, verbose=verbose)
    elif verbose:
        print(f"{out_dir}: up to date ({precision}, {inputs.checkpoint or f'seed {seed}'})")
    return out_dir


# --- graphs and the split against PyTorch ----------------------------------------------------------------------------


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


# --- what int8 costs -------------------------------------------------------------------------------------------------


def block_names(model: CameraBranch) -> list[str]:
    """The 16 Bottlenecks of the backbone: ``layer1.0`` … ``layer4.2``."""
    return [name for name, m in model.backbone.named_modules() if isinstance(m, Bottleneck)]


def block_output_tensor(block: str) -> str:
    """The name the TorchScript exporter gives a Bottleneck's output in ``camera.backbone.onnx``:
    ``/backbone/layer1/layer1.0/relu_2/Relu_output_0`` for ``layer1.0``."""
    return f"/backbone/{block.split('.')[0]}/{block}/relu_2/Relu_output_0"


@torch.no_grad()
def backbone_outputs(
    model: CameraBranch, img: Tensor, depth: Tensor, graph: OnnxGraph | None = None, blocks: bool = False
) -> dict[str, dict[str, Tensor]]:
    """The graph outputs ``camera_feature [N, fH, fW, C]`` and ``camera_depth_weights [N, D, fH, fW]`` computed
    three ways: ``fp32`` (quantizers off), ``fake-quant`` (PyTorch, pytorch-quantization's fake quant) and, given
    the int8 graph in ONNX Runtime, ``onnxruntime``. With ``blocks``, every Bottleneck output too (by block name;
    the graph must then expose them: ``OnnxGraph(path, extra_outputs=map(block_output_tensor, block_names(model)))``).
    """
    split = SubclassCameraModule(model).eval()
    names = block_names(model) if blocks else []
    captured: dict[str, Tensor] = {}
    hooks = [
        model.backbone.get_submodule(n).register_forward_hook(lambda m, args, output, n=n: captured.update({n: output}))
        for n in names
    ]
    out = {}
    try:
        for way, mode in (("fp32", quant.quantization_disabled(model)), ("fake-quant", quant.quiet_logs())):
            with mode:
                feat, depth_weights = split(img, depth)
            out[way] = {OUTPUTS[0]: feat, OUTPUTS[1]: depth_weights, **captured}
            captured.clear()
    finally:
        for hook in hooks:
            hook.remove()
    if graph is not None:
        ort = graph.outputs(img, depth)
        out["onnxruntime"] = {**{k: ort[k] for k in OUTPUTS}, **{n: ort[block_output_tensor(n)] for n in names}}
    return out


COMPARISONS = (("fake-quant", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fake-quant"))


@dataclass
class Int8Accuracy:
    """What int8 costs, worst case over the evaluated scenes.

    ``table``: per comparison (``COMPARISONS``, test vs reference) and tensor (``camera_feature``,
    ``camera_depth_weights``, ``bev`` pooled ``[1, 80, 360, 360]``): cosine, SQNR (dB), max |Δ|, max |Δ| / max |ref|;
    ``block_sqnr``: per comparison, the SQNR (dB) at each Bottleneck output (``blocks``) of the first camera:
    how the difference grows through the backbone."""

    table: Table
    blocks: list[str]
    block_sqnr: dict[str, list[float]]


def evaluate_int8(
    model: CameraBranch, int8_onnx: str | Path, samples: Iterable[dict], progress: bool = True
) -> Int8Accuracy:
    """fp32 PyTorch vs fake-quant PyTorch vs ONNX Runtime on the int8 graph, on sample dicts (held-out synthetic
    scenes): both graph outputs, the BEV after pooling (``bev_pool``, torch backend) and every block output."""
    from tqdm import tqdm

    names = block_names(model)
    graph = OnnxGraph(int8_onnx, extra_outputs=map(block_output_tensor, names))
    worst: dict[tuple[str, str], dict[str, float]] = {}
    for sample in tqdm(samples, desc="evaluating", unit="scene", disable=not progress):
        out = backbone_outputs(model, *quant.backbone_inputs(sample, model.config), graph, blocks=True)
        plan = plan_bev_pool(sample, model.config)
        for tensors in out.values():
            tensors["bev"] = bev_pool(tensors[OUTPUTS[1]], tensors[OUTPUTS[0]], plan)
        for test, ref in COMPARISONS:
            for tensor in (*OUTPUTS, "bev", *names):
                first = slice(None) if tensor in (*OUTPUTS, "bev") else slice(0, 1)  # blocks: camera 0 (speed)
                m = compare(out[ref][tensor][first], out[test][tensor][first])
                w = worst.setdefault((f"{test} vs {ref}", tensor), m)
                for key, pick in (("cosine", min), ("sqnr_db", min), ("max_abs", max), ("rel", max)):
                    w[key] = pick(w[key], m[key])
    if not worst:
        raise ValueError("evaluate_int8 needs at least one sample, got none")
    rows = [
        (pair, tensor, m["cosine"], m["sqnr_db"], m["max_abs"], m["rel"])
        for (pair, tensor), m in worst.items()
        if tensor not in names
    ]
    table = Table(
        rows,
        ("comparison", "tensor", "cosine", "SQNR (dB)", "max |Δ|", "max |Δ| / max |ref|"),
        title="int8 accuracy (worst over the held-out scenes)",
    )
    block_sqnr = {f"{t} vs {r}": [worst[(f"{t} vs {r}", n)]["sqnr_db"] for n in names] for t, r in COMPARISONS}
    return Int8Accuracy(table, names, block_sqnr)
