"""PTQ (bevnb.quant) and the int8 export: quantizer placement, calibration, amax I/O, Q/DQ counts, ORT parity.

Most tests use a one-camera 64×176 camera branch: the layers, and so the placement and the Q/DQ counts, are those
of R50; only the image is smaller.
"""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
from onnx import numpy_helper
from pytorch_quantization import nn as quant_nn
from pytorch_quantization.calib import HistogramCalibrator, MaxCalibrator
from pytorch_quantization.calib import histogram as pq_histogram
from torch import nn

import bevnb
from bevnb import quant, validation
from bevnb.config import CameraConfig
from bevnb.export import ExportError, export_camera
from bevnb.metrics import compare
from bevnb.model.resnet import Bottleneck
from bevnb.pipeline import OnnxGraph
from bevnb.subclass import BACKBONE_FILE, VTRANSFORM_FILE

TINY = CameraConfig(image_size=(64, 176), num_cameras=1, xbound=(-54.0, 54.0, 1.2), ybound=(-54.0, 54.0, 1.2))
# R50's quantized convs: stem 1 + 16 bottlenecks × 3 + 4 downsample + neck 4 + dtransform 3 + depthnet 3.
QUANT_CONVS = 1 + 16 * 3 + 4 + 4 + 3 + 3


def tiny_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random image and a 2 %-dense depth map (1-60 m), ``[1, 1, 3, 64, 176]`` and ``[1, 1, 1, 64, 176]``."""
    g = torch.Generator().manual_seed(seed)
    img = nn.functional.interpolate(torch.randn(1, 3, 16, 44, generator=g), size=TINY.image_size, mode="bilinear")
    img = img + 0.3 * torch.randn(1, 3, *TINY.image_size, generator=g)
    dense = 1.0 + 59.0 * torch.rand(1, 1, *TINY.image_size, generator=g)
    depth = torch.where(torch.rand(1, 1, *TINY.image_size, generator=g) < 0.02, dense, torch.zeros(()))
    return img[None], depth[None]


@pytest.fixture(scope="module")
def tiny_float() -> bevnb.CameraBranch:
    return bevnb.build_camera_model(seed=0, config=TINY)


@pytest.fixture
def tiny_quantized(tiny_float) -> bevnb.CameraBranch:
    return quant.quantize_camera(copy.deepcopy(tiny_float))


@pytest.fixture(scope="module")
def calibrated(tiny_float) -> bevnb.CameraBranch:
    model = quant.quantize_camera(copy.deepcopy(tiny_float))
    quant.calibrate(model, [tiny_inputs(0), tiny_inputs(1)], progress=False)
    return model


@pytest.fixture(scope="module")
def int8_dir(calibrated, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_int8")
    export_camera(calibrated, out, precision="int8", verbose=False)
    return out


@torch.no_grad()
def _fake_quant(model: bevnb.CameraBranch, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    return bevnb.SubclassCameraModule(model)(*inputs)


# --- placement -----------------------------------------------------------------------------------------------------


def test_quantize_folds_bn_and_swaps_every_conv_but_downsample(tiny_quantized):
    model = tiny_quantized
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    qconvs = [name for name, m in model.named_modules() if isinstance(m, quant_nn.QuantConv2d)]
    floats = [name for name, m in model.named_modules() if type(m) is nn.Conv2d]
    assert len(qconvs) == QUANT_CONVS
    assert floats == ["vtransform.downsample.0", "vtransform.downsample.3", "vtransform.downsample.6"]
    for name in qconvs:
        conv = model.get_submodule(name)
        assert conv._weight_quantizer.axis == (0,) and isinstance(conv._weight_quantizer._calibrator, MaxCalibrator)
        assert conv._input_quantizer.axis is None
        calib = conv._input_quantizer._calibrator
        assert isinstance(calib, HistogramCalibrator) and calib._torch_hist


def test_residual_and_concat_quantizers_are_shared_as_upstream(tiny_quantized):
    model = tiny_quantized
    backbone, neck = model.backbone, model.neck
    blocks = [m for m in backbone.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    for block in blocks:
        conv1_q = block.conv1._input_quantizer
        if block.downsample is None:
            assert block.residual_quantizer is conv1_q
        else:
            assert block.downsample[0]._input_quantizer is conv1_q
            assert isinstance(block.residual_quantizer, quant_nn.TensorQuantizer)
            assert block.residual_quantizer is not conv1_q
    for stage, concat, lateral in (
        (backbone.layer3[0], neck.quant_concat1, 0),
        (backbone.layer4[0], neck.quant_concat0, 1),
    ):
        shared = stage.conv1._input_quantizer
        assert concat._input_quantizer is shared
        assert neck.lateral_convs[lateral].conv._input_quantizer is shared
        assert stage.downsample[0]._input_quantizer is shared
    names = quant.quantizer_names(model)[id(backbone.layer3[0].conv1._input_quantizer)]
    assert sorted(names) == [
        "backbone.layer3.0.conv1._input_quantizer",
        "backbone.layer3.0.downsample.0._input_quantizer",
        "neck.lateral_convs.0.conv._input_quantizer",
        "neck.quant_concat1._input_quantizer",
    ]


def test_quantize_twice_or_calibrate_a_float_model_is_refused(tiny_float, tiny_quantized):
    model = tiny_quantized
    with pytest.raises(ValueError, match="already quantized"):
        quant.quantize_camera(model)
    with pytest.raises(ValueError, match="no quantizers"):
        quant.calibrate(tiny_float, [tiny_inputs(0)], progress=False)
    with pytest.raises(ValueError, match="calibration method must be one of mse, percentile, max, got 'entropy'"):
        quant.calibrate(model, [tiny_inputs(0)], method="entropy", progress=False)
    with pytest.raises(ValueError, match="at least one"):
        quant.calibrate(model, [], progress=False)


def test_quantization_disabled_is_the_float_model(tiny_float, tiny_quantized):
    inputs = tiny_inputs(3)
    with torch.no_grad():
        ref = bevnb.SubclassCameraModule(tiny_float)(*inputs)
    with torch.no_grad(), quant.quantization_disabled(tiny_quantized):  # uncalibrated is fine: quantizers are off
        out = bevnb.SubclassCameraModule(tiny_quantized)(*inputs)
    for r, o in zip(ref, out, strict=True):
        assert compare(r, o)["rel"] < 1e-4  # only BN folding's rounding


def test_expected_qdq_from_the_placement(tiny_quantized):
    counts = quant.expected_qdq(tiny_quantized)
    # activations: 1 stem + 16 × 3 conv inputs + 4 downsample outputs (residual) + neck 6 (2 upsampled concat
    # inputs, 2 lateral, 2 fpn; the other concat input is the layer's output, already quantized for layer3/4[0])
    # + dtransform 3 + depthnet 3. Calls: every conv input, 16 residuals, 2 × 2 concat inputs.
    assert counts == {"weights": QUANT_CONVS, "activations": 65, "activation_calls": QUANT_CONVS + 16 + 4}


def test_placement_table_lists_every_conv_residual_and_concat(calibrated):
    table = quant.placement_table(calibrated)
    rows = {row[0]: row for row in table.rows}
    assert len(rows) == QUANT_CONVS + 3 + 16 + 2  # + the 3 float downsample convs, 16 Adds, 2 Concats
    assert rows["vtransform.downsample.3"][1:3] == ["—", "float"]
    assert rows["neck.lateral_convs.0.conv"][2:4] == ["backbone.layer3.0.conv1", "4"]
    assert rows["backbone.layer1.1"][1:4] == ["Add identity input", "backbone.layer1.1.conv1", "2"]
    assert rows["neck.quant_concat0"][1:4] == ["both Concat inputs", "backbone.layer4.0.conv1", "4"]
    amax = calibrated.backbone.layer2[0].conv2._input_quantizer.amax.item()
    assert rows["backbone.layer2.0.conv2"][2:5] == ["own", "1", f"{amax:.4g}"]


# --- calibration -----------------------------------------------------------------------------------------------


def test_mse_amax_matches_pytorch_quantization(monkeypatch):
    """Same search as pytorch-quantization's ``_compute_amax_mse``, which calls ``.cuda()`` (made a no-op here)."""
    g = torch.Generator().manual_seed(0)
    calib = HistogramCalibrator(8, None, False, num_bins=512, torch_hist=True)
    calib.collect(torch.relu(torch.randn(200_000, generator=g)) ** 1.5)
    calib.collect(torch.relu(torch.randn(100_000, generator=g)) * 3)  # grows the bins past 512
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    theirs = pq_histogram._compute_amax_mse(calib._calib_hist.int().numpy(), calib._calib_bin_edges.numpy(), 8, False)
    ours = quant.mse_amax(calib._calib_hist, calib._calib_bin_edges)
    assert calib._calib_hist.numel() > 512
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def test_calibrate_sets_every_amax_by_each_method(calibrated):
    """The stem quantizer sees the two images: ``max`` is their max |x| (to one histogram bin), ``percentile``
    (pytorch-quantization's own) leaves 0.01 % of |x| above it, ``mse`` clips the tail; weights take their
    per-output-channel max."""
    assert quant.is_calibrated(calibrated)
    stem = calibrated.backbone.conv1
    pixels = torch.cat([tiny_inputs(s)[0].abs().flatten() for s in (0, 1)])
    amax = {}
    for method in ("max", "percentile", "mse"):  # ends with the fixture's method
        quant.compute_amax(calibrated, method)
        amax[method] = stem._input_quantizer.amax.item()
    assert amax["max"] == pytest.approx(pixels.max().item(), abs=pixels.max().item() / 2048)
    calibrator = stem._input_quantizer._calibrator
    assert amax["percentile"] == calibrator.compute_amax("percentile", percentile=99.99).item()
    assert (pixels > amax["percentile"]).float().mean().item() == pytest.approx(1e-4, rel=0.1)
    assert amax["mse"] < amax["max"]
    weight = stem.weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True)
    assert torch.equal(stem._weight_quantizer.amax, weight)


def test_uncalibrated_int8_export_is_refused(tiny_quantized, tmp_path):
    with pytest.raises(ExportError, match="needs a quantized, calibrated model"):
        export_camera(tiny_quantized, tmp_path, precision="int8", verbose=False)


# --- amax I/O --------------------------------------------------------------------------------------------------


def test_amax_keys_are_upstream_names_with_shared_quantizers_under_each(calibrated):
    state = quant.amax_state(calibrated)
    assert state["backbone.conv1._weight_quantizer._amax"].shape == (64, 1, 1, 1)
    assert state["backbone.conv1._input_quantizer._amax"].shape == ()
    assert torch.equal(
        state["backbone.layer1.1.residual_quantizer._amax"], state["backbone.layer1.1.conv1._input_quantizer._amax"]
    )
    assert torch.equal(
        state["neck.quant_concat0._input_quantizer._amax"], state["backbone.layer4.0.conv1._input_quantizer._amax"]
    )
    assert not any(k.startswith("vtransform.downsample") for k in state)
    # every name of every quantizer: 63 weights + 63 conv inputs + 16 residuals + 2 concats
    assert len(state) == 2 * QUANT_CONVS + 16 + 2


def test_calibration_round_trips_and_reproduces_outputs(calibrated, tiny_quantized, tmp_path):
    inputs = tiny_inputs(5)
    path = quant.save_calibration(calibrated, tmp_path / "calib.pt", samples=2)
    fresh = tiny_quantized
    assert not quant.is_calibrated(fresh)
    assert quant.load_calibration(fresh, path) == {"samples": 2}
    saved, loaded = quant.amax_state(calibrated), quant.amax_state(fresh)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    for a, b in zip(_fake_quant(calibrated, inputs), _fake_quant(fresh, inputs), strict=True):
        assert torch.equal(a, b)


def test_loading_amax_checks_weights_keys_shapes_and_sharing(calibrated, tiny_quantized, tmp_path):
    path = quant.save_calibration(calibrated, tmp_path / "calib.pt")
    model = tiny_quantized
    with torch.no_grad():
        model.vtransform.depthnet[6].bias[0] += 1e-3  # other weights
    with pytest.raises(ValueError, match="calibrated for other weights"):
        quant.load_calibration(model, path)
    state = quant.amax_state(calibrated)
    with pytest.raises(ValueError, match=r"missing \(1\): backbone.conv1._input_quantizer._amax"):
        quant.load_amax(model, {k: v for k, v in state.items() if k != "backbone.conv1._input_quantizer._amax"})
    with pytest.raises(
        ValueError, match=r"mis-shaped \(1\): backbone.conv1._weight_quantizer._amax \[64\]≠\[64, 1, 1, 1\]"
    ):
        quant.load_amax(model, {**state, "backbone.conv1._weight_quantizer._amax": torch.ones(64)})
    with pytest.raises(ValueError, match="one shared quantizer but hold different amax"):
        quant.load_amax(model, {**state, "backbone.layer1.1.residual_quantizer._amax": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="unexpected"):
        quant.load_amax(model, {**state, "backbone.layer1.0.oops._amax": torch.tensor(1.0)})
    assert not quant.is_calibrated(model)  # nothing was loaded by the failing calls
    with pytest.raises(ValueError, match="no such calibration file"):
        quant.load_calibration(model, tmp_path / "missing.pt")


def test_upstream_style_ptq_checkpoint_loads_weights_and_amax(calibrated, tmp_path):
    """A flat checkpoint with folded BN and ``_amax`` keys under ``encoders.camera.`` (what a PTQ model's
    state_dict is) rebuilds the same int8 model through read_checkpoint + prepare_int8."""
    path = tmp_path / "ptq.pth"
    torch.save({"state_dict": {f"encoders.camera.{k}": v for k, v in calibrated.state_dict().items()}}, path)
    ckpt = bevnb.read_checkpoint(path)
    assert ckpt.bn_folded and len(ckpt.amax) == len(quant.amax_state(calibrated))
    model = quant.prepare_int8(bevnb.build_camera_model(ckpt, config=TINY), calibration=ckpt.amax)
    inputs = tiny_inputs(6)
    for a, b in zip(_fake_quant(calibrated, inputs), _fake_quant(model, inputs), strict=True):
        assert torch.equal(a, b)


# --- the int8 export -------------------------------------------------------------------------------------------


def _nodes(graph: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in graph.graph.node if n.op_type == op_type]


def test_int8_backbone_qdq_count_is_what_the_placement_predicts(calibrated, int8_dir):
    graph = onnx.load(int8_dir / BACKBONE_FILE)
    expected = quant.expected_qdq(calibrated)
    stored = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    q, dq = _nodes(graph, "QuantizeLinear"), _nodes(graph, "DequantizeLinear")
    assert len(q) == len(dq) == expected["weights"] + expected["activations"] == 128
    weight_dq = [n for n in dq if stored.get(n.input[1], torch.zeros(1)).size > 1]
    assert len(weight_dq) == expected["weights"]
    assert all(next(a.i for a in n.attribute if a.name == "axis") == 0 for n in weight_dq)
    convs = _nodes(graph, "Conv")
    producer = {out: n for n in graph.graph.node for out in n.output}
    assert len(convs) == QUANT_CONVS
    for conv in convs:  # every conv reads a dequantized input and a dequantized per-channel weight
        x, w = producer[conv.input[0]], producer[conv.input[1]]
        assert x.op_type == w.op_type == "DequantizeLinear"
        assert stored[w.input[1]].shape == (stored[producer[w.input[0]].input[0]].shape[0],)


def test_int8_vtransform_has_no_qdq(int8_dir):
    graph = onnx.load(int8_dir / VTRANSFORM_FILE)
    assert [n.op_type for n in graph.graph.node] == ["Conv", "Relu"] * 3


def test_the_int8_graph_computes_the_fake_quant_model(calibrated, int8_dir):
    """ONNX Runtime running the Q/DQ nodes as written (no graph rewrites) against PyTorch's native fake quant (what
    was traced) at the first block output, before rounding flips start to compound (see the next test)."""
    first = validation.block_names(calibrated)[0]
    tensor = validation.block_output_tensor(first)
    graph = OnnxGraph(int8_dir / BACKBONE_FILE, extra_outputs=[tensor], optimize=False)
    inputs = tiny_inputs(7)
    ort_out = graph.outputs(*inputs)[tensor]
    seen = {}
    hook = calibrated.backbone.get_submodule(first).register_forward_hook(lambda m, a, out: seen.update(out=out))
    try:
        with torch.no_grad(), quant.export_mode():
            bevnb.SubclassCameraModule(calibrated)(*inputs)
    finally:
        hook.remove()
    # 79.5 dB with the default weights (estimated at R50's sizes): a few elements a rounding step apart
    assert compare(seen["out"], ort_out)["sqnr_db"] >= 75


def test_onnxruntime_on_the_int8_graph_agrees_with_fake_quant(calibrated, int8_dir):
    """Through 16 blocks, an element that rounds the other way in one implementation (float sums in another
    order) changes the next layer's input by a whole step and more elements flip: the two int8 computations drift
    apart to about the level of the quantization noise itself. So ONNX Runtime's int8 kernels track fake quant
    closely after one block, and at the outputs they are as far from fp32 as fake quant is."""
    names = validation.block_names(calibrated)
    graph = OnnxGraph(int8_dir / BACKBONE_FILE, extra_outputs=map(validation.block_output_tensor, names))
    out = validation.backbone_outputs(calibrated, *tiny_inputs(7), graph, blocks=True)
    assert compare(out["fake-quant"][names[0]], out["onnxruntime"][names[0]])["sqnr_db"] >= 45
    for tensor in validation.OUTPUTS:
        noise = compare(out["fp32"][tensor], out["fake-quant"][tensor])
        deployed = compare(out["fp32"][tensor], out["onnxruntime"][tensor])
        assert compare(out["fake-quant"][tensor], out["onnxruntime"][tensor])["cosine"] >= 0.95
        assert deployed["sqnr_db"] >= noise["sqnr_db"] - 3
        assert noise["cosine"] < 0.9999  # quantization did something


def test_fp16_export_of_a_quantized_model_has_no_qdq_and_restores_quantizers(calibrated, tmp_path):
    export_camera(calibrated, tmp_path, precision="fp16", verbose=False)
    graph = onnx.load(tmp_path / BACKBONE_FILE)
    assert not _nodes(graph, "QuantizeLinear") and not _nodes(graph, "DequantizeLinear")
    assert not any(q._disabled for q in quant.quantizers(calibrated).values())
    assert not quant_nn.TensorQuantizer.use_fb_fake_quant


@pytest.mark.slow
def test_r50_int8_backbone_has_the_predicted_qdq_and_vtransform_none(onnx_dirs):
    out = onnx_dirs("int8")  # the default model with chapter 04's calibration
    graph, vtransform = onnx.load(out / BACKBONE_FILE), onnx.load(out / VTRANSFORM_FILE)
    expected = quant.expected_qdq(quant.quantize_camera(bevnb.build_camera_model(seed=0)))
    q, dq = _nodes(graph, "QuantizeLinear"), _nodes(graph, "DequantizeLinear")
    assert len(q) == len(dq) == expected["weights"] + expected["activations"] == 128
    assert sum(any(a.name == "axis" for a in n.attribute) for n in dq) == expected["weights"]
    assert not _nodes(vtransform, "QuantizeLinear") and not _nodes(vtransform, "DequantizeLinear")
