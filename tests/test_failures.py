"""The failures users meet, made on purpose (bevnb.failures), and the graph check for Concat/Add scales
(bevnb.diagnosis.unshared_scales)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bevnb import failures, quant
from bevnb.diagnosis import unshared_scales
from bevnb.rig import default_rig


def test_features_scaled_is_the_same_network_in_fp32_with_a_larger_bev(model, sample, stages):
    scaled = failures.features_scaled(model, 512.0)
    with torch.no_grad():
        out = scaled.forward_stages(sample)
    assert out["bev"].shape == stages["bev"].shape == (1, 80, 360, 360)
    torch.testing.assert_close(out["bev"], 512.0 * stages["bev"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out["bev_downsampled"], stages["bev_downsampled"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out["depth_weights"], stages["depth_weights"])  # the depth rows are untouched
    assert model.vtransform.depthnet[-1].weight is not scaled.vtransform.depthnet[-1].weight  # a copy
    with pytest.raises(ValueError, match="finite and positive"):
        failures.features_scaled(model, 0.0)


def test_fp16_rescale_is_the_power_of_two_that_leaves_64_times_headroom():
    limit = failures.FP16_MAX / failures.FP16_HEADROOM  # 1023.5
    assert failures.fp16_rescale(333.9 * 512) == 2.0**-8  # 170,957 → 668
    assert failures.fp16_rescale(limit * 1.01) == 0.5 and failures.fp16_rescale(limit) == 1.0
    assert failures.fp16_rescale(1.0) == 1.0  # already inside: never scaled up
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="finite and positive"):
            failures.fp16_rescale(bad)


def test_calibrated_on_the_export_sample_gives_the_stem_no_range(trained):
    zeros = failures.calibrated_on_export_sample(trained, default_rig())
    amax = quant.amax_state(zeros)
    assert float(amax["backbone.conv1._input_quantizer._amax"]) == 0.0  # zero images: nothing to range over
    assert not quant.is_quantized(trained)  # the float model is left as it was


def test_concat_scales_unshared_gives_each_upsampled_input_a_quantizer_of_its_own(model):
    import copy

    q = quant.quantize_camera(copy.deepcopy(model))
    shared = {n: getattr(q.neck, n)._input_quantizer for n in ("quant_concat0", "quant_concat1")}
    failures.concat_scales_unshared(q)
    for name, before in shared.items():
        concat = getattr(q.neck, name)
        assert isinstance(concat, failures.UnsharedConcat)
        assert concat._input_quantizer is before and concat._upsampled_quantizer is not before
    assert q.neck.quant_concat0._input_quantizer is q.backbone.layer4[0].conv1._input_quantizer  # still shared there
    with pytest.raises(ValueError, match="before calibrating"):
        failures.concat_scales_unshared(model)  # a float model has no quantizers to unshare


def _qdq_graph(op: str, scales: tuple[float, ...], plain_input: bool = False) -> onnx.ModelProto:
    """``op`` over one DequantizeLinear(QuantizeLinear(x_i)) per scale (and a float input when ``plain_input``)."""
    nodes, inits, inputs = [], [], []
    for i, scale in enumerate(scales):
        inits += [numpy_helper.from_array(np.array(scale, np.float32), f"s{i}")]
        inits += [numpy_helper.from_array(np.array(0, np.int8), f"z{i}")]
        qdq = [f"s{i}", f"z{i}"]
        nodes += [
            helper.make_node("QuantizeLinear", [f"x{i}", *qdq], [f"q{i}"], name=f"/q{i}/QuantizeLinear"),
            helper.make_node("DequantizeLinear", [f"q{i}", *qdq], [f"d{i}"], name=f"/q{i}/DequantizeLinear"),
        ]
        inputs.append(f"x{i}")
    inputs += ["plain"] if plain_input else []
    reads = [f"d{i}" for i in range(len(scales))] + (["plain"] if plain_input else [])
    attributes = {"axis": 1} if op == "Concat" else {}
    nodes.append(helper.make_node(op, reads, ["y"], name=f"/neck/{op}", **attributes))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_unshared_scales_names_a_concat_or_add_whose_quantized_inputs_differ():
    found = unshared_scales(_qdq_graph("Concat", (0.1, 0.2)))
    assert [name for name, _ in found] == ["/neck/Concat"]
    assert found[0][1] == pytest.approx([0.1, 0.2])
    assert unshared_scales(_qdq_graph("Concat", (0.1, 0.1))) == []  # one scale: fused in int8
    assert [n for n, _ in unshared_scales(_qdq_graph("Add", (0.5, 0.25)))] == ["/neck/Add"]
    assert unshared_scales(_qdq_graph("Add", (0.5,), plain_input=True)) == []  # upstream's residual Add
