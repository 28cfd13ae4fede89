"""Where int8 hurts (bevnb.sensitivity): the units, what leaving them in float removes from the graph, the ranking."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
from test_quant import TINY, tiny_inputs

import bevnb
from bevnb import quant, sensitivity
from bevnb.data import make_sample
from bevnb.export import export_camera
from bevnb.metrics import compare
from bevnb.subclass import BACKBONE_FILE, SubclassCameraModule


@pytest.fixture(scope="module")
def tiny_int8() -> bevnb.CameraBranch:
    model = quant.quantize_camera(bevnb.build_camera_model(seed=0, config=TINY))
    quant.calibrate(model, [tiny_inputs(0), tiny_inputs(1)], progress=False)
    return model


def _qdq_nodes(path) -> int:
    return sum(n.op_type == "QuantizeLinear" for n in onnx.load(path).graph.node)


def test_units_cover_every_quantizer_once_and_every_qdq_pair(tiny_int8):
    units = sensitivity.sensitivity_units(tiny_int8)
    by_name = {u.name: u for u in units}
    assert len(units) == 1 + 16 + 2 + 4 + 6  # stem, blocks, 2 shared across units, 4 neck convs, 6 vtransform convs
    assert [u.name for u in units if u.name.startswith("shared")] == [
        "shared backbone.layer3.0.conv1",
        "shared backbone.layer4.0.conv1",
    ]
    assert units[0].name == "backbone.conv1" and units[-1].name == "vtransform.depthnet.6"  # order of first use
    owned = [id(q) for u in units for q in u.quantizers]
    assert len(owned) == len(set(owned)) == len(quant.quantizers(tiny_int8))
    assert sum(u.qdq_pairs for u in units) == 128  # 63 weights + 65 activations, the graph's Q/DQ pairs
    # layer1.0: 4 weights (conv1-3, downsample) + x (conv1 and downsample read it), conv2's and conv3's inputs and
    # the downsample's output (the residual); layer1.1: 3 weights + x (conv1 and the residual) + conv2, conv3.
    assert (by_name["backbone.layer1.0"].qdq_pairs, len(by_name["backbone.layer1.0"].sites)) == (8, 9)
    assert (by_name["backbone.layer1.1"].qdq_pairs, len(by_name["backbone.layer1.1"].sites)) == (6, 7)
    # layer2's output, the upsampled layer3 and their concat: one scale, four sites
    shared = by_name["shared backbone.layer3.0.conv1"]
    assert (shared.qdq_pairs, len(shared.sites)) == (3, 4)


def test_units_left_in_float_leave_the_graph_with_exactly_their_pairs(tiny_int8, tmp_path):
    by_name = {u.name: u for u in sensitivity.sensitivity_units(tiny_int8)}
    chosen = [by_name[n] for n in ("backbone.layer1.0", "shared backbone.layer3.0.conv1", "vtransform.depthnet.6")]
    predicted = 128 - sum(u.qdq_pairs for u in chosen)
    with sensitivity.left_in_float(chosen):
        counts = quant.expected_qdq(tiny_int8)
        export_camera(tiny_int8, tmp_path, "int8", verbose=False)
    assert counts["weights"] + counts["activations"] == predicted == 128 - 13
    assert _qdq_nodes(tmp_path / BACKBONE_FILE) == predicted
    assert not any(q._disabled for q in quant.quantizers(tiny_int8).values())


def test_analyse_refuses_a_float_model_and_bad_cameras(tiny_int8, sample):
    with pytest.raises(ValueError, match="quantized, calibrated model"):
        sensitivity.analyse(bevnb.build_camera_model(seed=0, config=TINY), sample)
    with pytest.raises(ValueError, match=r"cameras must be a non-empty subset of 0 … 0, got \[3\]"):
        sensitivity.analyse(tiny_int8, sample, cameras=(3,))


@pytest.fixture(scope="module")
def r50_int8() -> bevnb.CameraBranch:
    return quant.default_int8_model(progress=False)


@pytest.mark.slow
def test_the_most_sensitive_units_matter_more_and_the_partial_graph_has_the_predicted_pairs(r50_int8, tmp_path):
    """Chapter 12 on the front camera of the held-out scene: leaving the three most sensitive units in float brings
    the pooled BEV closer to fp32 than leaving the three least sensitive ones; the shortest head of the ranking that
    gains 3 dB, exported, holds 128 minus its units' pairs; and a replayed run equals a full forward."""
    held_out = make_sample("synthetic", seed=quant.HELD_OUT_SEED)
    result = sensitivity.analyse(r50_int8, held_out, cameras=(0,), progress=False)
    ranking = result.ranking()
    top, bottom = result.sqnr_with(ranking[:3])["bev"], result.sqnr_with(ranking[-3:])["bev"]
    assert top > bottom
    assert top > result.baseline["bev"]

    target = result.baseline["bev"] + 3.0
    chosen, path = result.shortest_float_set(target)
    assert path[-1] >= target and all(p < target for p in path[:-1]) and len(path) == len(chosen)
    predicted = 128 - sum(u.qdq_pairs for u in chosen)
    model = copy.deepcopy(r50_int8)
    units = {u.name: u for u in sensitivity.sensitivity_units(model)}
    with sensitivity.left_in_float([units[u.name] for u in chosen]):
        export_camera(model, tmp_path, "int8", verbose=False)
    assert _qdq_nodes(tmp_path / BACKBONE_FILE) == predicted < 128

    unit = ranking[0]  # analyse replayed the blocks before its first quantizer; here all is computed
    img, depth = (t[:, :1] for t in quant.backbone_inputs(held_out))
    split = SubclassCameraModule(r50_int8).eval()
    with torch.no_grad(), quant.quantization_disabled(r50_int8):
        reference = split(img, depth)[0]
    with torch.no_grad(), sensitivity.left_in_float([unit]):
        full = split(img, depth)[0]
    assert compare(reference, full)["sqnr_db"] == pytest.approx(result.sqnr[unit.name]["camera_feature"], abs=1e-9)


def _detection_sensitivity(gains: dict[str, list[float]], sqnr: dict[str, list[float]]):
    """A ``DetectionSensitivity`` from per-scene mAP (by row) and BEV SQNR, with one class and no boxes counted."""
    from bevnb.detection import ClassMetrics, DetectionMetrics
    from bevnb.evaluation import DepthAccuracy, DetectorEvaluation

    def evaluation(scene_maps: list[float]) -> DetectorEvaluation:
        mean = sum(scene_maps) / len(scene_maps)
        metrics = DetectionMetrics({"car": ClassMetrics(dict.fromkeys((0.5, 1.0, 2.0, 4.0), mean), 0.1, 0.1, 0.1)})
        return DetectorEvaluation(metrics, DepthAccuracy(), {"car": 3}, {"car": 3}, [1000, 1001])

    units = [u for u in gains if u not in (sensitivity.FP32, sensitivity.ALL_INT8)]
    return sensitivity.DetectionSensitivity(
        [1000, 1001], {k: evaluation(v) for k, v in gains.items()}, gains, sqnr, dict.fromkeys(units, 2)
    )


def test_detection_sensitivity_ranks_by_map_gain_then_sqnr_and_round_trips_as_json():
    result = _detection_sensitivity(
        {
            sensitivity.FP32: [0.9, 0.9],
            sensitivity.ALL_INT8: [0.8, 0.8],
            "a": [0.8, 0.8],  # no gain, high SQNR
            "b": [0.9, 0.8],  # +0.05
            "c": [0.8, 0.8],  # no gain, low SQNR
        },
        {sensitivity.ALL_INT8: [18.0, 18.0], "a": [20.0, 21.0], "b": [18.5, 18.5], "c": [18.1, 18.2]},
    )
    assert result.ranking() == ["b", "a", "c"] and result.sqnr_ranking() == ["a", "b", "c"]
    assert result.map_gain("b") == pytest.approx(0.05)
    table = result.table(2)
    assert [row[1] for row in table.rows] == ["b", "a", sensitivity.ALL_INT8, sensitivity.FP32]
    assert table.rows[0][5] == "+0.0500 ± 0.0707" and table.rows[1][7] == "20.50 ± 0.71"
    again = sensitivity.DetectionSensitivity.from_json(result.to_json())
    assert again.ranking() == result.ranking() and again.to_json() == result.to_json()


def test_the_recorded_sensitivity_by_detection_runs_two_disjoint_scene_sets():
    """``benchmarks/sensitivity_by_detection.py``'s record (chapter 12 renders it): two runs of eight held-out scenes
    with no scene in common, every unit in each, the top fives as the runs rank them, and the exported float set's
    Q/DQ pairs as predicted."""
    import json

    from bevnb.paths import CHECKOUT
    from bevnb.viz_detection import sensitivity_runs

    record = json.loads((CHECKOUT / "benchmarks/results/precision/sensitivity_by_detection.json").read_text())
    runs = [sensitivity.DetectionSensitivity.from_json(r) for r in record["runs"]]
    assert [len(r.seeds) for r in runs] == [8, 8] and not set(runs[0].seeds) & set(runs[1].seeds)
    assert min(runs[0].seeds) >= quant.HELD_OUT_SEED and min(runs[1].seeds) >= quant.HELD_OUT_SEED
    assert all(len(r.units) == 29 and len(r.evaluations) == 31 for r in runs)
    assert all(len(v) == 8 for r in runs for v in (*r.scene_map.values(), *r.bev_sqnr.values()))
    assert record["top5_by_map"] == [r.ranking()[:5] for r in runs]
    assert record["top5_by_sqnr"] == [r.sqnr_ranking()[:5] for r in runs]
    for key in ("map", "sqnr"):
        first, second = record[f"top5_by_{key}"]
        assert record[f"top5_agree_by_{key}"] == len(set(first) & set(second))
    fs = record["float_set"]
    predicted = {k: fs["predicted_qdq"][k] for k in ("weights", "activations")}
    assert fs["counted_qdq"] == predicted
    assert sum(predicted.values()) == 128 - sum(runs[0].qdq_pairs[u] for u in fs["units"])
    assert len(sensitivity_runs(*runs).axes) == 2
