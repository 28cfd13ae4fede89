"""bevnb.graphs (summaries, quantized tensors, module tree, diff), bevnb.drawing and bevnb.netron_view's server — on
tiny graphs exported here (fast), then on the real camera exports (slow)."""

from __future__ import annotations

import re
import socket
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from bevnb import drawing, graphs, netron_view
from bevnb.export import trace_to_onnx
from bevnb.subclass import BACKBONE_FILE, VTRANSFORM_FILE

SVG = "{http://www.w3.org/2000/svg}"
BACKBONE_PARTS = ["ResNet50", "GeneralizedLSSFPN", "dtransform", "depthnet", "Slice/Softmax/Transpose"]


class TinyCamera(nn.Module):
    """SubclassCameraModule in miniature: the same scopes, glue ops and two outputs, 2 cameras of 16×32."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.neck = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.dtransform = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU())
        self.depthnet = nn.Conv2d(12, 5 + 3, 1)  # D = 5 depth bins, C = 3 channels

    def forward(self, img: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, _, H, W = (int(s) for s in img.shape)
        x = self.neck(self.backbone(img.view(B * N, 3, H, W)))
        y = self.depthnet(torch.cat([self.dtransform(depth.view(B * N, 1, H, W)), x], dim=1))
        depth_weights = y[:, :5].softmax(dim=1)
        return y[:, 5:].permute(0, 2, 3, 1), depth_weights


@pytest.fixture(scope="module")
def tiny() -> tuple[TinyCamera, onnx.ModelProto]:
    torch.manual_seed(0)
    module = TinyCamera().eval()
    inputs = (torch.zeros(1, 2, 3, 16, 32), torch.zeros(1, 2, 1, 16, 32))
    return module, trace_to_onnx(module, inputs, ("img", "depth"), ("camera_feature", "camera_depth_weights"))


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(tiny[1], path)
    return path


class TwoQuantConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from pytorch_quantization import nn as quant_nn

        self.conv1 = quant_nn.QuantConv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = quant_nn.QuantConv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


@pytest.fixture(scope="module")
def quantized() -> tuple[TwoQuantConvs, onnx.ModelProto, onnx.ModelProto]:
    """Two max-calibrated QuantConv2d, exported with and without their quantizers (fp16 and int8 alike)."""
    from pytorch_quantization.nn import TensorQuantizer

    torch.manual_seed(0)
    module = TwoQuantConvs().eval()
    quantizers = [m for m in module.modules() if isinstance(m, TensorQuantizer)]
    for q in quantizers:
        q.disable_quant()
        q.enable_calib()
    with torch.no_grad():
        module(torch.randn(4, 3, 8, 8))
    for q in quantizers:
        q.load_calib_amax()
        q.disable_calib()
        q.enable_quant()
    x = (torch.randn(1, 3, 8, 8),)
    for q in quantizers:
        q.disable()
    float_graph = trace_to_onnx(module, x, ("x",), ("y",))
    for q in quantizers:
        q.enable()
    TensorQuantizer.use_fb_fake_quant = True
    try:
        int8_graph = trace_to_onnx(module, x, ("x",), ("y",))
    finally:
        TensorQuantizer.use_fb_fake_quant = False
    return module, float_graph, int8_graph


def _svg(svg: drawing.Svg) -> ET.Element:
    root = ET.fromstring(svg.text)
    assert root.tag == f"{SVG}svg"
    assert float(root.get("width")) > 0 and float(root.get("height")) > 0
    return root


def _texts(root: ET.Element) -> list[str]:
    return [t.text for t in root.iter(f"{SVG}text")]


# --- tiny graphs ------------------------------------------------------------------------------------------------


def test_summary_io_opset_and_parameters(tiny):
    module, model = tiny
    s = graphs.summarize(model)
    assert [str(t) for t in s.inputs] == ["img float32 [1, 2, 3, 16, 32]", "depth float32 [1, 2, 1, 16, 32]"]
    assert [str(t) for t in s.outputs] == [
        "camera_feature float32 [2, 8, 16, 3]",
        "camera_depth_weights float32 [2, 5, 8, 16]",
    ]
    assert s.opset == 13
    assert s.nodes == len(model.graph.node)
    assert s.parameters == sum(p.numel() for p in module.parameters())  # int64 shapes and slice bounds excluded
    int64_constants = s.parameter_bytes - 4 * s.parameters
    assert int64_constants > 0 and int64_constants % 8 == 0


def test_op_counts(tiny):
    ops = graphs.op_counts(tiny[1])
    assert {op: n for op, n in ops.items() if op != "Constant"} == {
        "Conv": 4, "Relu": 3, "Reshape": 2, "Slice": 2, "Concat": 1, "Transpose": 1, "Softmax": 1,
    }  # fmt: skip
    assert list(ops.values()) == sorted(ops.values(), reverse=True)
    assert sum(ops.values()) == len(tiny[1].graph.node)


def test_parts_take_the_glue_ops_and_add_up(tiny):
    model = tiny[1]
    found = graphs.parts(model)
    assert [p.name for p in found] == BACKBONE_PARTS
    assert sum(p.nodes for p in found) == len(model.graph.node)
    backbone, _, dtransform, depthnet, head = found
    assert backbone.ops["Reshape"] == 1 and dtransform.ops["Reshape"] == 1  # img.view / depth.view
    assert depthnet.ops["Concat"] == 1  # cat(dtransform, neck)
    assert {op for op in head.ops if op != "Constant"} == {"Slice", "Softmax", "Transpose"}
    assert list(backbone.children) == ["backbone.0", "backbone.1"]
    assert graphs.chain(model).startswith(f"ResNet50 ({backbone.nodes} nodes) → GeneralizedLSSFPN ({found[1].nodes})")


def test_a_vtransform_wrapper_scope_gives_the_same_parts(tiny):
    model = onnx.ModelProto()
    model.CopyFrom(tiny[1])
    for node in model.graph.node:
        if node.name.startswith(("/dtransform/", "/depthnet/")):
            node.name = "/vtransform" + node.name
    assert [(p.name, p.nodes) for p in graphs.parts(model)] == [(p.name, p.nodes) for p in graphs.parts(tiny[1])]


def test_tensor_shapes_cover_every_tensor(tiny):
    model = tiny[1]
    shapes = graphs.tensor_shapes(model)
    for node in model.graph.node:
        assert all(out in shapes for out in node.output), node.name
    assert shapes["/backbone/backbone.1/Relu_output_0"].shape == (2, 8, 8, 16)
    assert shapes["/dtransform/dtransform.1/Relu_output_0"].shape == (2, 4, 8, 16)
    assert shapes["/Concat_output_0"].shape == (2, 12, 8, 16)
    assert shapes["/depthnet/Conv_output_0"].shape == (2, 8, 8, 16)
    assert shapes["depthnet.weight"] == graphs.TensorInfo("depthnet.weight", "float32", (8, 12, 1, 1))


def test_boundary_table_lists_the_tensors_between_parts(tiny):
    rows = graphs.boundary_table(tiny[1]).rows
    assert [row[:2] for row in rows] == [
        ["input", "ResNet50"], ["ResNet50", "GeneralizedLSSFPN"], ["input", "dtransform"], ["dtransform", "depthnet"],
        ["GeneralizedLSSFPN", "depthnet"], ["depthnet", "Slice/Softmax/Transpose"],
        ["Slice/Softmax/Transpose", "output"], ["Slice/Softmax/Transpose", "output"],
    ]  # fmt: skip
    assert rows[4][2:] == ["/neck/neck.1/Relu_output_0", "[2, 8, 8, 16]"]


def test_describe_prints_summary_io_ops_and_tree(tiny, tiny_file):
    text = graphs.describe(tiny_file)
    params = sum(p.numel() for p in tiny[0].parameters())
    assert re.search(rf"\nnodes\s+{len(tiny[1].graph.node)}\nparameters\s+{params}\n", text)
    assert re.search(r"\ntiny\.onnx\s+input\s+img\s+float32\s+\[1, 2, 3, 16, 32\]\n", text)
    assert re.search(r"\ntiny\.onnx\s+output\s+camera_depth_weights\s+float32\s+\[2, 5, 8, 16\]\n", text)
    assert re.search(r"\nConv\s+4\n", text)
    assert "Q/DQ: none" in text
    assert "\nmodules: ResNet50 (4 nodes) → GeneralizedLSSFPN (2) → dtransform (4) → depthnet (2)" in text


def test_load_rejects_missing_and_non_onnx_files(tmp_path):
    with pytest.raises(ValueError, match=r"nothing\.onnx: no such file"):
        graphs.describe(tmp_path / "nothing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n")
    with pytest.raises(ValueError, match=r"notes\.onnx is not an ONNX model"):
        graphs.describe(text)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.onnx is not an ONNX model"):
        graphs.load(empty)


def test_draw_nodes_of_a_small_graph(tiny):
    root = _svg(drawing.draw(tiny[1]))
    texts = _texts(root)
    assert sum(t.startswith("Conv") for t in texts) == 4
    assert {
        "img",
        "depth",
        "camera_feature",
        "camera_depth_weights",
        "Softmax axis 1",
        "Transpose perm 0,2,3,1",
    } <= set(texts)
    assert "Constant" not in texts  # drawn as Netron draws initializers: not at all


def test_draw_parts_names_them_and_labels_edges_with_shapes(tiny):
    texts = _texts(_svg(drawing.draw(tiny[1], depth=1)))
    assert set(BACKBONE_PARTS) <= set(texts)
    assert "[2, 8, 8, 16]" in texts  # neck → depthnet
    assert "[2, 8, 16, 3]" in texts  # the camera_feature output box


def test_draw_a_module_and_reject_an_unknown_one(tiny):
    texts = _texts(_svg(drawing.draw(tiny[1], module="depthnet")))
    assert {"Concat", "Conv 1×1", "[2, 4, 8, 16]", "[2, 8, 8, 16]"} <= set(texts)  # its glue op, its two inputs
    assert "Softmax axis 1" not in texts
    with pytest.raises(ValueError, match="no node under scope 'head'; the top-level scopes are backbone, neck"):
        drawing.draw(tiny[1], module="head")


# --- Q/DQ -------------------------------------------------------------------------------------------------------


def test_qdq_table_scales_axes_and_kinds(quantized):
    module, _, int8 = quantized
    rows = graphs.quantized_tensors(int8)
    assert [(r.quantizer, r.kind, r.axis) for r in rows] == [
        ("conv1/_input_quantizer", "activation", None),
        ("conv1/_weight_quantizer", "weight", 0),
        ("conv2/_input_quantizer", "activation", None),
        ("conv2/_weight_quantizer", "weight", 0),
    ]
    quantizers = (module.conv1._input_quantizer, module.conv1._weight_quantizer)
    quantizers += (module.conv2._input_quantizer, module.conv2._weight_quantizer)
    for row, q in zip(rows, quantizers, strict=True):
        np.testing.assert_allclose(row.scales, q.amax.detach().reshape(-1).numpy() / 127, rtol=1e-6)
    assert [len(r.scales) for r in rows] == [1, 8, 1, 4]
    assert {r.consumers for r in rows} == {("Conv",)} and {r.zero_point for r in rows} == {"int8"}
    assert graphs.quantized_tensors(quantized[1]) == []


def _shared_quantizer_graph() -> onnx.ModelProto:
    """``x`` quantized twice with one scale (a shared quantizer called twice: two identical pairs, read by Conv and
    Relu) and once with another scale, plus one per-channel weight."""
    h = onnx.helper
    inits = [
        numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.float32(0.2), "s2"),
        numpy_helper.from_array(np.int8(0), "z"), numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w"),
        numpy_helper.from_array(np.array([0.01, 0.02], np.float32), "ws"),
        numpy_helper.from_array(np.zeros(2, np.int8), "wz"),
    ]  # fmt: skip
    nodes = [
        h.make_node("QuantizeLinear", ["w", "ws", "wz"], ["qw"], "/conv/_weight_quantizer/QuantizeLinear", axis=0),
        h.make_node("DequantizeLinear", ["qw", "ws", "wz"], ["dw"], "/conv/_weight_quantizer/DequantizeLinear", axis=0),
    ]
    for i, (scale, reader) in enumerate([("s", "Conv"), ("s", "Relu"), ("s2", "Sigmoid")]):
        nodes += [
            h.make_node("QuantizeLinear", ["x", scale, "z"], [f"q{i}"], f"/m{i}/_input_quantizer/QuantizeLinear"),
            h.make_node(
                "DequantizeLinear", [f"q{i}", scale, "z"], [f"d{i}"], f"/m{i}/_input_quantizer/DequantizeLinear"
            ),
            h.make_node(reader, [f"d{i}", "dw"] if reader == "Conv" else [f"d{i}"], [f"y{i}"], f"/m{i}/{reader}"),
        ]
    nodes.append(h.make_node("Sum", ["y0", "y1", "y2"], ["y"], "/Sum"))
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 4, 4])
    graph = h.make_graph(nodes, "shared", [x], [y], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])


def test_quantized_tensors_count_a_tensor_quantized_twice_alike_once():
    model = _shared_quantizer_graph()
    onnx.checker.check_model(model)
    found = graphs.quantized_tensors(model)
    assert [(t.tensor, t.kind, t.scales, t.pairs, t.consumers) for t in found] == [
        ("w", "weight", (pytest.approx(0.01), pytest.approx(0.02)), 1, ("Conv",)),
        ("x", "activation", (pytest.approx(0.1),), 2, ("Conv", "Relu")),
        ("x", "activation", (pytest.approx(0.2),), 1, ("Sigmoid",)),
    ]
    assert found[1].quantizer == "m0/_input_quantizer"  # the first of the two pairs names it
    assert graphs.count_quantized(model) == {"weights": 1, "activations": 2}
    assert graphs.op_counts(model)["DequantizeLinear"] == 4
    assert len(graphs.qdq_table(model).rows) == 3  # one row per quantized tensor


def test_simplify_merges_identical_pairs_and_refuses_to_lose_a_quantized_tensor(monkeypatch):
    import onnxsim

    from bevnb.export import ExportError, simplify_graph

    model = _shared_quantizer_graph()
    simplified = simplify_graph(model)
    assert graphs.op_counts(simplified)["DequantizeLinear"] == 3  # onnxsim merged the identical pair
    assert set(graphs.quantized_tensors(simplified)) == set(graphs.quantized_tensors(model))

    def drop_the_sigmoid_pair(graph: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
        out = onnx.ModelProto()
        out.CopyFrom(graph)
        kept = [n for n in out.graph.node if not n.name.startswith("/m2/_input_quantizer")]
        next(n for n in kept if n.name == "/m2/Sigmoid").input[0] = "x"
        del out.graph.node[:]
        out.graph.node.extend(kept)
        return out, True

    monkeypatch.setattr(onnxsim, "simplify", drop_the_sigmoid_pair)
    lost = r"changed the quantized tensors \(\{'weights': 1, 'activations': 2\} → \{'weights': 1, 'activations': 1\}"
    with pytest.raises(ExportError, match=lost):
        simplify_graph(model)


def test_diff_float_to_int8_finds_the_qdq_pairs_and_nothing_else(quantized):
    _, float_graph, int8 = quantized
    d = graphs.diff(float_graph, int8)
    assert d.io == [] and d.added == [] and d.removed == [] and d.rewired == []
    assert d.ops["QuantizeLinear"] == (0, 4) and d.ops["DequantizeLinear"] == (0, 4)
    assert d.qdq == {
        ("conv1", "activation → Conv"): 1, ("conv1", "weight → Conv"): 1,
        ("conv2", "activation → Conv"): 1, ("conv2", "weight → Conv"): 1,
    }  # fmt: skip
    assert d.parameters[1] - d.parameters[0] == 1 + 8 + 1 + 4  # the scales
    assert "quantized tensors added" in str(d) and "other nodes rewired: none" in str(d)


def test_tables_put_the_graphs_side_by_side(quantized):
    _, float_graph, int8 = quantized
    ops = graphs.op_table({"fp16": float_graph, "int8": int8})
    assert ops.columns == ["op", "fp16", "int8"]
    rows = {row[0]: row[1:] for row in ops.rows}
    assert rows["Conv"] == ["2", "2"]
    assert rows["QuantizeLinear"] == rows["DequantizeLinear"] == ["0", "4"]
    summary = graphs.summary_table({"fp16": float_graph, "int8": int8})
    assert summary.rows[1] == ["nodes", str(len(float_graph.graph.node)), str(len(int8.graph.node))]
    assert graphs.qdq_summary(int8).rows == [["conv1", "1", "1"], ["conv2", "1", "1"], ["all", "2", "2"]]
    assert [row[0] for row in graphs.qdq_table(int8, limit=3).rows] == [
        "conv1/_input_quantizer", "conv1/_weight_quantizer", "conv2/_input_quantizer",
    ]  # fmt: skip


def test_diff_reports_a_changed_node(quantized):
    _, float_graph, _ = quantized
    changed = onnx.ModelProto()
    changed.CopyFrom(float_graph)
    conv = next(n for n in changed.graph.node if n.name == "/conv2/Conv")
    conv.attribute.append(onnx.helper.make_attribute("group", 1))
    d = graphs.diff(float_graph, changed)
    assert d.rewired == ["/conv2/Conv"] and d.ops == {} and d.qdq == {}


def test_draw_marks_qdq_nodes(quantized):
    root = _svg(drawing.draw(quantized[2]))
    orange = [r for r in root.iter(f"{SVG}rect") if r.get("fill") == "#fde2c8"]
    assert len(orange) == 8  # 4 QuantizeLinear + 4 DequantizeLinear
    assert "QuantizeLinear ×8 axis 0" in _texts(root)  # conv1's per-channel weight quantizer


# --- Netron server -----------------------------------------------------------------------------------------------


@pytest.fixture
def netron_env(monkeypatch):
    for name in ("BEVNB_NETRON_HOST", "BEVNB_NETRON_PORT", "BEVNB_NETRON_URL"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    netron_view.stop_netron()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_netron_serves_the_file_on_loopback_and_reuses_its_server(tiny_file, netron_env):
    url = netron_view.show_in_netron(tiny_file)
    assert url.startswith("http://127.0.0.1:")
    assert _get(f"{url}/data/{tiny_file.name}") == tiny_file.read_bytes()
    assert f'<meta name="file" content="/data/{tiny_file.name}">' in _get(url).decode()
    assert netron_view.show_in_netron(tiny_file) == url  # a re-run cell: same server, no new port
    netron_view.stop_netron()
    with pytest.raises(OSError):  # refused or reset: nothing listens there any more
        _get(url)


def test_netron_port_and_url_from_the_environment(tiny_file, netron_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    netron_env.setenv("BEVNB_NETRON_PORT", str(port))
    netron_env.setenv("BEVNB_NETRON_URL", "https://hub.example.org/user/me/proxy/{port}/")
    assert netron_view.show_in_netron(tiny_file) == f"https://hub.example.org/user/me/proxy/{port}/"
    assert _get(f"http://127.0.0.1:{port}/data/{tiny_file.name}") == tiny_file.read_bytes()


def test_netron_returns_an_iframe_in_jupyter(tiny_file, netron_env):
    from IPython.display import IFrame

    netron_env.setattr(netron_view, "_in_jupyter", lambda: True)
    frame = netron_view.show_in_netron(tiny_file, height=450)
    assert isinstance(frame, IFrame) and frame.src.startswith("http://127.0.0.1:") and frame.height == 450


def test_netron_rejects_a_missing_file(tmp_path, netron_env):
    with pytest.raises(ValueError, match="no such file"):
        netron_view.show_in_netron(tmp_path / "missing.onnx")


# --- the real camera exports (slow) -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp16(onnx_dirs) -> onnx.ModelProto:
    return graphs.load(onnx_dirs("fp16") / BACKBONE_FILE)


@pytest.fixture(scope="module")
def int8(onnx_dirs) -> onnx.ModelProto:
    return graphs.load(onnx_dirs("int8") / BACKBONE_FILE)


@pytest.mark.slow
def test_backbone_parts_are_the_five_and_add_up(fp16):
    found = graphs.parts(fp16)
    assert [p.name for p in found] == BACKBONE_PARTS
    assert sum(p.nodes for p in found) == len(fp16.graph.node)
    resnet = found[0]
    assert [c for c in resnet.children] == ["conv1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    assert [resnet.children[f"layer{i}"].ops["Add"] for i in range(1, 5)] == [3, 4, 6, 3]  # ResNet50's blocks
    assert resnet.ops["Conv"] == 1 + 3 * 16 + 4  # stem, 16 bottlenecks, 4 downsamples


@pytest.mark.slow
def test_backbone_stage_shapes(fp16):
    shapes = graphs.tensor_shapes(fp16)
    last_relu = {"layer2": "layer2.3", "layer3": "layer3.5", "layer4": "layer4.2"}
    stage = {k: shapes[f"/backbone/{k}/{v}/relu_2/Relu_output_0"].shape for k, v in last_relu.items()}
    assert stage == {"layer2": (6, 512, 32, 88), "layer3": (6, 1024, 16, 44), "layer4": (6, 2048, 8, 22)}
    assert shapes["/neck/fpn_convs.0/activate/Relu_output_0"].shape == (6, 256, 32, 88)
    assert shapes["/dtransform/dtransform.8/Relu_output_0"].shape == (6, 64, 32, 88)
    assert shapes["/depthnet/depthnet.6/Conv_output_0"].shape == (6, 118 + 80, 32, 88)


@pytest.mark.slow
@pytest.mark.parametrize("name", [BACKBONE_FILE, VTRANSFORM_FILE])
def test_describe_both_files(name, onnx_dirs):
    text = graphs.describe(onnx_dirs("fp16") / name)
    io = {
        BACKBONE_FILE: ["img", "depth", "camera_feature", "camera_depth_weights"],
        VTRANSFORM_FILE: ["feat_in", "feat_out"],
    }[name]
    for tensor in io:
        assert re.search(rf"\n{re.escape(name)}\s+(input|output)\s+{tensor}\s+float32\s+\[", text), tensor
    assert re.search(r"\nConv\s+\d+\n", text) and "\nmodules: " in text


@pytest.mark.slow
def test_drawings_of_both_files_name_their_parts(fp16, onnx_dirs):
    assert set(BACKBONE_PARTS) <= set(_texts(_svg(drawing.draw(fp16))))
    vtransform = graphs.load(onnx_dirs("fp16") / VTRANSFORM_FILE)
    texts = _texts(_svg(drawing.draw(vtransform)))
    assert {"feat_in", "feat_out", "Conv 3×3/2"} <= set(texts) and texts.count("Relu") == 3


@pytest.mark.slow
def test_int8_backbone_quantizes_every_conv_and_nothing_after_depthnet(fp16, int8):
    rows = graphs.quantized_tensors(int8)
    convs = graphs.op_counts(int8)["Conv"]
    weights = [r for r in rows if r.kind == "weight"]
    assert len(weights) == convs and {r.axis for r in weights} == {0}
    assert {r.axis for r in rows if r.kind == "activation"} == {None}
    read_by = {op for r in rows for op in r.consumers}
    assert read_by <= {"Conv", "Add", "Concat"}  # never Softmax/Slice/Transpose/MaxPool/Resize (upstream's table)
    d = graphs.diff(fp16, int8)
    assert d.io == [] and d.added == [] and d.removed == [] and d.rewired == []
    assert set(d.ops) <= {"QuantizeLinear", "DequantizeLinear", "Constant"}
    assert sum(n for (_, where), n in d.qdq.items() if where == "weight → Conv") == convs
    assert set(BACKBONE_PARTS) <= set(_texts(_svg(drawing.draw(int8))))
    tree = graphs.describe(int8)
    assert "ResNet50 (backbone)" in tree and "Q/DQ" in tree
