"""The fp16 export: names, shapes, static graphs, ONNX Runtime parity, determinism, clear errors."""

from __future__ import annotations

import os

import onnx
import pytest
import torch

import bevnb
from bevnb.export import ExportError, export_camera
from bevnb.subclass import BACKBONE_FILE, VTRANSFORM_FILE
from bevnb.validation import graph_parity

FLOAT = onnx.TensorProto.FLOAT
DATA_DEPENDENT = {"NonZero", "Shape", "Where", "ScatterND", "ScatterElements", "TopK", "Loop", "If", "Range", "Expand"}


@pytest.fixture(scope="module")
def fp16_dir(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_fp16")
    export_camera(model, out, precision="fp16", verbose=False)
    return out


def _io(graph: onnx.ModelProto) -> tuple[list, list]:
    def describe(values):
        return [
            (v.name, [d.dim_value for d in v.type.tensor_type.shape.dim], v.type.tensor_type.elem_type) for v in values
        ]

    return describe(graph.graph.input), describe(graph.graph.output)


def test_backbone_io_names_shapes_and_dtypes(fp16_dir):
    graph = onnx.load(fp16_dir / BACKBONE_FILE)
    onnx.checker.check_model(graph, full_check=True)
    assert graph.opset_import[0].version == 13
    assert _io(graph) == (
        [("img", [1, 6, 3, 256, 704], FLOAT), ("depth", [1, 6, 1, 256, 704], FLOAT)],
        [("camera_feature", [6, 32, 88, 80], FLOAT), ("camera_depth_weights", [6, 118, 32, 88], FLOAT)],
    )


def test_vtransform_io_names_shapes_and_dtypes(fp16_dir):
    graph = onnx.load(fp16_dir / VTRANSFORM_FILE)
    onnx.checker.check_model(graph, full_check=True)
    assert _io(graph) == ([("feat_in", [1, 80, 360, 360], FLOAT)], [("feat_out", [1, 80, 180, 180], FLOAT)])
    assert [n.op_type for n in graph.graph.node] == ["Conv", "Relu"] * 3  # BN folded by the exporter


@pytest.mark.parametrize("name", [BACKBONE_FILE, VTRANSFORM_FILE])
def test_graphs_are_static(fp16_dir, name):
    graph = onnx.load(fp16_dir / name)
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & DATA_DEPENDENT
    for node in graph.graph.node:
        if node.op_type == "Resize":  # sizes must be a constant initializer, not computed from a Shape
            constants = {init.name for init in graph.graph.initializer}
            assert node.input[-1] in constants
    assert {"Conv", "Softmax", "Transpose", "Slice", "Resize", "Concat"} <= ops or name == VTRANSFORM_FILE


def test_backbone_has_no_outer_product_or_geometry(fp16_dir):
    graph = onnx.load(fp16_dir / BACKBONE_FILE)
    counts = {op: sum(n.op_type == op for n in graph.graph.node) for op in ("Conv", "Mul", "Softmax", "MatMul")}
    assert counts == {"Conv": 63, "Mul": 0, "Softmax": 1, "MatMul": 0}


def test_onnx_runtime_matches_pytorch(model, sample, fp16_dir):
    zeros = bevnb.make_sample("zeros")
    table = graph_parity(model, fp16_dir, {"zeros": zeros, "synthetic": sample})
    assert len(table.rows) == 6
    # Relative to each output's scale (measured: ≤ 1.4e-5 on both samples; PyTorch's own fp32 result is a few 1e-5
    # away from an fp64 run of the same model, so this is fp32 rounding, not a difference in the graph).
    for sample_name, output, _, _, rel, cosine in table.rows:
        assert float(rel) <= 1e-4, (sample_name, output, rel)
        assert float(cosine) > 0.999999, (sample_name, output, cosine)


def test_exporting_twice_gives_the_same_graph(model, fp16_dir, tmp_path):
    export_camera(model, tmp_path, precision="fp16", verbose=False)
    # torch.onnx.export restores the exported module's training flag; the model must come back in eval mode.
    assert not any(m.training for m in model.modules())
    for name in (BACKBONE_FILE, VTRANSFORM_FILE):
        assert (tmp_path / name).read_bytes() == (fp16_dir / name).read_bytes()


def test_missing_readonly_and_bad_arguments_give_clear_errors(model, tmp_path):
    with pytest.raises(ExportError, match=r"does not exist; create it first"):
        export_camera(model, tmp_path / "absent", verbose=False)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ExportError, match="is not a folder"):
        export_camera(model, tmp_path / "a_file", verbose=False)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    # root ignores permission bits; /proc refuses new files even to root.
    target = read_only if os.geteuid() != 0 else "/proc"
    with pytest.raises(ExportError, match="is not writable"):
        export_camera(model, target, verbose=False)
    with pytest.raises(ExportError, match="precision must be one of fp16, int8"):
        export_camera(model, tmp_path, precision="bf16", verbose=False)
    with pytest.raises(ExportError, match="needs a quantized, calibrated model"):
        export_camera(model, tmp_path, precision="int8", verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "ro"]  # nothing half-written left behind


def test_subclass_outputs_equal_the_model_up_to_the_cut(model, stages, sample):
    assert not bevnb.SubclassCameraModule(model).training  # it takes the model's mode
    with torch.no_grad():
        feat, depth_weights = bevnb.SubclassCameraModule(model)(sample["img"], stages["depth_map"])
    assert torch.equal(feat, stages["features"])
    assert torch.equal(depth_weights, stages["depth_weights"])
