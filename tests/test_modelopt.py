"""ModelOpt beside pytorch-quantization (bevnb.quant_modelopt, bevnb.toolchains) and the simplifiers (export).

On the one-camera 64×176 camera branch of test_quant: R50's layers, so R50's placement and Q/DQ counts.
"""

from __future__ import annotations

import copy

import modelopt.torch.opt as mto
import modelopt.torch.quantization as mtq
import onnx
import pytest
import torch
from modelopt.torch.opt.conversion import ApplyModeError
from test_quant import QUANT_CONVS, TINY, tiny_inputs
from torch import nn

import bevnb
from bevnb import graphs, quant, quant_modelopt, toolchains
from bevnb.export import SIMPLIFIERS, export_camera, simplify_graph, trace_to_onnx
from bevnb.model import fold_batchnorm
from bevnb.model.resnet import Bottleneck
from bevnb.pipeline import OnnxGraph
from bevnb.subclass import BACKBONE_FILE, BACKBONE_IO, SubclassCameraModule

CALIBRATION = [tiny_inputs(0), tiny_inputs(1)]
ONE_BIN = 1 / 2048  # histogram bins: amax/2048 wide at most (2048 bins up to the first batch's max)
LABELS = ("pytorch-quantization", "ModelOpt")
# What a plain INT8_DEFAULT_CFG quantizes differently from upstream's recipe (quant_modelopt's docstring): MaxPool's
# input on top; no quantizer on the identity input of the four downsampling Adds, nor on the upsampled concat inputs.
DEFAULT_CFG_ONLY = ["/backbone/relu/Relu_output_0"]
RECIPE_ONLY = sorted(
    [f"/backbone/layer{i}/layer{i}.0/downsample/downsample.0/Conv_output_0" for i in range(1, 5)]
    + ["/neck/Resize_output_0", "/neck/Resize_1_output_0"]
)


@pytest.fixture(scope="module")
def float_model() -> bevnb.CameraBranch:
    return bevnb.build_camera_model(seed=0, config=TINY)


@pytest.fixture(scope="module")
def pq_histograms(float_model) -> bevnb.CameraBranch:
    model = quant.quantize_camera(copy.deepcopy(float_model))
    quant.collect_statistics(model, CALIBRATION, progress=False)
    return model


@pytest.fixture(scope="module")
def modelopt_max(float_model) -> bevnb.CameraBranch:
    model = quant_modelopt.quantize_camera_modelopt(copy.deepcopy(float_model), "max")
    quant_modelopt.calibrate_modelopt(model, CALIBRATION, "max", progress=False)
    return model


@pytest.fixture(scope="module")
def modelopt_histograms(float_model) -> bevnb.CameraBranch:
    model = quant_modelopt.quantize_camera_modelopt(copy.deepcopy(float_model), "mse")
    quant_modelopt.calibrate_modelopt(model, CALIBRATION, "mse", progress=False)
    return model


@pytest.fixture(scope="module")
def graphs_dir(pq_histograms, modelopt_max, tmp_path_factory):
    """Both int8 exports (pytorch-quantization with max amax), traced (``raw/``) and simplified."""
    root = tmp_path_factory.mktemp("toolchains")
    quant.compute_amax(pq_histograms, "max")
    for label, model in zip(LABELS, (pq_histograms, modelopt_max), strict=True):
        for simplifier, sub in (("onnxsim", label), (None, f"{label}/raw")):
            (root / sub).mkdir(parents=True)
            export_camera(model, root / sub, "int8", simplifier=simplifier, verbose=False)
    return root


def test_modelopt_quantizers_are_found_by_attribute_not_class(modelopt_max):
    convs = [m for m in modelopt_max.modules() if hasattr(m, "weight_quantizer")]
    assert len(convs) == QUANT_CONVS + 3  # vtransform.downsample is converted too, its quantizers off
    assert type(convs[0]).__name__ == "QuantConv2d"
    assert not isinstance(convs[0], mtq.nn.QuantConv2d)  # a generated class
    assert quant_modelopt.is_quantized(modelopt_max) and not quant.is_quantized(modelopt_max)
    names = quant_modelopt.quantizers(modelopt_max)
    assert not any("maxpool" in n or n.startswith("vtransform.downsample") for n in names)
    # weights, conv inputs (4 downsample and 2 lateral convs share one), the residuals after the 4 downsamples
    assert len(names) == QUANT_CONVS + (QUANT_CONVS - 4 - 2) + 4
    for block in (m for m in modelopt_max.modules() if isinstance(m, Bottleneck)):
        shared = block.residual_quantizer if block.downsample is None else block.downsample[0].input_quantizer
        assert shared is block.conv1.input_quantizer
    stage = modelopt_max.backbone.layer3[0].conv1.input_quantizer
    assert modelopt_max.neck.quant_concat1.input_quantizer is stage
    assert modelopt_max.neck.lateral_convs[0].conv.input_quantizer is stage


def test_modelopt_graph_quantizes_the_same_tensors_with_the_same_sharing(graphs_dir):
    """The recipe reproduces upstream's placement everywhere: no expected difference."""
    a, b = (onnx.load(graphs_dir / label / BACKBONE_FILE) for label in LABELS)
    diff = toolchains.placement_diff(a, b, LABELS)
    assert diff.only == {LABELS[0]: [], LABELS[1]: []}
    assert diff.same and len(diff.scale_groups[LABELS[1]]) == 2
    assert diff.counts[LABELS[0]] == diff.counts[LABELS[1]]
    assert diff.counts[LABELS[1]]["QuantizeLinear nodes"] == 128


def test_int8_default_cfg_alone_differs_exactly_where_the_recipe_needs_more_than_a_config(float_model, graphs_dir):
    model = _folded(float_model)
    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, lambda m: [SubclassCameraModule(m)(*x) for x in CALIBRATION])
    with torch.no_grad():
        default = simplify_graph(trace_to_onnx(SubclassCameraModule(model).eval(), tiny_inputs(2), *BACKBONE_IO))
    diff = toolchains.placement_diff(onnx.load(graphs_dir / LABELS[0] / BACKBONE_FILE), default, (LABELS[0], "default"))
    assert diff.only == {LABELS[0]: RECIPE_ONLY, "default": DEFAULT_CFG_ONLY}
    # Nothing is shared by design: none of the recipe's groups (each with an upsampled concat input) is there. Some
    # scales coincide all the same, as max calibration gives MaxPool and a concat the max of what they read.
    recipe = set(diff.scale_groups[LABELS[0]])
    assert len(recipe) == 2 and not recipe & set(diff.scale_groups["default"])
    assert all("/neck/Resize" not in tensor for group in diff.scale_groups["default"] for tensor in group)


@pytest.mark.parametrize("method", ["max", "percentile", "mse"])
def test_same_calibration_method_gives_the_same_amax_under_every_name(
    pq_histograms, modelopt_max, modelopt_histograms, method
):
    """Weights: the per-channel max, equal. Activations: ``max`` from ModelOpt's MaxCalibrator is the exact max,
    bevnb's (pytorch-quantization's histogram) the upper edge of the last non-empty bin: within one bin.
    ``percentile``: the same histogram, the cumulative sum taken in another order: within one bin. ``mse``: the
    same search over bit-identical histograms: equal."""
    tolerance = {"max": ONE_BIN, "percentile": ONE_BIN, "mse": 0.0}[method]
    quant.compute_amax(pq_histograms, method)
    model = modelopt_max
    if method != "max":
        model = modelopt_histograms
        quant_modelopt.compute_amax_modelopt(model, method)
    diffs = toolchains.amax_agreement(quant.amax_state(pq_histograms), quant_modelopt.upstream_amax(model))
    assert len(diffs) == 2 * QUANT_CONVS + 16 + 2  # every name of every quantizer, shared ones under each
    assert max(d for n, d in diffs.items() if "_weight_quantizer" in n) == 0.0
    assert max(diffs.values()) <= tolerance
    if method == "mse":  # ModelOpt's own MSE search (num_bits lands in fake_tensor_quant's bias slot) is far off
        own = quant_modelopt.modelopt_mse_amax(model, ["backbone.layer1.0.conv2.input_quantizer"])[0]
        ours = model.backbone.layer1[0].conv2.input_quantizer.amax.item()
        assert own < 0.2 * ours


def test_modelopt_amax_load_into_the_pytorch_quantization_model(float_model, modelopt_max):
    model = quant.quantize_camera(copy.deepcopy(float_model))
    quant.load_amax(model, quant_modelopt.upstream_amax(modelopt_max))
    assert quant.is_calibrated(model)


def test_histogram_methods_need_a_histogram_quantized_model_and_mtq_calibrate_cannot_drive_them(float_model):
    model = quant_modelopt.quantize_camera_modelopt(copy.deepcopy(float_model), "mse")
    with pytest.raises(ValueError, match="mse or percentile, got 'max'"):
        quant_modelopt.compute_amax_modelopt(model, "max")
    with pytest.raises(ValueError, match="no histogram"):
        quant_modelopt.compute_amax_modelopt(model, "mse")
    with pytest.raises(ValueError, match="quantized for another calibrator than 'max'"):
        quant_modelopt.calibrate_modelopt(model, CALIBRATION, "max", progress=False)
    with pytest.raises(TypeError, match=r"compute_amax\(\) missing 1 required positional argument: 'method'"):
        mtq.calibrate(model, "max", lambda m: SubclassCameraModule(m)(*CALIBRATION[0]))
    with pytest.raises(ValueError, match="calibration method must be one of max, mse, percentile"):
        quant_modelopt.int8_config("entropy")


def test_modelopt_state_cannot_restore_the_recipe(float_model, modelopt_max):
    state = mto.modelopt_state(modelopt_max)
    with pytest.raises(ApplyModeError, match="keys in quantizer state_dict"):
        mto.restore_from_modelopt_state(_folded(float_model), state)


def _folded(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    fold_batchnorm(model)
    return model


@pytest.mark.parametrize("simplifier", SIMPLIFIERS)
def test_simplifier_keeps_every_quantized_tensor_and_the_float_graph_computes_the_same(
    simplifier, graphs_dir, float_model, tmp_path
):
    """Both int8 graphs keep 63 weight and 65 activation quantized tensors (by the node that computes each; onnxslim
    renames some tensors of ModelOpt's graph); the float graph stays within chapter 03's 1e-4 in ONNX Runtime."""
    for label in LABELS:
        raw = onnx.load(graphs_dir / label / "raw" / BACKBONE_FILE)
        simplified = simplify_graph(copy.deepcopy(raw), simplifier)  # raises if a quantized tensor changed
        assert graphs.quantization_signature(simplified) == graphs.quantization_signature(raw)
        assert graphs.count_quantized(simplified) == {"weights": QUANT_CONVS, "activations": 65}
    export_camera(float_model, tmp_path, "fp16", simplifier=None, verbose=False)
    simplified = simplify_graph(onnx.load(tmp_path / BACKBONE_FILE), simplifier)
    onnx.save(simplified, tmp_path / "simplified.onnx")
    inputs = tiny_inputs(3)
    traced, simplified = OnnxGraph(tmp_path / BACKBONE_FILE)(*inputs), OnnxGraph(tmp_path / "simplified.onnx")(*inputs)
    for ref, out in zip(traced, simplified, strict=True):
        assert bevnb.metrics.compare(ref, out)["rel"] <= 1e-4


def test_compare_simplifiers_reports_counts_kept_tensors_and_parity(graphs_dir):
    traced = {label: graphs_dir / label / "raw" / BACKBONE_FILE for label in LABELS}
    results = toolchains.compare_simplifiers(traced, tiny_inputs(4))
    assert [(r.graph, r.simplifier) for r in results] == [(g, s) for g in LABELS for s in SIMPLIFIERS]
    for r in results:
        assert r.kept_quantized and r.quantized[1] == {"weights": QUANT_CONVS, "activations": 65}
        assert r.qdq_nodes[1] == 256 < r.qdq_nodes[0]  # the exporter's duplicate pairs merged
        assert r.parity == 0.0  # ONNX Runtime runs both as written: the same arithmetic
        assert r.path.is_file()
    assert len(toolchains.simplifier_table(results).rows) == 4


def test_export_refuses_an_uncalibrated_modelopt_model_and_an_unknown_simplifier(float_model, tmp_path):
    model = quant_modelopt.quantize_camera_modelopt(copy.deepcopy(float_model))
    with pytest.raises(bevnb.export.ExportError, match="calibrate_modelopt"):
        export_camera(model, tmp_path, "int8", verbose=False)
    with pytest.raises(bevnb.export.ExportError, match="simplifier must be one of onnxsim, onnxslim or None"):
        export_camera(model, tmp_path, "fp16", simplifier="onnxopt", verbose=False)
