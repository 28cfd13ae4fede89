"""Checkpoints: MIT state dicts, plain state dicts and CUDA-BEVFusion's PTQ pickle, all written by the tests."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import bevnb
from bevnb.model import CheckpointError, fold_batchnorm, read_checkpoint


def _equal_states(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def source() -> bevnb.CameraBranch:
    return bevnb.build_camera_model(seed=3)


def test_mit_checkpoint_round_trip(tmp_path, source, model):
    state = {f"encoders.camera.{k}": v for k, v in source.state_dict().items()}
    state["encoders.lidar.backbone.conv_input.0.weight"] = torch.zeros(16, 5, 3, 3, 3)
    state["fuser.0.weight"] = torch.zeros(256, 336, 3, 3)
    torch.save({"state_dict": state, "meta": {"epoch": 6}}, tmp_path / "bevfusion-det.pth")
    ckpt = read_checkpoint(tmp_path / "bevfusion-det.pth")
    assert (ckpt.kind, ckpt.bn_folded, ckpt.amax) == ("mit", False, {})
    loaded = bevnb.build_camera_model(tmp_path / "bevfusion-det.pth")
    assert _equal_states(loaded, source)
    assert not _equal_states(loaded, model)  # seed 0 differs: the weights really came from the file


def test_plain_state_dict_round_trip(tmp_path, source):
    torch.save(source.state_dict(), tmp_path / "camera.pth")
    assert read_checkpoint(tmp_path / "camera.pth").kind == "state_dict"
    assert _equal_states(bevnb.build_camera_model(tmp_path / "camera.pth"), source)


def test_mismatch_lists_missing_unexpected_and_misshaped_keys_and_loads_nothing(tmp_path, source, model):
    state = dict(source.state_dict())
    del state["neck.fpn_convs.0.conv.weight"]
    state["neck.extra.weight"] = torch.zeros(1)
    state["vtransform.depthnet.6.bias"] = torch.zeros(208)  # a checkpoint with 128 depth bins
    torch.save({"state_dict": {f"encoders.camera.{k}": v for k, v in state.items()}}, tmp_path / "bad.pth")
    target = bevnb.build_camera_model(seed=0)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        bevnb.model.load_camera_state(target, read_checkpoint(tmp_path / "bad.pth").state_dict)
    message = str(err.value)
    assert "\n" not in message
    assert "missing (1): neck.fpn_convs.0.conv.weight" in message
    assert "unexpected (1): neck.extra.weight" in message
    assert "mis-shaped (1): vtransform.depthnet.6.bias [208]≠[198]" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not a readable PyTorch checkpoint"),
        (b"this is a text file, not a checkpoint\n", "not a readable PyTorch checkpoint"),
    ],
)
def test_foreign_files_give_one_line_errors(tmp_path, content, reason):
    path = tmp_path / "foreign.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason) as err:
        read_checkpoint(path)
    assert "\n" not in str(err.value)


def test_truncated_and_missing_files(tmp_path, source):
    torch.save(source.state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: not a readable"):
        read_checkpoint(tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        bevnb.build_camera_model(tmp_path / "absent.pth")
    torch.save({"lidar.weight": torch.zeros(2)}, tmp_path / "lidar_only.pth")
    with pytest.raises(CheckpointError, match="no camera weights"):
        read_checkpoint(tmp_path / "lidar_only.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list"):
        read_checkpoint(tmp_path / "list.pth")


# --- CUDA-BEVFusion's PTQ pickle, with its classes in modules that do not exist at load time ------------------


class _Marker:
    """Pickles as a call to ``pathlib.Path.touch``: if the loader ran code from the file, the marker would appear."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _fake_modules() -> dict[str, types.ModuleType]:
    """``mmdet3d…``, ``mmcv…`` and ``pytorch_quantization_fake…`` modules with the classes the pickle names."""
    mods = {}

    def make(module: str, name: str, base: type = nn.Module) -> type:
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # the parent packages must be importable too
            mods.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        cls = type(name, (base,), {"__module__": module})
        setattr(mods[module], name, cls)
        return cls

    make("mmcv.parallel.data_parallel", "MMDataParallel")
    make("mmdet3d.models.fusion_models.bevfusion", "BEVFusion")
    make("pytorch_quantization_fake.nn.modules.tensor_quantizer", "TensorQuantizer")
    return mods


def _ptq_pickle(path: Path, camera: nn.Module, marker: Path) -> dict[str, torch.Tensor]:
    """Write a PTQ-style whole-module pickle: MMDataParallel → BEVFusion → encoders.camera (BN folded) with
    quantizer ``_amax`` buffers, a lidar encoder, and a payload that would run code if unpickled for real."""
    mods = _fake_modules()
    sys.modules.update(mods)
    try:
        quantizer_cls = mods["pytorch_quantization_fake.nn.modules.tensor_quantizer"].TensorQuantizer
        amax = {}
        shared = quantizer_cls()
        shared.register_buffer("_amax", torch.tensor(2.5))
        for name in ("backbone.layer3.0.conv1", "backbone.layer3.0.downsample.0", "neck.lateral_convs.0.conv"):
            camera.get_submodule(name)._input_quantizer = shared  # one object under three names, as upstream
            amax[f"{name}._input_quantizer._amax"] = shared._amax
        w = quantizer_cls()
        w.register_buffer("_amax", torch.rand(64, 1, 1, 1) + 0.5)
        camera.backbone.conv1._weight_quantizer = w
        amax["backbone.conv1._weight_quantizer._amax"] = w._amax
        fusion = mods["mmdet3d.models.fusion_models.bevfusion"].BEVFusion()
        fusion.encoders = nn.ModuleDict({"camera": camera, "lidar": nn.Linear(2, 2)})
        fusion.payload = _Marker(marker)
        wrapper = mods["mmcv.parallel.data_parallel"].MMDataParallel()
        wrapper.module = fusion
        torch.save(wrapper, path)
    finally:
        for name in mods:
            sys.modules.pop(name, None)
    return amax


def test_ptq_pickle_loads_without_its_classes_and_runs_no_code(tmp_path):
    camera = bevnb.build_camera_model(seed=5)
    assert fold_batchnorm(camera) == 53 + 4 + 3 + 2 + 3  # backbone, neck, dtransform, depthnet, downsample
    marker = tmp_path / "code-ran"
    amax = _ptq_pickle(tmp_path / "bevfusion_ptq.pth", camera, marker)
    ckpt = read_checkpoint(tmp_path / "bevfusion_ptq.pth")
    assert not marker.exists()
    assert (ckpt.kind, ckpt.bn_folded) == ("ptq", True)
    assert ckpt.amax.keys() == amax.keys()
    assert all(torch.equal(ckpt.amax[k], v) for k, v in amax.items())
    assert ckpt.state_dict["backbone.conv1.bias"].shape == (64,)  # folded BN became a conv bias
    loaded = bevnb.build_camera_model(ckpt)
    for name, module in loaded.named_modules():
        assert not isinstance(module, nn.BatchNorm2d), name
    reference = camera.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())


def test_folded_model_computes_what_the_original_computes(model, sample):
    folded = bevnb.build_camera_model(seed=0)
    fold_batchnorm(folded)
    img = sample["img"][0, :2]
    with torch.no_grad():
        a = model.image_features(img[None])
        b = folded.image_features(img[None])
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * a.abs().max().item())
