"""Today's int8 tools beside upstream's, measured: pytorch-quantization against TensorRT Model Optimizer
(``bevnb.quant`` / ``bevnb.quant_modelopt``), onnxsim against onnxslim (``export.SIMPLIFIERS``).

* ``placement_diff``: which tensors carry Q/DQ in one graph and not in the other, and which activations share one
  scale in each (tensors by the names the TorchScript exporter writes, the same for both toolkits because the
  module tree is the same; weights by their initializer name). A graph only shows equal scales: shared by design
  (one quantizer) or by coincidence (max calibration gives a MaxPool or a concat the max of what it reads);
* ``amax_agreement``: two amax dicts under upstream's names (``quant.amax_state``, ``quant_modelopt.upstream_amax``)
  name by name, as relative differences; ``amax_table`` sums several such comparisons up;
* ``int8_accuracy``: fp32 against int8 candidates (a quantized camera branch in PyTorch, or an int8 backbone graph
  in ONNX Runtime) on one sample: cosine and SQNR of both outputs and of the BEV pooled from them;
* ``compare_simplifiers``: each simplifier on each traced graph: nodes, Q/DQ nodes, distinct quantized tensors
  before and after, seconds, and ONNX Runtime parity against the traced graph.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from . import graphs
from .bevpool import bev_pool
from .export import SIMPLIFIERS, run_simplifier
from .geometry import depth_map, plan_bev_pool
from .metrics import compare
from .model import CameraBranch
from .pipeline import OnnxGraph
from .subclass import BACKBONE_IO, SubclassCameraModule
from .tables import Table

OUTPUTS = (*BACKBONE_IO[1], "bev")  # camera_feature, camera_depth_weights, the pooled BEV [1, 80, 360, 360]


# --- placement ---------------------------------------------------------------------------------------------------


@dataclass
class PlacementDiff:
    """Two int8 graphs side by side: Q/DQ node counts and quantized tensors (``counts``), the tensors quantized in
    only one of them (``only``), and the groups of activations that share one scale in each (``scale_groups``)."""

    labels: tuple[str, str]
    counts: dict[str, dict[str, int]]
    only: dict[str, list[str]]
    scale_groups: dict[str, list[tuple[str, ...]]]

    @property
    def same(self) -> bool:
        """Same quantized tensors and the same scale sharing."""
        a, b = self.labels
        return not self.only[a] and not self.only[b] and set(self.scale_groups[a]) == set(self.scale_groups[b])

    def table(self) -> Table:
        a, b = self.labels
        rows = [(what, self.counts[a][what], self.counts[b][what]) for what in self.counts[a]]
        groups = {label: set(self.scale_groups[label]) for label in self.labels}
        rows += [
            ("tensors quantized only here", len(self.only[a]), len(self.only[b])),
            ("scale-sharing groups only here", len(groups[a] - groups[b]), len(groups[b] - groups[a])),
        ]
        return Table(rows, ("", *self.labels), title="Q/DQ placement side by side")


def placement_diff(a: onnx.ModelProto, b: onnx.ModelProto, labels: tuple[str, str]) -> PlacementDiff:
    """Compare the Q/DQ placement of two int8 graphs of the same network (see the module docstring)."""
    counts, only, groups, tensors = {}, {}, {}, {}
    for label, model in zip(labels, (a, b), strict=True):
        found = graphs.quantized_tensors(model)
        ops = Counter(node.op_type for node in model.graph.node)
        by_scale: dict[tuple, list[str]] = {}
        for t in found:
            if t.kind == "activation":
                by_scale.setdefault((t.scales, t.zero_point), []).append(t.tensor)
        groups[label] = sorted(tuple(sorted(g)) for g in by_scale.values() if len(g) > 1)
        tensors[label] = {t.tensor for t in found}
        counts[label] = {
            "QuantizeLinear nodes": ops["QuantizeLinear"],
            "DequantizeLinear nodes": ops["DequantizeLinear"],
            "quantized weights (per channel)": sum(t.kind == "weight" for t in found),
            "quantized activations (per tensor)": sum(t.kind == "activation" for t in found),
            "activation groups sharing one scale": len(groups[label]),
        }
    for label, other in (labels, labels[::-1]):
        only[label] = sorted(tensors[label] - tensors[other])
    return PlacementDiff(labels, counts, only, groups)


# --- amax ----------------------------------------------------------------------------------------------------------


def amax_agreement(reference: Mapping[str, Tensor], test: Mapping[str, Tensor]) -> dict[str, float]:
    """For every amax name in both dicts: ``max |test − reference| / max |reference|`` (over the channels of a
    per-channel weight amax). ValueError when the names differ."""
    if set(reference) != set(test):
        missing = sorted(set(reference) ^ set(test))
        raise ValueError(f"the amax dicts name different quantizers ({len(missing)}, e.g. {missing[0]})")
    out = {}
    for name, ref in reference.items():
        ref, other = ref.detach().double().flatten(), test[name].detach().double().flatten()
        out[name] = ((other - ref).abs().max() / ref.abs().max()).item()
    return out


def amax_table(comparisons: Mapping[str, Mapping[str, float]]) -> Table:
    """One row per comparison (``amax_agreement``'s result by label): names compared, the worst relative difference
    of the weights and of the activations, the activations' median, and the worst name."""
    rows = []
    for label, diffs in comparisons.items():
        weights = [d for name, d in diffs.items() if "_weight_quantizer" in name]
        activations = [d for name, d in diffs.items() if "_weight_quantizer" not in name]
        worst = max(diffs, key=diffs.get) if max(diffs.values()) > 0 else "—"
        rows.append(
            (
                label,
                len(diffs),
                max(weights),
                max(activations),
                statistics.median(activations),
                worst.removesuffix("._amax"),
            )
        )
    columns = ("calibration", "names", "weights max rel Δ", "activations max rel Δ", "activations median", "worst")
    return Table(rows, columns, title="amax agreement (same names, relative difference)")


# --- accuracy ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def int8_accuracy(reference: CameraBranch, candidates: Mapping[str, nn.Module | str | Path], sample: dict) -> Table:
    """fp32 ``reference`` (a float camera branch) against each candidate on one sample dict: a quantized camera
    branch runs its fake quant in PyTorch, a path is an int8 ``camera.backbone.onnx`` run in ONNX Runtime. Per
    candidate: cosine and SQNR (dB) of ``camera_feature [N, fH, fW, C]``, ``camera_depth_weights [N, D, fH, fW]`` and
    the BEV ``[1, 80, 360, 360]`` pooled from them (``bev_pool``, torch backend)."""
    img, depth = sample["img"], depth_map(sample, reference.config)
    plan = plan_bev_pool(sample, reference.config)

    def outputs(candidate: nn.Module | str | Path) -> dict[str, Tensor]:
        if isinstance(candidate, nn.Module):
            feat, weights = SubclassCameraModule(candidate).eval()(img, depth)
        else:
            feat, weights = OnnxGraph(candidate)(img, depth)
        return dict(zip(OUTPUTS, (feat, weights, bev_pool(weights, feat, plan, backend="torch")), strict=True))

    fp32 = outputs(reference)
    rows = []
    for label, candidate in candidates.items():
        out = outputs(candidate)
        metrics = [compare(fp32[o], out[o]) for o in OUTPUTS]
        rows.append((label, *(v for m in metrics for v in (m["cosine"], m["sqnr_db"]))))
    columns = ("int8", *(f"{o} {what}" for o in OUTPUTS for what in ("cosine", "SQNR dB")))
    return Table(rows, columns, title="int8 against fp32 (one held-out scene)")


# --- simplifiers ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Simplified:
    """One simplifier on one traced graph. ``parity``: max over outputs of max |Δ| / max |traced|, both run in ONNX
    Runtime as written (graph optimizations off: with them on, ORT fuses the two int8 graphs' Q/DQ into different
    int8 kernels, whose rounding differs by whole steps)."""

    graph: str
    simplifier: str
    path: Path
    seconds: float
    nodes: tuple[int, int]  # before, after
    qdq_nodes: tuple[int, int]
    quantized: tuple[dict[str, int], dict[str, int]]
    kept_quantized: bool
    parity: float


def compare_simplifiers(
    traced: Mapping[str, str | Path], inputs: Sequence[Tensor], simplifiers: Sequence[str] = SIMPLIFIERS
) -> list[Simplified]:
    """Run each simplifier on each traced graph (by label), save the result beside it as ``<name>.<simplifier>.onnx``
    and measure it (``Simplified``): ONNX Runtime runs the traced and the simplified graph on ``inputs``."""
    results = []
    for label, path in traced.items():
        path = Path(path)
        raw = onnx.load(str(path))
        before = graphs.quantization_signature(raw)
        reference = OnnxGraph(path, optimize=False)(*inputs)
        for simplifier in simplifiers:
            start = time.perf_counter()
            simplified = run_simplifier(copy.deepcopy(raw), simplifier)
            seconds = time.perf_counter() - start
            out_path = path.with_name(f"{path.stem}.{simplifier}.onnx")
            onnx.save(simplified, str(out_path))
            outputs = OnnxGraph(out_path, optimize=False)(*inputs)
            results.append(
                Simplified(
                    graph=label,
                    simplifier=simplifier,
                    path=out_path,
                    seconds=seconds,
                    nodes=(len(raw.graph.node), len(simplified.graph.node)),
                    qdq_nodes=(_qdq_nodes(raw), _qdq_nodes(simplified)),
                    quantized=(graphs.count_quantized(raw), graphs.count_quantized(simplified)),
                    kept_quantized=graphs.quantization_signature(simplified) == before,
                    parity=max(compare(r, o)["rel"] for r, o in zip(reference, outputs, strict=True)),
                )
            )
    return results


def simplifier_table(results: Sequence[Simplified]) -> Table:
    rows = [
        (
            r.graph,
            r.simplifier,
            f"{r.nodes[0]} → {r.nodes[1]}",
            f"{r.qdq_nodes[0]} → {r.qdq_nodes[1]}",
            "{weights}+{activations}".format(**r.quantized[0])
            + " → "
            + "{weights}+{activations}".format(**r.quantized[1]),
            "yes" if r.kept_quantized else "NO",
            r.seconds,
            r.parity,
        )
        for r in results
    ]
    columns = ("graph", "simplifier", "nodes", "Q+DQ nodes", "quantized w+a", "all kept", "seconds", "ORT max rel Δ")
    return Table(rows, columns, title="simplifiers on the traced graphs")


def _qdq_nodes(model: onnx.ModelProto) -> int:
    return sum(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)
