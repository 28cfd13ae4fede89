"""Where two deployments part: the same scenes through two graph folders, side by side, stage by stage.

``diagnose(reference_dir, test_dir, seeds)`` runs the deployed detector of each folder (``pipeline.SplitDetector``:
``camera.backbone.onnx`` → bev_pool → ``camera.vtransform.onnx`` → ``head.bbox.onnx`` → boxes) on the same
held-out synthetic scenes and compares the two at every stage, in pipeline order:

* inside the camera graphs, at the **checkpoints** both graphs name alike (``checkpoints``: the last ReLU, Concat
  or Softmax output of every module, e.g. each Bottleneck's output; the TorchScript exporter names tensors by module,
  so an fp16 and an int8 export of one model share them);
* at the graphs' outputs (``camera_feature``, ``camera_depth_weights``), after bev_pool, at the vtransform's output
  and at each of the head's maps.

Per stage: the worst SQNR over the scenes (dB, test against reference; ``metrics.compare``), the lowest cosine, the
values that are not finite in the test where the reference's are (a float16 overflow shows here first), and for the
depth weights ``[N, D, fH, fW]`` the share of feature pixels whose most likely bin is the reference's. The first
stage whose SQNR falls below ``min_sqnr_db``, or that turns non-finite, is **where agreement breaks**. Each side's
boxes are scored against the scenes' ground truth (``evaluation.SceneScores``: nuScenes mAP, box counts), so one
report links the stage to the boxes lost.

One failure has no number to show in ONNX Runtime: a Concat or Add whose quantized inputs carry different scales
computes as well as one whose inputs share a scale, but TensorRT cannot keep it in int8. ``unshared_scales`` finds
such nodes in the test side's graphs, and the verdict names them.

Either side may run with half-precision numerics (``half``: ``numerics.half_rounded``), so the same call compares
fp32 with fp16 numerics, fp16 with int8, or two int8 graphs (two calibrations, with and without a fix).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from torch import Tensor

from .data import make_sample
from .evaluation import DetectorEvaluation, SceneScores
from .graphs import scope_of, stored_tensors
from .metrics import compare
from .model import SMALL_WIDTHS, HeadConfig
from .pipeline import SplitDetector
from .rig import Rig, as_rig
from .subclass import BACKBONE_FILE, BACKBONE_IO, HEAD_FILE, VTRANSFORM_FILE, head_io
from .tables import Table

CHECKPOINT_OPS = ("Relu", "Concat", "Softmax")
BOUNDARIES = ("camera_feature", "camera_depth_weights", "bev_pool", "vtransform output")  # between the graphs
MIN_SQNR_DB = 10.0  # below this a stage no longer agrees (the chapter shows where a healthy int8 graph sits)
DEPTH_STAGE = "camera_depth_weights"


def checkpoints(reference: onnx.ModelProto, test: onnx.ModelProto) -> list[tuple[str, str]]:
    """The inner tensors to compare two exports of one graph at → ``[(label, tensor name)]`` in the reference's node
    order: per module (a Bottleneck such as ``backbone.layer1.0``, or a top-level layer such as the stem's
    ``backbone.relu``), the output of its last ``CHECKPOINT_OPS`` node, where the test graph produces a tensor of the
    same name. Graph outputs are not among them (they are stages of their own)."""
    produced = {name for node in test.graph.node for name in node.output}
    outputs = {value.name for value in reference.graph.output}
    last: dict[tuple[str, ...], tuple[str, str]] = {}
    for node in reference.graph.node:
        name = node.output[0] if node.output else ""
        if node.op_type in CHECKPOINT_OPS and name in produced and name not in outputs:
            scope = scope_of(node.name)
            module = scope[:-1] if len(scope) > 2 else scope  # a block's ReLUs count as the block's
            last.pop(module, None)  # re-inserted: the order is that of each module's last checkpoint
            last[module] = (_module_name(module) or node.op_type, name)
    return list(last.values())


def unshared_scales(model: onnx.ModelProto) -> list[tuple[str, list[float]]]:
    """The Concat and Add nodes of a Q/DQ graph with two or more inputs read through a DequantizeLinear whose scales
    differ → ``[(node name, [scale of each such input])]``. TensorRT concatenates or adds int8 tensors only at one
    scale (it requantizes otherwise): a fusion lost, not a number changed. Upstream's Bottleneck Add, with one
    quantized input, is not among them."""
    producer = {out: node for node in model.graph.node for out in node.output}
    stored = stored_tensors(model)
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Concat", "Add"):
            continue
        scales = [
            float(numpy_helper.to_array(stored[p.input[1]]).reshape(-1)[0])
            for p in (producer.get(name) for name in node.input)
            if p is not None and p.op_type == "DequantizeLinear" and p.input[1] in stored
        ]
        if len(set(scales)) > 1:
            found.append((node.name, scales))
    return found


def _module_name(scope: tuple[str, ...]) -> str:
    """The exporter's scope → PyTorch's module name: ``("backbone", "layer1", "layer1.0")`` → ``backbone.layer1.0``
    (a Sequential's child is scoped ``layer1/layer1.0``)."""
    kept = [part for part, child in zip(scope, (*scope[1:], ""), strict=False) if not child.startswith(part + ".")]
    return ".".join(kept)


@dataclass
class StageAgreement:
    """One stage over all scenes: ``shape``, worst ``sqnr_db`` and ``cosine``, ``nonfinite`` values (test only), the
    reference's ``peak`` |value| (float16 ends at 65504), and for the depth weights the most-likely-bin agreement
    (``bins_agree`` of ``bins_counted`` feature pixels). ``first_camera``: SQNR and cosine on camera 0 alone (inside
    the backbone graph, where the tensors are largest; the other figures count every camera)."""

    stage: str
    shape: list[int]
    first_camera: bool = False
    peak: float = 0.0
    sqnr_db: float = math.inf
    cosine: float = 1.0
    nonfinite: int = 0
    bins_agree: int = 0
    bins_counted: int = 0

    def add(self, reference: Tensor, test: Tensor) -> None:
        if not bool(torch.isfinite(test).all()):
            self.nonfinite += int((~torch.isfinite(test) & torch.isfinite(reference)).sum())
        low, high = torch.aminmax(reference)
        self.peak = max(self.peak, -float(low), float(high))
        if self.nonfinite:
            self.sqnr_db, self.cosine = -math.inf, math.nan
            return
        m = compare(reference[:1], test[:1]) if self.first_camera else compare(reference, test)
        self.sqnr_db, self.cosine = min(self.sqnr_db, m["sqnr_db"]), min(self.cosine, m["cosine"])
        if self.stage == DEPTH_STAGE:
            self.bins_agree += int((reference.argmax(1) == test.argmax(1)).sum())
            self.bins_counted += reference.shape[0] * reference.shape[2] * reference.shape[3]

    @property
    def bin_agreement(self) -> float:
        """Share of feature pixels whose most likely depth bin is the reference's (nan for other stages)."""
        return self.bins_agree / self.bins_counted if self.bins_counted else math.nan

    def agrees(self, min_sqnr_db: float) -> bool:
        return self.nonfinite == 0 and self.sqnr_db >= min_sqnr_db


@dataclass
class Diagnosis:
    """What ``diagnose`` measured: ``stages`` in pipeline order, each side's ``scores`` (by label) and the
    threshold; ``broken`` is the first stage that does not agree (None when every stage does); ``unshared``: the
    test's camera graphs' Concat/Add nodes whose inputs do not share one scale (``unshared_scales``)."""

    labels: tuple[str, str]
    stages: list[StageAgreement]
    scores: dict[str, DetectorEvaluation]
    min_sqnr_db: float
    seeds: list[int]
    unshared: list[tuple[str, list[float]]]

    @property
    def broken(self) -> StageAgreement | None:
        return next((s for s in self.stages if not s.agrees(self.min_sqnr_db)), None)

    @property
    def lowest_sqnr_db(self) -> float:
        """The lowest SQNR over every stage."""
        return min(s.sqnr_db for s in self.stages)

    @property
    def depth_bin_agreement(self) -> float:
        """Share of feature pixels whose most likely depth bin is the reference's (``StageAgreement.bin_agreement``)."""
        return self.stage(DEPTH_STAGE).bin_agreement

    def stage(self, name: str) -> StageAgreement:
        """The stage called ``name`` (``bev_pool``, ``camera_feature``, ``backbone.layer1.0`` …)."""
        return next(s for s in self.stages if s.stage == name)

    def verdict(self) -> str:
        """One line: where agreement breaks, and the boxes and mAP of both sides."""
        ref, test = (self.scores[label] for label in self.labels)

        def boxes(e: DetectorEvaluation) -> str:
            return f"{sum(e.predicted.values())} boxes, mAP {e.mean_ap:.3f}"

        where = (
            f"agreement breaks at {self.broken.stage} (SQNR {self.broken.sqnr_db:.1f} dB"
            f"{f', {self.broken.nonfinite} non-finite values' if self.broken.nonfinite else ''}"
            f" < {self.min_sqnr_db:g} dB)"
            if self.broken
            else f"every stage agrees (SQNR ≥ {self.min_sqnr_db:g} dB)"
        )
        fusion = (
            f"; {len(self.unshared)} Concat/Add with inputs at different scales, TensorRT cannot keep them in int8"
            f" (first: {self.unshared[0][0]})"
            if self.unshared
            else ""
        )
        return f"{where}{fusion}; {self.labels[0]}: {boxes(ref)}; {self.labels[1]}: {boxes(test)}"

    def table(self) -> Table:
        """Every stage: shape, worst SQNR and cosine, non-finite values, depth-bin agreement, and whether it agrees."""
        first = self.broken
        rows = [
            (
                s.stage,
                s.shape,
                s.peak,
                s.sqnr_db,
                s.cosine,
                s.nonfinite,
                f"{100 * s.bin_agreement:.2f}" if s.bins_counted else "",
                "yes" if s.agrees(self.min_sqnr_db) else ("NO, first" if s is first else "no"),
            )
            for s in self.stages
        ]
        columns = ("stage", "shape", "peak |x|", "worst SQNR dB", "worst cosine", "non-finite", "same bin %", "agrees")
        title = (
            f"{self.labels[1]} against {self.labels[0]}, stage by stage ({_scenes(len(self.seeds))}; SQNR and "
            "cosine inside the backbone graph on camera 0)"
        )
        return Table(rows, columns, title)

    def boxes_table(self) -> Table:
        """Per side and class: nuScenes AP (mean over the thresholds), ATE, ASE, AOE and the boxes found."""
        rows = []
        for label in self.labels:
            e = self.scores[label]
            for name, m in e.metrics.classes.items():
                rows.append((label, name, m.mean_ap, m.ate, m.ase, m.aoe, e.ground_truth[name], e.predicted[name]))
        columns = ("graphs", "class", "AP", "ATE m", "ASE", "AOE rad", "GT boxes", "predicted")
        return Table(rows, columns, f"boxes against the ground truth ({_scenes(len(self.seeds))})")


def _scenes(n: int) -> str:
    return f"{n} held-out scene{'s' if n != 1 else ''}"


def side_summary(d: Diagnosis) -> dict:
    """The test side of ``d`` as plain JSON (what ``benchmarks/precision_by_detection.py`` records): its
    evaluation (``DetectorEvaluation.to_json``), the SQNR (dB) at each of ``BOUNDARIES`` and the lowest over the
    head's heatmaps, the lowest over every stage, the depth-bin agreement, the first stage that does not agree, and
    the Concat/Add nodes whose inputs do not share one scale."""
    heatmaps = min(s.sqnr_db for s in d.stages if s.stage.startswith("heatmap_"))
    return {
        "evaluation": d.scores[d.labels[1]].to_json(),
        "sqnr_db": {b: d.stage(b).sqnr_db for b in BOUNDARIES} | {"heatmaps": heatmaps},
        "lowest_sqnr_db": d.lowest_sqnr_db,
        "depth_bin_agreement": d.depth_bin_agreement,
        "first_break": d.broken.stage if d.broken else None,
        "unshared_scales": [node for node, _ in d.unshared],
    }


def precision_table(fp32: DetectorEvaluation, sides: dict[str, dict], title: str = "") -> Table:
    """fp32 and each recorded side (``side_summary``, by label): mAP and AP per class, box count, SQNR against fp32
    at the graph boundaries and the heatmaps, depth-bin agreement (%), the first stage that does not agree, and the
    Concat/Add nodes whose inputs carry two scales."""
    names = list(fp32.metrics.classes)
    rows = [
        (
            "fp32",
            fp32.mean_ap,
            *(fp32.metrics.classes[n].mean_ap for n in names),
            sum(fp32.predicted.values()),
            *[""] * (len(BOUNDARIES) + 4),
        )
    ]
    for label, side in sides.items():
        e = DetectorEvaluation.from_json(side["evaluation"])
        rows.append(
            (
                label,
                e.mean_ap,
                *(e.metrics.classes[n].mean_ap for n in names),
                sum(e.predicted.values()),
                *(side["sqnr_db"][b] for b in (*BOUNDARIES, "heatmaps")),
                f"{100 * side['depth_bin_agreement']:.2f}",
                side["first_break"] or "none",
                len(side["unshared_scales"]),
            )
        )
    columns = (
        "graphs",
        "mAP",
        *(f"AP {n}" for n in names),
        "boxes",
        *(f"SQNR {b} dB" for b in BOUNDARIES),
        "SQNR heatmaps dB",
        "same depth bin %",
        "first break",
        "Concat/Add at two scales",
    )
    return Table(rows, columns, title or "precisions judged by detection (SQNR against fp32)")


@dataclass(frozen=True)
class Graphs:
    """One side of a comparison: a folder with ``camera.backbone.onnx``, ``camera.vtransform.onnx`` and
    ``head.bbox.onnx`` (or the head graph in ``head_dir``), run with fp32 or with half-precision numerics."""

    folder: Path
    half: bool = False
    label: str = ""
    head_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "head_dir", Path(self.head_dir) if self.head_dir else None)

    @property
    def name(self) -> str:
        return self.label or f"{self.folder}{' (fp16 numerics)' if self.half else ''}"

    def path(self, file: str) -> Path:
        path = (self.head_dir or self.folder) / file if file == HEAD_FILE else self.folder / file
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such ONNX file{' (give the head graph folder)' if file == HEAD_FILE else ''}"
            )
        return path


def diagnose(
    reference: Graphs | str | Path,
    test: Graphs | str | Path,
    seeds: Iterable[int],
    rig: Rig | str | Path | None = None,
    head: HeadConfig = SMALL_WIDTHS,
    min_sqnr_db: float = MIN_SQNR_DB,
    progress: bool = True,
) -> Diagnosis:
    """Compare the deployed detectors of two graph folders (``Graphs``, or a folder run in fp32) on the synthetic
    scenes of ``seeds`` for ``rig`` (see the module docstring)."""
    return diagnose_many(reference, [test], seeds, rig, head, min_sqnr_db, progress)[0]


def diagnose_many(
    reference: Graphs | str | Path,
    tests: Sequence[Graphs | str | Path],
    seeds: Iterable[int],
    rig: Rig | str | Path | None = None,
    head: HeadConfig = SMALL_WIDTHS,
    min_sqnr_db: float = MIN_SQNR_DB,
    progress: bool = True,
) -> list[Diagnosis]:
    """``diagnose`` of each of ``tests`` against one ``reference``, in one pass over the scenes (the reference runs
    once per scene)."""
    from tqdm import tqdm

    rig = as_rig(rig)
    reference, *tests = (g if isinstance(g, Graphs) else Graphs(Path(g)) for g in (reference, *tests))
    names = [g.name for g in (reference, *tests)]
    if len(set(names)) != len(names):
        raise ValueError(f"two sides are the same graphs with the same numerics: {names}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("diagnose needs at least one scene")
    reference_graphs = {f: _load(reference, f) for f in (BACKBONE_FILE, VTRANSFORM_FILE)}
    test_graphs = [{f: _load(t, f) for f in reference_graphs} for t in tests]
    for g in (reference, *tests):
        g.path(HEAD_FILE)  # the head graph is compared at its outputs (its maps) only, but must be there
    inner = [{f: checkpoints(reference_graphs[f], g[f]) for f in g} for g in test_graphs]  # {file: [(label, tensor)]}
    unshared = [[found for g in graphs.values() for found in unshared_scales(g)] for graphs in test_graphs]
    wanted = {file: list(dict.fromkeys(t for pairs in inner for _, t in pairs[file])) for file in inner[0]}

    def split(g: Graphs, extra: dict[str, list[str]]) -> SplitDetector:
        return SplitDetector(
            g.folder, config=rig.config, head=head, head_dir=g.head_dir, half=g.half, extra_outputs=extra
        )

    scores = [SceneScores(split(reference, wanted))]
    scores += [
        SceneScores(split(t, {f: [n for _, n in pairs] for f, pairs in i.items()}))
        for t, i in zip(tests, inner, strict=True)
    ]
    stages: list[dict[str, StageAgreement]] = [{} for _ in tests]
    for seed in tqdm(seeds, desc=f"scenes, {len(scores)} sides", disable=not progress):
        sample = make_sample("synthetic", seed=seed, rig=rig)
        ref = scores[0].add(sample, seed)[0]
        for agreed, side, pairs in zip(stages, scores[1:], inner, strict=True):
            out = side.add(sample, seed)[0]  # one side at a time: each holds every camera's inner tensors
            for stage, key in _stage_keys(pairs, head):
                if stage not in agreed:
                    in_backbone = any(key == tensor for _, tensor in pairs[BACKBONE_FILE])
                    agreed[stage] = StageAgreement(stage, list(ref[key].shape), first_camera=in_backbone)
                agreed[stage].add(ref[key], out[key])
    res = [s.result() for s in scores]
    return [
        Diagnosis((names[0], name), list(agreed.values()), {names[0]: res[0], name: result}, min_sqnr_db, seeds, found)
        for name, agreed, result, found in zip(names[1:], stages, res[1:], unshared, strict=True)
    ]


def _load(graphs: Graphs, file: str) -> onnx.ModelProto:
    return onnx.load(str(graphs.path(file)), load_external_data=False)


def _stage_keys(inner: dict[str, list[tuple[str, str]]], head: HeadConfig) -> list[tuple[str, str]]:
    """``(stage label, key in SplitResult.outputs)`` in pipeline order."""
    return [
        *inner[BACKBONE_FILE],
        (BACKBONE_IO[1][0], "features"),
        (BACKBONE_IO[1][1], "depth_weights"),
        ("bev_pool", "bev"),
        *inner[VTRANSFORM_FILE],
        ("vtransform output", "bev_downsampled"),
        *((name, name) for name in head_io(head)[1]),
    ]
