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
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from . import quant
from .bevpool import bev_pool
from .geometry import plan_bev_pool
from .metrics import compare
from .model import CameraBranch
from .model.resnet import Bottleneck
from .subclass import BACKBONE_IO, SubclassCameraModule
from .tables import Table

OUTPUTS = (*BACKBONE_IO[1], "bev")  # camera_feature, camera_depth_weights, the BEV pooled from the camera subset


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
