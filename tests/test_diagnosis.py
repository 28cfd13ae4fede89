"""Half-precision numerics of a graph (bevnb.numerics) and the two-sided, stage-by-stage diagnosis (bevnb.diagnosis)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bevnb.cli import main
from bevnb.diagnosis import StageAgreement, checkpoints, diagnose_many
from bevnb.numerics import half_rounded
from bevnb.pipeline import OnnxGraph

SCALE = 1.0004  # not a float16 number: float16 rounds it to 1.0 (its spacing at 1 is 2**-10)


def _graph(tmp_path, name: str = "g.onnx") -> str:
    """x [4] → Mul by SCALE → Relu → y, and x → Add 6e4 → big: float32 throughout."""
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["/block/mul/Mul_output_0"], name="/block/mul/Mul"),
        helper.make_node("Relu", ["/block/mul/Mul_output_0"], ["y"], name="/block/relu/Relu"),
        helper.make_node("Add", ["x", "big_offset"], ["big"], name="/block/add/Add"),
    ]
    inits = [
        numpy_helper.from_array(np.array([SCALE], np.float32), "scale"),
        numpy_helper.from_array(np.array([6e4], np.float32), "big_offset"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("y", "big")],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / name
    onnx.save(model, path)
    return str(path)


@pytest.mark.parametrize("optimize", [True, False])
def test_half_rounded_stores_every_tensor_in_float16_and_overflows_like_it(tmp_path, optimize):
    path = _graph(tmp_path)
    x = torch.tensor([1.0, -2.0, 3.0004, 65504.0])
    fp32 = OnnxGraph(path, optimize=optimize).outputs(x)
    half = OnnxGraph(path, optimize=optimize, half=True).outputs(x)
    assert fp32["y"][0].item() == pytest.approx(SCALE)  # the float32 graph keeps the scale
    # float16: the input 3.0004 → 3.0, the scale → 1.0, so y = relu(x16 · 1.0) rounded again; 65504 is float16's max
    assert half["y"].tolist() == [1.0, 0.0, 3.0, 65504.0]
    # near 6e4 float16 numbers lie 32 apart: 60001, 59998 and 60003 all round to 60000; 65504 + 6e4 overflows
    assert fp32["big"].isfinite().all() and half["big"].tolist() == [60000.0, 60000.0, 60000.0, math.inf]


def test_half_rounded_keeps_names_and_rounds_weights(tmp_path):
    model = onnx.load(_graph(tmp_path))
    rounded = half_rounded(model)
    produced = {o for n in rounded.graph.node for o in n.output}
    assert {"y", "big", "/block/mul/Mul_output_0"} <= produced  # inner names still name the (rounded) tensors
    scale = numpy_helper.to_array(next(t for t in rounded.graph.initializer if t.name == "scale"))
    assert scale.dtype == np.float32 and scale.item() == 1.0
    casts = [n for n in rounded.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2 * 4  # the input and three node outputs, each to float16 and back
    assert [n.op_type for n in model.graph.node] == ["Mul", "Relu", "Add"]  # the original is untouched


def test_checkpoints_are_each_modules_last_shared_activation(tmp_path):
    def graph(names: list[tuple[str, str]]) -> onnx.ModelProto:
        nodes, previous = [], "x"
        for op, name in names:
            out = f"{name}_output_0"
            nodes.append(helper.make_node(op, [previous], [out], name=name))
            previous = out
        nodes.append(helper.make_node("Identity", [previous], ["out"], name="/out/Identity"))
        g = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
        )
        return helper.make_model(g)

    layers = [
        ("Relu", "/backbone/relu/Relu"),
        ("Relu", "/backbone/layer1/layer1.0/relu/Relu"),
        ("Relu", "/backbone/layer1/layer1.0/relu_2/Relu"),
        ("Softmax", "/depthnet/softmax/Softmax"),
    ]
    fp16 = graph(layers)
    int8 = graph([*layers[:1], ("Relu", "/backbone/layer1/layer1.0/relu/Relu"), layers[3]])  # no relu_2 here
    assert checkpoints(fp16, fp16) == [
        ("backbone.relu", "/backbone/relu/Relu_output_0"),
        ("backbone.layer1.0", "/backbone/layer1/layer1.0/relu_2/Relu_output_0"),
        ("depthnet.softmax", "/depthnet/softmax/Softmax_output_0"),
    ]
    assert checkpoints(fp16, int8)[1] == ("backbone.layer1.0", "/backbone/layer1/layer1.0/relu/Relu_output_0")


def test_a_stage_with_overflow_breaks_and_depth_bins_are_counted():
    weights = torch.softmax(torch.randn(2, 5, 3, 4), dim=1)
    flipped = weights.flip(1)
    depth = StageAgreement("camera_depth_weights", list(weights.shape))
    depth.add(weights, weights)
    depth.add(weights, flipped)
    same = int((weights.argmax(1) == flipped.argmax(1)).sum())
    assert (depth.bins_agree, depth.bins_counted) == (24 + same, 48)
    assert depth.sqnr_db == pytest.approx(10 * math.log10((weights**2).sum() / ((flipped - weights) ** 2).sum()))
    overflow = StageAgreement("bev_pool", [4])
    overflow.add(torch.ones(4), torch.tensor([1.0, math.inf, 1.0, 1.0]))
    assert overflow.nonfinite == 1 and not overflow.agrees(10.0) and overflow.sqnr_db == -math.inf


def test_diagnose_refuses_two_identical_sides_and_a_missing_head(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    assert main(["diagnose", str(tmp_path / "a"), str(tmp_path / "a")]) == 2
    assert "two sides are the same graphs with the same numerics" in capsys.readouterr().err
    assert main(["diagnose", str(tmp_path / "a"), str(tmp_path / "a"), "--half", "test"]) == 2
    assert "camera.backbone.onnx: no such ONNX file" in capsys.readouterr().err
    assert main(["diagnose", "a", "b", "--scenes", "0"]) == 2
    assert "--scenes must be at least 1, got 0" in capsys.readouterr().err


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory):
    from bevnb.evaluation import trained_detector
    from bevnb.export import export_head

    out = tmp_path_factory.mktemp("head")
    export_head(trained_detector().head, out, verbose=False)
    return out


@pytest.mark.slow
def test_int8_agrees_and_an_fp16_overflow_breaks_at_bev_pool_on_one_scene(onnx_dirs, head_dir, trained, tmp_path):
    """One held-out scene: chapter 04's int8 graphs against the float graphs agree at every stage, listed in pipeline
    order from the stem to the head's maps, and keep the boxes; float graphs whose features are 512 times larger
    (``failures.features_scaled``: the same network in fp32) break at bev_pool under fp16 numerics and lose every
    box. fp16 numerics on the shipped weights agreeing everywhere is the recorded table's test, below."""
    from bevnb.diagnosis import Graphs
    from bevnb.export import export_camera
    from bevnb.failures import features_scaled

    fp32 = Graphs(onnx_dirs("fp16"), head_dir=head_dir, label="fp32")
    int8 = Graphs(onnx_dirs("int8"), head_dir=head_dir, label="int8")
    export_camera(features_scaled(trained, 512.0), tmp_path, "fp16", verbose=False)
    scaled = Graphs(tmp_path, head_dir=head_dir, label="fp32, features x512")
    (int8_result,) = diagnose_many(fp32, [int8], [1000], progress=False)
    (overflow,) = diagnose_many(
        scaled, [Graphs(tmp_path, True, "fp16, features x512", head_dir)], [1000], progress=False
    )
    stages = [s.stage for s in int8_result.stages]
    assert stages[:2] == ["backbone.relu", "backbone.layer1.0"] and "backbone.layer4.2" in stages
    assert stages.index("camera_feature") < stages.index("bev_pool") < stages.index("vtransform output")
    assert stages[-12:] == [f"{m}_{t}" for t in (0, 1) for m in ("reg", "height", "dim", "rot", "vel", "heatmap")]
    by = {s.stage: s for s in int8_result.stages}
    assert by["camera_depth_weights"].shape == [6, 118, 32, 88] and by["bev_pool"].shape == [1, 80, 360, 360]
    assert 0.85 < by["camera_depth_weights"].bin_agreement < 0.99
    boxes = {label: sum(e.predicted.values()) for label, e in int8_result.scores.items()}
    assert boxes["fp32"] > 0 and abs(boxes["int8"] - boxes["fp32"]) <= 0.2 * boxes["fp32"]
    assert int8_result.broken is None and int8_result.unshared == [], int8_result.verdict()
    assert "every stage agrees" in int8_result.verdict()
    assert overflow.broken is not None and overflow.broken.stage == "bev_pool", overflow.verdict()
    assert overflow.broken.nonfinite > 0 and overflow.broken.peak > 65504
    assert all(s.agrees(overflow.min_sqnr_db) for s in overflow.stages[: overflow.stages.index(overflow.broken)])
    assert sum(overflow.scores["fp16, features x512"].predicted.values()) == 0


def test_the_recorded_precision_table_has_every_side_and_its_fp32_is_chapter_09s():
    """``benchmarks/precision_by_detection.py``'s record: fp32 through the graphs scores what PyTorch scored on the
    same scenes (``evaluation.json``), fp16 numerics agree everywhere, and the table and figure chapter 13 renders."""
    import json

    from bevnb.diagnosis import BOUNDARIES, precision_table
    from bevnb.evaluation import DetectorEvaluation, recorded_evaluation
    from bevnb.paths import CHECKOUT
    from bevnb.viz_detection import map_against_calibration

    record = json.loads((CHECKOUT / "benchmarks" / "results" / "precision" / "precision_by_detection.json").read_text())
    fp32, pytorch = DetectorEvaluation.from_json(record["fp32"]), recorded_evaluation()
    assert record["scenes"] == pytorch.seeds == list(range(1000, 1020))
    assert fp32.ground_truth == pytorch.ground_truth
    assert abs(fp32.mean_ap - pytorch.mean_ap) <= 0.005  # the graphs in ONNX Runtime against PyTorch, same boxes
    sides = record["sides"]
    assert sorted(map(int, record["calibration_sweep"])) == [1, 2, 8, 32]
    assert {"fp16 numerics", *record["calibration_sweep"].values()} <= set(sides) and len(sides) == 9
    failed = record["failures"]  # failures 3 and 4 of chapter 13, each with the side that fixes it
    assert set(failed) == {"calibrated on another rig's frames", "Concat inputs at two scales"}
    assert all(f["fix"] == record["calibration_sweep"]["2"] and f["side"] in sides for f in failed.values())
    concat_side = failed["Concat inputs at two scales"]["side"]
    assert sides[concat_side]["unshared_scales"] == ["/neck/quant_concat0/Concat", "/neck/quant_concat1/Concat"]
    assert all(not s["unshared_scales"] for label, s in sides.items() if label != concat_side)
    assert sides["fp16 numerics"]["first_break"] is None and sides["fp16 numerics"]["depth_bin_agreement"] > 0.99
    assert all(set(s["sqnr_db"]) == {*BOUNDARIES, "heatmaps"} for s in sides.values())
    table = precision_table(fp32, sides)
    assert len(table.rows) == 1 + len(sides) and table.columns[:4] == ["graphs", "mAP", "AP car", "AP pedestrian"]
    figure = map_against_calibration(fp32, sides, record["calibration_sweep"])
    assert len(figure.axes[0].lines) == 2 * 3  # mAP and AP per class, int8 and fp32
