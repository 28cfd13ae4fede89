"""The bevnb command: export, inspect, validate, bench — and one-line errors with exit code 2."""

from __future__ import annotations

import shutil

import onnx
import pytest
from onnx import numpy_helper

from bevnb import paths
from bevnb.cli import main


def test_export_fp16_writes_the_graphs_of_the_default_model(tmp_path, onnx_dirs, capsys):
    assert main(["export", "--precision", "fp16", "--out", str(tmp_path / "new" / "dir")]) == 0
    out = capsys.readouterr().out
    assert "camera.backbone.onnx (108.4 MB, 149 nodes" in out
    # Same seed as build_camera_model(): the file the CLI writes is the one the notebooks build.
    for name in ("camera.backbone.onnx", "camera.vtransform.onnx"):
        assert (tmp_path / "new" / "dir" / name).read_bytes() == (onnx_dirs("fp16") / name).read_bytes()


@pytest.mark.parametrize("name", ["camera.backbone.onnx", "camera.vtransform.onnx"])
def test_inspect_prints_io_ops_and_module_tree(onnx_dirs, capsys, name):
    assert main(["inspect", str(onnx_dirs("fp16") / name)]) == 0
    out = capsys.readouterr().out
    if name == "camera.backbone.onnx":
        for text in ("img", "camera_depth_weights", "[6, 118, 32, 88]", "Conv", "ResNet50", "GeneralizedLSSFPN"):
            assert text in out
    else:
        assert "feat_in" in out and "[1, 80, 180, 180]" in out


def test_validate_passes_on_the_default_model_and_fails_on_a_wrong_graph(onnx_dirs, tmp_path, capsys):
    good = onnx_dirs("fp16")
    assert main(["validate", "--precision", "fp16", "--onnx-dir", str(good), "--backend", "torch"]) == 0
    assert "split pipeline OK" in capsys.readouterr().out
    # A vtransform graph with other weights (its first conv negated): same names and shapes, wrong numbers.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(good / "camera.backbone.onnx", mixed)
    vtransform = onnx.load(good / "camera.vtransform.onnx")
    first_conv = next(n for n in vtransform.graph.node if n.op_type == "Conv")
    weight = next(t for t in vtransform.graph.initializer if t.name == first_conv.input[1])
    weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), weight.name))
    onnx.save(vtransform, mixed / "camera.vtransform.onnx")
    assert main(["validate", "--precision", "fp16", "--onnx-dir", str(mixed), "--backend", "torch"]) == 1
    assert "FAILED: synthetic-1000/fp16: final rel err" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "absent.onnx"], "absent.onnx"),
        (["validate", "--precision", "fp16", "int8", "--onnx-dir", "x"], "--onnx-dir holds one precision"),
        (["validate", "--precision", "fp16", "--onnx-dir", "absent"], "no such ONNX file"),
        (["validate", "--samples", "0"], "--samples must be at least 1"),
        (["export", "--out", "x", "--calib-samples", "3"], "only apply to --precision int8"),
        (["export", "--out", "x", "--checkpoint", "absent.pth"], "no such checkpoint file"),
        (["validate", "--precision", "fp16", "--example-data", "absent"], "absent"),
        (["validate", "--precision", "fp16", "--backend", "cuda-magic"], "unknown bev_pool backend 'cuda-magic'"),
        (["sensitivity", "--cameras", "0", "6"], "--cameras must be among 0 … 5, got [0, 6]"),
        (["sensitivity", "--export", "x"], "give --target-db too"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert err.startswith(f"bevnb {argv[0]}: error: ")


def test_bench_bevpool_rejects_bad_options_with_exit_2(capsys):
    assert main(["bench", "bevpool", "--backends", "nope"]) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a calibration", "not a bevnb calibration file (UnpicklingError)"), (None, "no such calibration file")],
)
def test_export_int8_with_a_bad_calibration_file_exits_2_with_one_line(content, message, capsys, tmp_path):
    bad = tmp_path / "calibration.pt"
    if content is not None:
        bad.write_bytes(content)
    assert main(["export", "--precision", "int8", "--out", str(tmp_path), "--calibration", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bevnb export: error: {bad}: {message}"
    assert not (tmp_path / "camera.backbone.onnx").exists()


def test_bench_without_a_checkout_exits_2_with_one_line(capsys, monkeypatch):
    monkeypatch.setattr(paths, "CHECKOUT", None)  # a non-editable install: no benchmarks/ folder
    assert main(["bench", "bevpool"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bevnb bench: error: the benchmark runs from a checkout (benchmarks/bev_pool.py); this bevnb has none"
