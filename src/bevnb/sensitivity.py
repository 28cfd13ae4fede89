"""Where int8 hurts: each quantized unit of the camera branch left in float on its own, ranked by how much that
alone brings the outputs back towards fp32; then the shortest head of that ranking which, left in float, brings
the pooled BEV to a target SQNR (upstream's ``build_sensitivity_profile`` does the converse: one layer quantized at
a time).

* ``sensitivity_units``: the stem conv, each Bottleneck (its convs, their weights and its residual quantizer), each
  neck and vtransform conv, and, on their own, the quantizers shared across those units (layer2's output, read by
  ``layer3[0]``, ``quant_concat1`` and ``lateral_convs[0]``; likewise layer3's). A unit's Q/DQ pairs are those its
  quantizers write into the graph, so leaving a set in float removes exactly their sum (``expected_qdq``).
* ``analyse``: on one held-out scene and a camera subset, the SQNR (dB) against fp32 of ``camera_feature``,
  ``camera_depth_weights`` and the BEV pooled from those cameras, with all of int8 on and with each unit left in
  float. To stay within a CPU budget, fp32 runs once, and every unit's run replays from the all-int8 run the
  Bottleneck and neck outputs computed before that unit's first quantizer (they cannot depend on it).
* ``Sensitivity.shortest_float_set``: the ranking's head, grown one unit at a time until the pooled BEV reaches the
  target SQNR (greedy: the shortest head of this ranking, not a search over all subsets).
* ``analyse_by_detection``: the same one-unit-in-float runs judged by detection, on every camera of several held-out
  scenes: the detector's nuScenes mAP over the scenes (``evaluation.SceneScores``), each scene's own mAP (the
  spread) and the pooled BEV's SQNR per scene, for fp32, all of int8 and each unit in float
  (``DetectionSensitivity``, plain data that a benchmark records and a chapter renders);
  ``float_set_for_map_loss`` grows the head of its ranking until the mAP lost to int8 is within a target.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, stdev

import torch
from torch import Tensor, nn

from . import quant
from .bevpool import bev_pool
from .data import make_sample
from .detection import evaluate
from .evaluation import DetectorEvaluation, SceneScores
from .geometry import plan_bev_pool
from .metrics import compare
from .model import CameraBranch, DetectionHead, Detector
from .model.resnet import Bottleneck
from .rig import Rig, as_rig
from .subclass import BACKBONE_IO, SubclassCameraModule
from .tables import Table

OUTPUTS = (*BACKBONE_IO[1], "bev")  # camera_feature, camera_depth_weights, the BEV pooled from the camera subset
FP32, ALL_INT8 = "fp32", "none (all int8)"  # the two reference rows of a DetectionSensitivity


@dataclass
class Unit:
    """One thing that can be left in float: its quantizers, every site that uses them, and the Q/DQ pairs they write
    into ``camera.backbone.onnx``."""

    name: str
    quantizers: list[nn.Module]
    sites: list[str]
    qdq_pairs: int


def sensitivity_units(model: CameraBranch) -> list[Unit]:
    """The units of a ``quant.quantize_camera`` model in the order of their first quantizer call (see the module
    docstring): a quantizer belongs to the Bottleneck its sites are in, else to the conv it serves; one whose sites
    fall in several units is a unit of its own, ``shared <owner>``."""
    blocks = [name for name, m in model.named_modules() if isinstance(m, Bottleneck)]

    def owner(site: str) -> str:
        module = site.rpartition(".")[0]
        return next((b for b in blocks if module == b or module.startswith(b + ".")), module)

    calls = quant.quantizer_calls(model)
    tensors: dict[str, set[int]] = {}
    for name, tensor in calls:
        tensors.setdefault(name, set()).add(tensor)
    first = {id(q): name for name, q in quant.quantizers(model).items()}
    units: dict[str, Unit] = {}
    for qid, sites in quant.quantizer_names(model).items():
        owners = {owner(site) for site in sites}
        key = owners.pop() if len(owners) == 1 else f"shared {quant.quantizer_owner(sites[0])}"
        unit = units.setdefault(key, Unit(key, [], [], 0))
        unit.quantizers.append(model.get_submodule(first[qid]))
        unit.sites += sites
        unit.qdq_pairs += len(tensors.get(first[qid], ()))
    order = {name: i for i, (name, _) in reversed(list(enumerate(calls)))}
    return sorted(units.values(), key=lambda u: min(order[first[id(q)]] for q in u.quantizers))


def left_in_float(units: Sequence[Unit]) -> contextlib.AbstractContextManager[None]:
    """The units' quantizers disabled (their layers run in float, their Q/DQ pairs leave the export); restored
    after."""
    return quant.quantizers_disabled(q for unit in units for q in unit.quantizers)


@dataclass
class Sensitivity:
    """SQNR (dB, against fp32) of ``OUTPUTS`` with everything quantized (``baseline``) and with each unit alone left
    in float (``sqnr``, by unit name), plus what ``shortest_float_set`` needs to run more forwards."""

    units: list[Unit]
    baseline: dict[str, float]
    sqnr: dict[str, dict[str, float]]
    cameras: tuple[int, ...]
    _run: Callable[[Sequence[Unit]], dict[str, float]] = field(repr=False)

    def ranking(self) -> list[Unit]:
        """Units by pooled-BEV SQNR with that unit in float, highest (the most harmful in int8) first."""
        return sorted(self.units, key=lambda u: self.sqnr[u.name]["bev"], reverse=True)

    def table(self, top: int | None = None) -> Table:
        """The ranking (its first ``top`` units), SQNR of every output and the BEV gain; the all-int8 row last."""
        rows = [
            (
                rank,
                unit.name,
                len(unit.sites),
                unit.qdq_pairs,
                *(self.sqnr[unit.name][o] for o in OUTPUTS),
                self.sqnr[unit.name]["bev"] - self.baseline["bev"],
            )
            for rank, unit in enumerate(self.ranking()[:top], 1)
        ]
        rows.append(("", "none (all int8)", "", "", *(self.baseline[o] for o in OUTPUTS), 0.0))
        return Table(
            rows,
            ("rank", "left in float", "sites", "Q/DQ pairs", *(f"{o} SQNR dB" for o in OUTPUTS), "BEV gain dB"),
            title=f"sensitivity: one unit in float at a time (cameras {list(self.cameras)}; SQNR against fp32)",
        )

    def sqnr_with(self, units: Sequence[Unit]) -> dict[str, float]:
        """SQNR of ``OUTPUTS`` with all of ``units`` left in float together."""
        return self._run(units)

    def shortest_float_set(self, target_db: float) -> tuple[list[Unit], list[float]]:
        """The shortest head of ``ranking()`` whose units, left in float together, bring the pooled BEV to
        ``target_db``, and the BEV SQNR after each unit was added. ValueError when even the whole ranking does not."""
        chosen: list[Unit] = []
        path = []
        for unit in self.ranking():
            chosen.append(unit)
            path.append(self.sqnr_with(chosen)["bev"])
            if path[-1] >= target_db:
                return chosen, path
        raise ValueError(f"the pooled BEV stays below {target_db} dB even with every unit in float")


@torch.no_grad()
def analyse(model: CameraBranch, sample: dict, cameras: Sequence[int] = (0,), progress: bool = True) -> Sensitivity:
    """The sensitivity of a calibrated ``quant.quantize_camera`` model on one sample dict (a held-out scene), for
    the cameras in ``cameras`` (their images, depth maps and share of the pooled BEV ``[1, 80, 360, 360]``)."""
    from tqdm import tqdm

    if not quant.is_calibrated(model):
        raise ValueError("sensitivity needs a quantized, calibrated model (bevnb.quant.prepare_int8)")
    cameras = tuple(cameras)
    N = model.config.num_cameras
    if not cameras or any(not 0 <= c < N for c in cameras):
        raise ValueError(f"cameras must be a non-empty subset of 0 … {N - 1}, got {list(cameras)}")
    img, depth = (t[:, list(cameras)] for t in quant.backbone_inputs(sample, model.config))
    plan = plan_bev_pool(sample, model.config)
    fH, fW = model.config.feature_size
    camera_of_point = plan.ranks_depth.long() // (plan.depth_bins * fH * fW)
    plan = plan.select_points(torch.isin(camera_of_point, torch.tensor(cameras)))
    split = SubclassCameraModule(model).eval()
    units = sensitivity_units(model)

    def outputs() -> dict[str, Tensor]:
        feat, weights = split(img, depth)
        full_feat = feat.new_zeros(N, *feat.shape[1:])
        full_weights = weights.new_zeros(N, *weights.shape[1:])
        full_feat[list(cameras)], full_weights[list(cameras)] = feat, weights
        bev = bev_pool(full_weights, full_feat, plan, backend="torch")
        return dict(zip(OUTPUTS, (feat, weights, bev), strict=True))

    with quant.quiet_logs(), quant.quantization_disabled(model):
        reference = outputs()
    with quant.quiet_logs(), _recording(model, units) as record:
        quantized = outputs()

    def run(float_units: Sequence[Unit]) -> dict[str, float]:
        start = min(record.first_call[unit.name] for unit in float_units)
        with quant.quiet_logs(), left_in_float(float_units), record.replaying_before(start):
            out = outputs()
        return {o: compare(reference[o], out[o])["sqnr_db"] for o in OUTPUTS}

    baseline = {o: compare(reference[o], quantized[o])["sqnr_db"] for o in OUTPUTS}
    sqnr = {unit.name: run([unit]) for unit in tqdm(units, desc="one unit in float", disable=not progress)}
    return Sensitivity(units, baseline, sqnr, cameras, run)


@dataclass
class DetectionSensitivity:
    """What ``analyse_by_detection`` measured on the scenes of ``seeds``, by row label (``FP32``, ``ALL_INT8`` and
    each unit's name, that unit alone in float): the detector's ``evaluations`` over all scenes, each scene's own mAP
    (``scene_map``) and the pooled BEV's SQNR against fp32 per scene (``bev_sqnr``, not for ``FP32``);
    ``qdq_pairs``: each unit's Q/DQ pairs. Plain data: ``to_json`` / ``from_json`` round-trip it."""

    seeds: list[int]
    evaluations: dict[str, DetectorEvaluation]
    scene_map: dict[str, list[float]]
    bev_sqnr: dict[str, list[float]]
    qdq_pairs: dict[str, int]

    @property
    def units(self) -> list[str]:
        return list(self.qdq_pairs)

    def map_gain(self, label: str) -> float:
        """mAP over all scenes with ``label``'s unit in float, minus all of int8's."""
        return self.evaluations[label].mean_ap - self.evaluations[ALL_INT8].mean_ap

    def scene_gains(self, label: str) -> list[float]:
        """Each scene's own mAP with ``label``'s unit in float, minus all of int8's on that scene."""
        return [a - b for a, b in zip(self.scene_map[label], self.scene_map[ALL_INT8], strict=True)]

    def mean_sqnr(self, label: str) -> float:
        """The pooled BEV's SQNR (dB) with ``label``'s unit in float, averaged over the scenes."""
        return fmean(self.bev_sqnr[label])

    def ranking(self) -> list[str]:
        """Units by the mAP gained with that unit in float, highest first; ties by the mean BEV SQNR."""
        return sorted(self.units, key=lambda u: (self.map_gain(u), self.mean_sqnr(u)), reverse=True)

    def sqnr_ranking(self) -> list[str]:
        """Units by the mean pooled-BEV SQNR with that unit in float, highest first."""
        return sorted(self.units, key=self.mean_sqnr, reverse=True)

    def table(self, top: int | None = None) -> Table:
        """``ranking()``'s first ``top`` units, then the all-int8 and fp32 rows: mAP over the scenes, its gain, each
        scene's mAP gain (mean ± standard deviation), boxes, and the pooled BEV's SQNR (mean ± standard deviation)."""

        def row(rank: object, label: str) -> tuple:
            e = self.evaluations[label]
            gains = self.scene_gains(label)
            sqnr = self.bev_sqnr.get(label, [])
            return (
                rank,
                label,
                self.qdq_pairs.get(label, ""),
                e.mean_ap,
                self.map_gain(label),
                f"{fmean(gains):+.4f} ± {spread(gains):.4f}",
                sum(e.predicted.values()),
                f"{fmean(sqnr):.2f} ± {spread(sqnr):.2f}" if sqnr else "",
            )

        rows = [row(rank, unit) for rank, unit in enumerate(self.ranking()[:top], 1)]
        rows += [row("", ALL_INT8), row("", FP32)]
        columns = ("rank", "left in float", "Q/DQ pairs", "mAP", "mAP gain", "per-scene gain", "boxes", "BEV SQNR dB")
        title = f"sensitivity by detection: one unit in float at a time ({len(self.seeds)} held-out scenes)"
        return Table(rows, columns, title)

    def to_json(self) -> dict:
        return {
            "seeds": self.seeds,
            "evaluations": {label: e.to_json() for label, e in self.evaluations.items()},
            "scene_map": self.scene_map,
            "bev_sqnr": self.bev_sqnr,
            "qdq_pairs": self.qdq_pairs,
        }

    @classmethod
    def from_json(cls, record: dict) -> DetectionSensitivity:
        evaluations = {label: DetectorEvaluation.from_json(e) for label, e in record["evaluations"].items()}
        return cls(record["seeds"], evaluations, record["scene_map"], record["bev_sqnr"], record["qdq_pairs"])


def spread(values: Sequence[float]) -> float:
    """The sample standard deviation of per-scene values (0 for one value): the spread tables and figures show."""
    return stdev(values) if len(values) > 1 else 0.0


@torch.no_grad()
def analyse_by_detection(
    model: CameraBranch,
    head: DetectionHead,
    seeds: Sequence[int],
    rig: Rig | str | Path | None = None,
    progress: bool = True,
) -> DetectionSensitivity:
    """The detector of a calibrated ``quant.quantize_camera`` model and ``head`` on the synthetic scenes of
    ``seeds`` (every camera): fp32, all of int8, and each unit alone in float (see the module docstring). Each
    unit's run replays the all-int8 run's Bottleneck and neck outputs computed before its first quantizer."""
    from tqdm import tqdm

    if not quant.is_calibrated(model):
        raise ValueError("sensitivity needs a quantized, calibrated model (bevnb.quant.prepare_int8)")
    seeds, rig = list(seeds), as_rig(rig)
    if not seeds:
        raise ValueError("sensitivity by detection needs at least one scene")
    detector = Detector(model, head).eval()
    units = sensitivity_units(model)
    scores = {label: SceneScores(detector) for label in (FP32, ALL_INT8, *(u.name for u in units))}
    bev_sqnr: dict[str, list[float]] = {label: [] for label in list(scores)[1:]}
    with tqdm(total=len(seeds) * len(scores), desc="scenes × rows", disable=not progress) as bar:
        for seed in seeds:
            sample = make_sample("synthetic", seed=seed, rig=rig)
            with quant.quiet_logs(), quant.quantization_disabled(model):
                reference = scores[FP32].add(sample, seed)[0]["bev"]
            with quant.quiet_logs(), _recording(model, units) as record:
                bev = scores[ALL_INT8].add(sample, seed)[0]["bev"]
            bev_sqnr[ALL_INT8].append(compare(reference, bev)["sqnr_db"])
            bar.update(2)
            for unit in units:
                with quant.quiet_logs(), left_in_float([unit]), record.replaying_before(record.first_call[unit.name]):
                    bev = scores[unit.name].add(sample, seed)[0]["bev"]
                bev_sqnr[unit.name].append(compare(reference, bev)["sqnr_db"])
                bar.update()
    names = detector.class_names
    scene_map = {
        label: [evaluate([p], [t], names).mean_ap for p, t in zip(s.predictions, s.truth, strict=True)]
        for label, s in scores.items()
    }
    evaluations = {label: s.result() for label, s in scores.items()}
    return DetectionSensitivity(seeds, evaluations, scene_map, bev_sqnr, {u.name: u.qdq_pairs for u in units})


def float_set_for_map_loss(
    model: CameraBranch,
    head: DetectionHead,
    result: DetectionSensitivity,
    max_loss: float,
    rig: Rig | str | Path | None = None,
    progress: bool = True,
) -> tuple[list[Unit], list[float]]:
    """The shortest head of ``result.ranking()`` whose units, left in float together, keep the mAP lost to int8 on
    ``result``'s scenes within ``max_loss`` of its fp32 mAP, and the mAP after each unit was added (empty when all
    of int8 already is). ValueError when even the whole ranking does not."""
    from tqdm import tqdm

    fp32 = result.evaluations[FP32].mean_ap
    if fp32 - result.evaluations[ALL_INT8].mean_ap <= max_loss:
        return [], []
    by_name = {u.name: u for u in sensitivity_units(model)}
    detector, rig = Detector(model, head).eval(), as_rig(rig)
    chosen: list[Unit] = []
    path: list[float] = []
    for name in tqdm(result.ranking(), desc="growing the float set", disable=not progress):
        chosen.append(by_name[name])
        scores = SceneScores(detector)
        with quant.quiet_logs(), left_in_float(chosen):
            for seed in result.seeds:
                scores.add(make_sample("synthetic", seed=seed, rig=rig), seed)
        path.append(scores.result().mean_ap)
        if fp32 - path[-1] <= max_loss:
            return chosen, path
    raise ValueError(f"int8 loses more than {max_loss} mAP even with every unit in float")


class _Record:
    """From one all-int8 forward: the output of every Bottleneck and of the neck with the step at which it finished,
    and for every unit the step of its first quantizer call."""

    def __init__(self) -> None:
        self.step = 0
        self.finished: list[tuple[int, nn.Module, object]] = []
        self.first_call: dict[str, int] = {}  # unit name → step

    @contextlib.contextmanager
    def replaying_before(self, step: int) -> Iterator[None]:
        """Every recorded module that finished before ``step`` returns its recorded output without computing."""
        replayed = [(module, out) for done, module, out in self.finished if done < step]
        for module, out in replayed:
            module.forward = lambda *args, out=out, **kwargs: out
        try:
            yield
        finally:
            for module, _ in replayed:
                del module.forward


@contextlib.contextmanager
def _recording(model: CameraBranch, units: Sequence[Unit]) -> Iterator[_Record]:
    record = _Record()
    unit_of = {id(q): unit.name for unit in units for q in unit.quantizers}

    def tick(module: nn.Module, args: tuple) -> None:
        record.step += 1
        record.first_call.setdefault(unit_of[id(module)], record.step)

    def finish(module: nn.Module, args: tuple, output: object) -> None:
        record.step += 1
        record.finished.append((record.step, module, output))

    checkpoints = [m for m in model.backbone.modules() if isinstance(m, Bottleneck)] + [model.neck]
    hooks = [q.register_forward_pre_hook(tick) for unit in units for q in unit.quantizers]
    hooks += [m.register_forward_hook(finish) for m in checkpoints]
    try:
        yield record
    finally:
        for hook in hooks:
            hook.remove()
